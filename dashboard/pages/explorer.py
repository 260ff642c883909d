"""Error explorer: the faces a checkpoint gets most wrong, the labels it doubts, and where it looks, per group."""

import streamlit as st

from dashboard import caches, faceview, state

st.title("Error explorer")

# heavy imports after the title, so the page shows while they load
import pandas as pd
from PIL import Image

from agegender.data.utkface import DatasetError
from agegender.evaluation import sources
from agegender.evaluation.sources import Faces
from agegender.explain.gradcam import overlay
from agegender.explain.predict import display_crop
from agegender.fairness.groups import grouping_columns, prepare
from agegender.review.audit import AuditError, counts, label_keys
from agegender.review.audit_run import audit_faces
from agegender.review.explorer import (
    chip_result,
    group_mean_cams,
    group_values,
    in_group,
    misgendered,
    suspect_caption,
    suspected,
    worst_age_errors,
)
from agegender.review.verdicts import CONFIRMED, WRONG, ReviewError, mark, read_review, review_path, with_reviews

SUSPECTS = "Suspected label errors"
MODES = {"Worst age errors": worst_age_errors, "Misgendered": misgendered, SUSPECTS: None}
VERDICTS = {"Label confirmed": CONFIRMED, "Label wrong": WRONG, "Clear the verdict": None}
PICKED_IN = "ex_picked_in"  # the list (checkpoint, source, Show, group) the Explain pick was made in
REVIEW_ERROR = "ex_review_error"  # a verdict's callback cannot draw where the buttons are: it leaves its error here


@st.cache_resource(max_entries=4, show_spinner="Reading the faces…")
def face_store(faces: Faces, size: int, stamp: tuple):
    """What the source's faces are read from (a UTKFace listing, or a set's aligned crops from the crop cache its
    evaluation wrote), as of their stamp: read once, shared, never mutated."""
    return faces.load(size)


ckpt = state.checkpoint_choice(state.selected_checkpoints())
c1, c2, c3, c4 = st.columns(4)
source = state.source_picker(c1, "ex_split")
mode = c2.radio("Show", list(MODES), key="ex_mode")
src = sources.source(ckpt.path, source)
faces = src.faces(lambda: state.utkface_data(ckpt))
data_path, data_stamp = faces.where, caches.stamp(*faces.stamp_files())
df = caches.predictions(ckpt, source)
if df is None:
    st.stop()
try:
    store = face_store(faces, ckpt.preprocess.cache_size, data_stamp)
except (DatasetError, ValueError) as e:  # the images, or the set, cannot be read any more: say so
    st.error(str(e))
    st.stop()
df = prepare(df)
group_col = c3.selectbox("Group", ["(all)", *grouping_columns(df)], key="ex_group_col")
n = c4.slider("Faces", 6, 60, 18, 6, key="ex_n")
group_value = None
if group_col != "(all)":
    group_value = st.selectbox(group_col, group_values(df, group_col), key="ex_group_value")
    df = in_group(df, group_col, group_value)


@st.cache_data(max_entries=4, show_spinner="Auditing the labels: each face through the model once…")
def label_audit(ckpt_path: str, source: str, data_path: str, stamps: tuple, _faces: Faces, _store):
    """The audit of the whole source (agegender.review.audit), as of the checkpoint, predictions and data stamps."""
    ckpt = caches.get_checkpoint(ckpt_path)
    size = ckpt.preprocess.cache_size
    table = caches.predictions_cached(ckpt_path, source, stamps[1])
    return audit_faces(ckpt, table, lambda files: _faces.pixels(_store, files, size))


review_file = review_path(ckpt.path, source)
if mode == SUSPECTS:
    try:
        audit = with_reviews(label_audit(str(ckpt.path), source, data_path, (
            caches.checkpoint_stamp(ckpt.path), caches.predictions_stamp(ckpt.path, source), data_stamp),
            faces, store), read_review(review_file))
    except (AuditError, ReviewError) as e:
        st.error(str(e))
        st.stop()
    c = counts(audit)
    st.caption(f"{c['total']} suspects among {len(audit)} faces: {c['gender']} gender (confident learning, "
               f"P(other) at or above the mean P of faces labelled so), {c['age']} age (label outside the "
               f"model's age distribution, P <= {audit.attrs['level']}, {audit.attrs['age_method']}). "
               f"Verdicts go to {review_file}.")
    rows = suspected(audit, df, n)
else:
    rows = MODES[mode](df, n)


def read(files: list[str]) -> dict:
    """The faces of these files, from wherever this source keeps them."""
    return faces.chips(store, files)


def truth(r) -> str:
    return f"{r['age']:.0f}" if r["age"] == r["age"] else str(r["age_bin"])  # age, or its bin (FairFace)


