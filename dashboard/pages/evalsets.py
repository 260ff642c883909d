"""Evaluation sets: register labelled datasets, evaluate the picked checkpoints on them (results kept in
the results cache, not in the checkpoint), and see how far the in-distribution figures carry."""

from pathlib import Path

import pandas as pd
import streamlit as st

from dashboard import caches, state

st.title("Evaluation sets")

# after the title, so the page shows while they load
from agegender import lookalikes
from agegender.data.utkface import DatasetError
from agegender.evaluation import crossdata, results, sources
from agegender.fairness import shift, tables
from agegender.meta import CheckpointError
from dashboard.access import NotAllowed

FORMATS = ("auto", "utkface", "fairface", "csv")
GROUPINGS = ("race", "gender", "age_bucket")
NO_PATH = "Type the path of the images (folder, .zip or .tar.gz) or of the labels file first."
NO_SETS = "No evaluation set yet: register one above."
NO_OFFERED = "No evaluation set this dashboard may read: register one in an allowed folder above."
EVALUATED = "{label} on {name}: a face found in {found:,} of {n:,} images ({how})."
NO_PICK = "Pick one or more checkpoints in the sidebar to evaluate them."
SHIFT_TITLE = "Why lower than on UTKFace: this set at UTKFace's age, gender and pose mix"
NOT_ALLOWED_SETS = "Not offered here, being outside the folders this dashboard may read: {names}."


def failures() -> tuple[type[Exception], ...]:
    """What evaluating or registering may raise, each with a one-line message for the reader."""
    return DatasetError, CheckpointError, results.ResultsError, NotAllowed


def readable(s: results.EvalSet, allowed) -> bool:
    return allowed.allows(s.path) and (s.labels is None or allowed.allows(s.labels))


@st.cache_data(max_entries=16, ttl=600, show_spinner="Reading the results (bootstrap)…")
def cross_cached(paths: tuple[str, ...], names: tuple[str, ...], grouping: str, stamp: tuple):
    """cross_dataset as of the stamp of the registry, the sets' result folders and the checkpoints' files
    (a dataset edited in place is read again after the ttl)."""
    return crossdata.cross_dataset(list(paths), list(names), grouping)


def cross_stamp(paths: list[str], names: list[str]) -> tuple:
    files = [results.registry_path(), *(f for p in paths for n in names for f in sources.source(p, n).stamp_files())]
    return caches.stamp(*dict.fromkeys(files))


@st.cache_data(max_entries=16, ttl=600, show_spinner="Standardising (bootstrap)…")
def shift_cached(checkpoint: str, set_name: str, stamp: tuple):
    """fairness.shift's table of a set's predictions against the checkpoint's own, as of their files' stamp."""
    table, notes = shift.explain(sources.source(checkpoint, set_name).load(), shift.reference_predictions(checkpoint))
    return shift.display(table), notes


def shift_stamp(checkpoint: str, set_name: str) -> tuple:
    """The stamp of the set's predictions and of the reference shift reads (the checkpoint's own splits)."""
    reference = dict.fromkeys(f for s in shift.REFERENCE_SPLITS for f in sources.source(checkpoint, s).stamp_files())
    return (*caches.stamp(*reference), *caches.predictions_stamp(checkpoint, set_name))


_, data_allowed = state.allow_lists()
fail = failures()

def nothing_registered() -> bool:
    try:
        return not results.list_sets()
    except results.ResultsError:
        return False  # said below, once


with st.expander("Register a dataset", expanded=nothing_registered()):  # open on a first visit
    c1, c2 = st.columns(2)
    name = c1.text_input("Name", key="es_name", placeholder="fairface-val",
                         help="Letters, digits, '.', '_' or '-'; it names the set's results folder.")
    fmt = c2.selectbox("Format", FORMATS, key="es_format",
                       help="auto: UTKFace file names without a labels file, FairFace's CSV when it has "
                            "FairFace's header, else csv with a column mapping.")
    path = st.text_input("Images", key="es_path", placeholder="/path/to/images",
                         help="Folder, .zip or .tar.gz (or the labels file, with the images beside it).")
    labels = st.text_input("Labels file (optional)", key="es_labels", placeholder="/path/to/labels.csv")
    columns = st.text_input("Column mapping (format csv)", key="es_columns",
                            placeholder="file=path,age=age,gender=sex,gender_map=F=1,M=0,groups=race")
    if st.button("Register", key="es_register"):
        try:
            if not path.strip():
                raise results.ResultsError(NO_PATH)
            for p in (path, labels):
                if p.strip():
                    data_allowed.check(p.strip())
            es = results.register(name.strip(), path.strip(), labels, None if fmt == "auto" else fmt, columns)
            skipped = f"; {es.skipped} row(s) skipped (see the server log)" if es.skipped else ""
            st.success(f"Registered {es.name}: {es.images:,} images ({es.format}, {es.geometry}){skipped}.")
        except fail as e:
            st.error(str(e))

try:
    sets = results.list_sets()
except results.ResultsError as e:
    st.error(str(e))
    st.stop()
