"""Embedding map: every face of a source where the checkpoint's features put it; a box or lasso selection shows
who is there, how the model does on them against the rest, and where it looks."""

import time

import streamlit as st

from dashboard import caches, state

st.title("Embedding map")

# heavy imports after the title, so the page shows while they load
from PIL import Image

from agegender import lookalikes
from agegender.data.utkface import DatasetError
from agegender.evaluation import sources
from agegender.evaluation.embed import FEATURES, source_embeddings
from agegender.evaluation.results import ResultsError
from agegender.fairness import tables
from agegender.fairness.embedslices import find_embedding_slices
from agegender.fairness.groups import prepare
from agegender.meta import CheckpointError
from agegender.review import mapview

SELECTED = "emb_selected|{ckpt}|{source}"  # the kept selection (files), per checkpoint and source
LAST_EVENT = "emb_event|{ckpt}|{source}"  # the files of the chart's last selection event seen


# cache_resource: shared, never mutated (tens of MB of features: a cache_data copy per rerun would cost seconds)
@st.cache_resource(max_entries=4, show_spinner=False)
def embeddings(ckpt_path: str, source: str, data_path: str, stamps: tuple):
    """(the map's table, prepared, without the features; the embeddings frame; seconds it took)."""
    start = time.perf_counter()
    frame = source_embeddings(caches.get_checkpoint(ckpt_path), sources.source(ckpt_path, source), lambda: data_path)
    return prepare(frame.drop(columns=FEATURES)), frame, time.perf_counter() - start


@st.cache_resource(max_entries=4, show_spinner="Clustering the features and testing each cluster…")
def clusters(ckpt_path: str, source: str, data_path: str, stamps: tuple):
    _, frame, _ = embeddings(ckpt_path, source, data_path, stamps)
    return find_embedding_slices(frame, frame, where=f"{ckpt_path} on {source}")


@st.cache_resource(max_entries=8, show_spinner="Auditing the labels (from the predictions)…")
def audit_cached(ckpt_path: str, source: str, stamp: tuple):
    from agegender.report.bias import audit_for

    return audit_for(caches.predictions_cached(ckpt_path, source, stamp), ckpt_path, source, None, None)[0]


@st.cache_resource(max_entries=4, show_spinner="Reading the faces…")
def face_store(faces: sources.Faces, size: int, stamp: tuple):
    return faces.load(size)


@st.cache_data(max_entries=16, show_spinner="Averaging the Grad-CAMs of the selection…")
def mean_cams(ckpt_path: str, source: str, files: tuple, stamps: tuple, _faces, _store):
    from agegender.review.explorer import mean_cams as mean

    chips = list(_faces.chips(_store, list(files)).values())
    return len(chips), *mean(caches.get_checkpoint(ckpt_path), chips)


ckpts = state.selected_checkpoints()
ckpt = state.checkpoint_choice(ckpts)
c1, c2, c3 = st.columns(3)
source = state.source_picker(c1, "emb_source")
src = sources.source(ckpt.path, source)
faces = src.faces(lambda: state.utkface_data(ckpt))
stamp = caches.predictions_stamp(ckpt.path, source)
if caches.predictions(ckpt, source) is None:
    st.stop()
stamps = (caches.checkpoint_stamp(ckpt.path), stamp, caches.stamp(*faces.stamp_files()))
with st.spinner("Computing the checkpoint's features for every face of the source (once: then cached on disk)…"):
    try:
        table, frame, seconds = embeddings(str(ckpt.path), source, faces.where, stamps)
    except (DatasetError, ResultsError, CheckpointError, ValueError, OSError) as e:
        st.error(str(e))
        st.stop()
st.caption(f"{len(table):,} faces of {sources.label(source)}, each placed by its first two principal components "
           f"of {ckpt.name}'s pooled trunk features (what its heads read; PCA, not UMAP: docs/embeddings.md). "
           f"Read in {seconds:.1f} s: the features are computed once per checkpoint and source (a minute or more "
           "for 20,000 faces on a CPU) and kept in the disk cache, so this is seconds on later visits.")

audit = audit_cached(str(ckpt.path), source, stamp)
try:
    leak = lookalikes.read_if_any(src.leakage_path())
except lookalikes.LeakageError as e:
    st.warning(str(e))
    leak = None
others = [c for c in ckpts if c.path != ckpt.path]
other_ckpt = c3.selectbox("Second checkpoint", [None, *others], key="emb_other",
                          format_func=lambda c: "(none)" if c is None else c.name,
                          help="Colour by where a second checkpoint picked in the sidebar disagrees, on the same "
                               "faces (its predictions of this source)") if others else None
other = None
if other_ckpt is not None and (theirs := caches.predictions(other_ckpt, source)) is not None:
    other = (other_ckpt.name, theirs)
