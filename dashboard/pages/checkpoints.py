"""Checkpoints page: what is shipped, with its headline figures."""

import streamlit as st

from agegender.catalog import default_root, summary_table

st.title("Checkpoints")
root = default_root()
table = summary_table(root)
if table.empty:
    st.info(f"No checkpoints in `{root}`. Train one with "
            "`python train.py --data PATH/TO/UTKFace --out checkpoints/NAME`.")
    st.stop()
st.caption(f"From `{root}`. Figures are on each checkpoint's held-out test split.")
st.dataframe(
    table.dropna(axis="columns", how="all"),
    hide_index=True,
    column_config={
        "test age MAE": st.column_config.NumberColumn(format="%.2f y"),
        "test age bias": st.column_config.NumberColumn(format="%+.2f y"),
        "test CS@5": st.column_config.NumberColumn(format="percent"),
        "test gender acc": st.column_config.NumberColumn(format="percent"),
        "test gender AUC": st.column_config.NumberColumn(format="%.4f"),
    },
)