offered = [s for s in sets if readable(s, data_allowed)]
hidden = [s.name for s in sets if s not in offered]

st.subheader("Registered sets")
if not sets:
    st.info(NO_SETS)
else:
    st.dataframe([{"name": s.name, "format": s.format, "geometry": s.geometry, "images": s.images,
                   "skipped rows": s.skipped, "images at": s.path, "labels": s.labels or ""} for s in sets],
                 hide_index=True)
    if hidden:
        st.caption(NOT_ALLOWED_SETS.format(names=", ".join(hidden)))
    c1, c2, c3 = st.columns([2, 2, 1], vertical_alignment="bottom")
    gone = c1.selectbox("Remove a set", [s.name for s in sets], key="es_remove_name")
    delete = c2.checkbox("and its cached results", key="es_remove_results")
    if c3.button("Remove", key="es_remove"):
        try:
            results.remove(gone, delete_results=delete)
            st.rerun()
        except results.ResultsError as e:
            st.error(str(e))

st.subheader("Evaluate")
picked = list(st.session_state.get(state.SELECTED, []))
set_name = None
if not offered:
    st.info(NO_OFFERED if sets else NO_SETS)
elif not picked:
    st.info(NO_PICK)
else:
    c1, c2, c3 = st.columns([2, 2, 1], vertical_alignment="bottom")
    set_name = c1.selectbox("Evaluation set", [s.name for s in offered], key="es_set")
    save = c2.checkbox("Also save into the checkpoint folder", key="es_save",
                       help="Writes predictions-<set>.csv into each checkpoint folder too; the results cache "
                            f"({results.results_dir()}) always keeps them.")
    if c3.button("Evaluate", key="es_go"):
        from agegender.evaluation.evalset import overall_fraction  # imports torch, as evaluating does anyway

        for p in picked:
            label = Path(p).name
            bar = st.progress(0.0, text=f"{label} on {set_name}: reading the set…")

            def progress(stage: str, done: int, total: int, bar=bar, label=label) -> None:
                bar.progress(overall_fraction(stage, done, total),
                             text=f"{label} on {set_name}: {stage} {done:,} of {total:,}")

            try:
                res = results.evaluate(p, set_name, progress=progress, save_into_checkpoint=save,
                                       load=caches.get_checkpoint)
            except fail as e:
                bar.empty()
                st.error(str(e))
                continue
            bar.empty()
            st.success(EVALUATED.format(label=label, name=set_name, found=res.metrics.get("n_found", 0),
                                        n=res.metrics.get("n", 0), how="from the results cache" if res.reused
                                        else "evaluated now"))
            if res.saved_to:
                st.caption(f"Saved a copy into {res.saved_to}.")
    rows = []
    for p in picked:
        try:
            res = results.lookup(p, set_name)
        except fail as e:
            st.error(str(e))
            continue
        if res is not None and res.problem:
            st.error(res.problem)
        rows.append(crossdata.headline_row(p, res))
        try:
            warn, text = lookalikes.overlap_text(
                lookalikes.read_if_any(sources.source(p, set_name).leakage_path()), set_name, p)
        except lookalikes.LeakageError as e:
            warn, text = True, str(e)
        (st.warning if warn else st.caption)(text)
    if rows:
        table = pd.DataFrame(rows).astype(dict.fromkeys(crossdata.HEADLINE_FIGURES, float))
        st.dataframe(tables.styled(table), hide_index=True, placeholder=tables.MISSING)
        with st.expander(SHIFT_TITLE):
            st.caption(shift.EXPLAINED + " (python -m agegender.shift)")
            for p in picked:
                try:
                    explained, notes = shift_cached(p, set_name, shift_stamp(p, set_name))
                except (*fail, ValueError) as e:
                    st.info(f"{Path(p).name}: {e}")
                    continue
                st.markdown(f"**{Path(p).name}**")
                st.dataframe(explained, hide_index=True, placeholder=tables.MISSING)
                for note in notes:
                    st.caption(note)

st.subheader("Across datasets")
if picked:
    names = sources.names(lambda s: readable(s, data_allowed))
    grouping = st.selectbox("Gaps between groups of", GROUPINGS, key="es_grouping")
    try:
        cross = cross_cached(tuple(picked), tuple(names), grouping, cross_stamp(picked, names))
    except fail as e:
        st.error(str(e))
        st.stop()
    st.caption("Each figure with its bootstrap 95% interval, on the faces found. A gap is the best group's "
               f"figure against the worst's, among {grouping} groups with at least {crossdata.MIN_COUNT} faces, "
               "with a 95% interval that holds every group's figure at once (so it always holds the gap) and q, "
               "the test that all groups are equal: 'within noise' where q ≥ 0.05. The age gap is in years "
               "where a set has exact ages (MAE), in percentage points of bin "
               "accuracy where it has age bins only. Cells not evaluated yet are left empty: evaluate above.")
    st.dataframe(crossdata.cross_display(cross), hide_index=True, placeholder=tables.MISSING)
    st.download_button("Table (CSV)", tables.csv_download(cross), "cross-dataset.csv", "text/csv", key="es_csv")
else:
    st.info(NO_PICK)