options = mapview.colour_options(table, audit, leak, other[0] if other else None)
colour = c2.selectbox("Colour by", options, key="emb_colour",
                      index=options.index(mapview.ABS_AGE_ERROR))
values, continuous = mapview.colour_values(table, colour, audit, leak, other)
if leak is None:
    st.caption("No look-alike colouring: `python -m agegender.leakage --data DATA --checkpoint "
               f"{ckpt.path}` writes the check.")

key = dict(ckpt=ckpt.path, source=source)
kept_key, event_key = SELECTED.format(**key), LAST_EVENT.format(**key)
event = st.plotly_chart(mapview.figure(table, values, continuous, f"{ckpt.name} on {sources.label(source)}: "
                                       f"{colour}"), width="stretch", key="emb_map", on_select="rerun",
                        selection_mode=("box", "lasso"))
picked = mapview.selected_rows(event.selection.points if event else [], len(table))
files = tuple(table["file"].iloc[picked])
kept, st.session_state[event_key] = mapview.update_selection(
    st.session_state.get(kept_key, ()), st.session_state.get(event_key, ()), files)
st.session_state[kept_key] = kept

st.subheader("Slices nobody labelled")
found = clusters(str(ckpt.path), source, faces.where, stamps)
if found.empty:
    st.info("No cluster of the features is worse than the rest beyond chance (worst-slice test, BH-corrected).")
else:
    st.caption("A cluster can be worse only because of who is in it (babies are hard to gender everywhere). Each is "
               "also set against what its mix of age bucket, gender and groups predicts (the same strata outside "
               "it): expected, and beyond it with its interval. Clusters no labelled group explains come first.")
    choices = mapview.cluster_choices(found)
    s1, s2 = st.columns([4, 1])
    pick = s1.selectbox("Flagged clusters, what no labelled group explains first", list(choices), key="emb_cluster",
                        format_func=choices.get)
    if s2.button("Select its faces", key="emb_cluster_go"):
        st.session_state[kept_key] = kept = mapview.cluster_files(found, pick)
    st.dataframe(found.drop(columns=["files", "differences"]), hide_index=True, placeholder=tables.MISSING)

st.subheader("Selection")
if not kept:
    st.info("Drag a box or a lasso on the map (the toolbar switches) to select faces, or pick a flagged cluster.")
    st.stop()
if st.button("Clear the selection", key="emb_clear"):
    st.session_state[kept_key] = ()
    st.rerun()
shown = mapview.selected_table(table, kept, values, colour)
st.caption(f"{len(shown):,} faces selected of {len(table):,}.")
figures = mapview.selection_figures(table, kept)
st.dataframe(tables.styled(figures), hide_index=True, placeholder=tables.MISSING)
st.caption(mapview.figures_note(len(shown)))

try:
    store = face_store(faces, ckpt.preprocess.cache_size, stamps[2])
except (DatasetError, ValueError) as e:
    st.error(str(e))
    st.stop()
head = shown.head(mapview.SHOWN_ROWS)
chips = faces.chips(store, list(head["file"]))
head.insert(0, "face", [mapview.thumbnail_url(chips[f]) if f in chips else None for f in head["file"]])
st.dataframe(head, hide_index=True, placeholder=tables.MISSING, key="emb_table",
             column_config={"face": st.column_config.ImageColumn("face", width="small")})
if len(shown) > len(head):
    st.caption(f"The first {len(head)} faces are listed; the CSV holds all {len(shown):,}.")
st.download_button("Selected faces (CSV)", tables.csv_download(shown),
                   f"selection-{ckpt.name}-{source}.csv", "text/csv", key="emb_csv")

st.subheader("Where the model looks, on the selection")
sample = mapview.cam_sample(list(shown["file"]))
st.caption(f"The mean Grad-CAM over {len(sample)} of the {len(shown)} selected faces (at most "
           f"{mapview.CAM_FACES}, evenly spread: a second or two each on a CPU).")
if st.button("Compute the selection's mean Grad-CAM", key="emb_cam"):
    from agegender.explain.gradcam import overlay
    from agegender.explain.predict import display_crop

    n, mean_face, maps = mean_cams(str(ckpt.path), source, tuple(sample), stamps, faces, store)
    if mean_face is None:
        st.warning("None of the selected faces could be read.")
    else:
        base = display_crop(ckpt, mean_face)
        cols = st.columns(len(maps) + 1)
        cols[0].image(Image.fromarray(base), caption=f"mean face (n={n})", width="stretch")
        for col, (m, heat) in zip(cols[1:], maps.items(), strict=True):
            col.image(Image.fromarray(overlay(base, heat, 0.6)), caption=f"mean '{m}' map", width="stretch")
