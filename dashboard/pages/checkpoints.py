"""Checkpoints page: the ones the picker offers, with their headline figures and health."""

import streamlit as st

from agegender import tables
from agegender.access import pickable
from agegender.catalog import SUMMARY_METRICS, default_root, summary_table
from dashboard import ui

st.title("Checkpoints")
root = default_root()
allowed, _ = ui.allow_lists()
table = summary_table(paths=pickable(allowed, root))
where = f"`{root}`" if allowed.roots is None else ", ".join(f"`{r}`" for r in allowed.roots) or "no folder"
if table.empty:
    st.info(f"No checkpoints in {where}. Train one with "
            "`python train.py --data PATH/TO/UTKFace --out checkpoints/NAME`.")
    st.stop()
st.caption(f"From {where}. Figures are on each checkpoint's held-out test split; health reads its "
           "validation figures.")
flagged = table[table["health"].fillna("ok") != "ok"] if "health" in table else table.iloc[:0]
if not flagged.empty:
    st.warning(f"{', '.join(flagged['checkpoint'])}: untrained or diverged by the validation figures; "
               "the health column says why.")
st.dataframe(
    tables.styled(table.dropna(axis="columns", how="all"), metrics=SUMMARY_METRICS),
    hide_index=True,
    column_config={"health": st.column_config.TextColumn(width="medium")},
)
