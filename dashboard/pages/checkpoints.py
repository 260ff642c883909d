"""Checkpoints page: the ones the picker offers, with their headline figures and health; then one of them,
or a folder typed here, with its model card (python -m agegender.modelcard), health and files."""

from pathlib import Path

import streamlit as st

from agegender.fairness import tables
from agegender.meta import META, CheckpointError
from agegender.models.catalog import SUMMARY_METRICS, default_root, health_of, summary_table
from agegender.predictions import predictions_path
from dashboard import caches, state
from dashboard.access import pickable
from dashboard.ui import plain

st.title("Checkpoints")
root = default_root()
allowed, _ = state.allow_lists()
paths = pickable(allowed, root)
table = summary_table(paths=paths)
where = f"`{root}`" if allowed.roots is None else ", ".join(f"`{r}`" for r in allowed.roots) or "no folder"
if table.empty:
    st.info(f"No checkpoints in {where}. Train one with "
            "`python train.py --data PATH/TO/UTKFace --out checkpoints/NAME`.")
st.caption(f"From {where}. Figures are on each checkpoint's held-out test split; health reads its "
           "validation figures.")
flagged = table[table["health"].fillna("ok") != "ok"] if "health" in table else table.iloc[:0]
if not flagged.empty:
    st.warning(f"{', '.join(flagged['checkpoint'])}: untrained or diverged by the validation figures; "
               "the health column says why.")
if not table.empty:
    st.dataframe(
        tables.styled(table.dropna(axis="columns", how="all"), metrics=SUMMARY_METRICS),
        hide_index=True, placeholder=tables.MISSING,
        column_config={"health": st.column_config.TextColumn(width="medium")},
    )


@st.cache_data(max_entries=8, show_spinner="Writing the model card (bootstrap)…")
def card_cached(path: str, stamp: tuple) -> str:
    from agegender.report.modelcard import checkpoint_card

    return checkpoint_card(path)


st.header("One checkpoint")
labels = state.pick_labels(paths)
c1, c2 = st.columns(2)
chosen = c1.selectbox("Checkpoint", list(labels), key="ck_pick", index=None if not labels else 0,
                      placeholder="none here: type a folder")
typed = state.typed_path(c2.text_input("…or a checkpoint folder", key="ck_path", placeholder="/path/to/checkpoint",
                                    help="Any folder the dashboard may read; it is loaded as the app loads "
                                         "checkpoints, so a folder that is not one says why."), allowed)
if typed:
    try:  # the one loader: meta.json, the weights' checksum and their shapes
        path = caches.get_checkpoint(typed).path
    except CheckpointError as e:
        st.error(f"Not a readable checkpoint: {plain(str(e))}")
        st.stop()
elif chosen is not None:
    path = labels[chosen]
else:
    st.stop()

from agegender.lookalikes import LeakageError, leakage_path
from agegender.report.modelcard import checkpoint_files

problem = health_of(path)
if problem:
    st.warning(f"Health: {problem}")
else:
    st.success("Health: ok (the validation figures say it learnt)")
try:
    card = card_cached(str(path), caches.stamp(Path(path) / META, predictions_path(path, "test"),
                                               leakage_path(path)))
except (CheckpointError, LeakageError) as e:
    st.error(plain(str(e)))
    st.stop()
st.markdown(card)
st.subheader("Files")
st.dataframe(checkpoint_files(path), hide_index=True,
             column_config={"bytes": st.column_config.NumberColumn("size (bytes)", format="localized")})