def caption(r, i: int) -> str:
    if mode == SUSPECTS:
        return suspect_caption(r, i)
    return f"#{i + 1} true {truth(r)} {r['gender']} · pred {r['pred_age']:.0f} P(f)={r['p_female']:.2f}"


def record(path, face: pd.DataFrame, verdict: str | None) -> None:
    """A verdict button's callback, with the face bound when the button was drawn: whatever the pick is by the
    time the click reaches the server, the verdict goes to the face shown beside the button."""
    try:
        mark(path, face, verdict)
    except ReviewError as e:
        st.session_state[REVIEW_ERROR] = str(e)


def review(face: pd.DataFrame) -> None:
    """The picked suspect's reason, and the buttons that record a verdict on its label (``face``: its audit row)."""
    row = face.iloc[0]
    st.markdown(f"**Why suspect:** {row['reason']}" + (f" — **{row['verdict']}**" if row["verdict"] else ""))
    st.caption(f"A verdict is recorded for {row['file']}, labelled {truth(row)} {row['gender']}.")
    key = label_keys(face).iloc[0]
    for col, (label, verdict) in zip(st.columns(len(VERDICTS)), VERDICTS.items(), strict=True):
        col.button(label, key=f"ex_verdict|{label}|{key}", on_click=record, args=(review_file, face, verdict))
    if error := st.session_state.pop(REVIEW_ERROR, None):
        st.error(error)


def pick_face(options: list[str], where: tuple) -> str | None:
    """The face to explain, among ``options`` of the list ``where`` names; a new list starts at its first face.
    A pick kept from another list is shown by the browser under its rank there ("#1 ..."), a label this list
    does not hold, and the browser sends that label back with the next click, which the server then reads as
    this list's first face: so the server moves the pick itself, and the browser follows."""
    if st.session_state.get(PICKED_IN) != where:
        st.session_state[PICKED_IN] = where
        if options:
            st.session_state["ex_pick"] = options[0]
    return st.selectbox("Explain", options, key="ex_pick", format_func=lambda f: f"#{options.index(f) + 1} {f}")


def show_errors(rows) -> None:
    chips = read(list(rows["file"]))
    missing = [f for f in rows["file"] if f not in chips]
    if missing:
        st.warning(f"{len(missing)} of these images are not in {data_path} (e.g. {missing[0]}): "
                   "is it the same dataset?")
    cols = st.columns(6)
    for i, (_, r) in enumerate(rows[rows["file"].isin(chips)].iterrows()):
        cols[i % 6].image(chips[r["file"]], width="stretch", caption=caption(r, i))
    options = [f for f in rows["file"] if f in chips]
    pick = pick_face(options, (str(ckpt.path), source, mode, group_col, group_value))
    if pick and mode == SUSPECTS:
        review(rows[rows["file"] == pick].head(1))
    if pick:
        result = chip_result(ckpt, pick, chips[pick], rows[rows["file"] == pick].iloc[0])
        faceview.face_view(ckpt, result, 0, f"explorer-{pick}", state.kept_options(other_gender=True))


if rows.empty:
    st.success("No such errors in this selection.")
else:
    show_errors(rows)

st.subheader("Average Grad-CAM per group")
g1, g2 = st.columns(2)
by_options = grouping_columns(df)
by = g1.selectbox("Groups", by_options, index=by_options.index("race") if "race" in by_options else 0, key="ex_avg_by")
per_group = g2.slider("Faces per group", 4, 64, 16, 4, key="ex_avg_n")


@st.cache_data(max_entries=8, show_spinner="Averaging Grad-CAMs…")
def group_means(ckpt_path: str, source: str, by: str, per_group: int, data_path: str, stamps: tuple):
    ckpt_stamp, predictions_stamp, data_stamp = stamps
    table = prepare(caches.predictions_cached(ckpt_path, source, predictions_stamp))
    return group_mean_cams(caches.get_checkpoint(ckpt_path), read, table, by, per_group)


if st.button("Compute the group averages", key="ex_avg_go"):
    stamps = (caches.checkpoint_stamp(ckpt.path), caches.predictions_stamp(ckpt.path, source), data_stamp)
    means = group_means(str(ckpt.path), source, by, per_group, data_path, stamps)
    cols = st.columns(max(1, len(means)))
    for col, (name, (count, mean_face, maps)) in zip(cols, means.items(), strict=False):
        base = display_crop(ckpt, mean_face)
        col.markdown(f"**{name}** (n={count})")
        for m, heat in maps.items():
            col.image(Image.fromarray(overlay(base, heat, 0.6)), caption=f"mean '{m}' map", width="stretch")
