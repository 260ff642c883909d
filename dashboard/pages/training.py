"""Training curves from each checkpoint's history.csv."""

import streamlit as st

from dashboard import ui

st.title("Training")

# heavy imports after the title, so the page shows while they load
import pandas as pd
import plotly.express as px

PANELS = [("loss", ["train_loss"]), ("age MAE (years)", ["train_age_mae", "val_age_mae"]),
          ("gender accuracy", ["train_gender_acc", "val_gender_acc"])]
for ckpt in ui.selected_checkpoints():
    st.subheader(ckpt.name)
    path = ckpt.path / "history.csv"
    if not path.is_file():
        st.info(f"{ckpt.name} has no history.csv.")
        continue
    h = pd.read_csv(path)
    meta = ckpt.meta
    st.caption(f"{meta.get('epochs_run', len(h))} epochs, best at epoch {meta.get('best_epoch')}, "
               f"{meta.get('train_minutes', '?')} min; train metrics are on augmented batches.")
    cols = st.columns(len(PANELS))
    for col, (title, ys) in zip(cols, PANELS, strict=True):
        present = [y for y in ys if y in h]
        if present:
            fig = px.line(h, x="epoch", y=present, markers=True, title=title)
            if meta.get("best_epoch"):
                fig.add_vline(x=meta["best_epoch"], line_dash="dot")
            col.plotly_chart(fig, width="stretch")
