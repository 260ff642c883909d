"""Training curves from each checkpoint's history.csv: train loss beside the train and validation
age MAE and gender accuracy."""

import streamlit as st

from dashboard import ui

st.title("Training")

# heavy imports after the title, so the page shows while they load
import pandas as pd

from agegender import charts
from agegender.runstate import HISTORY

for ckpt in ui.selected_checkpoints():
    st.subheader(ckpt.name)
    path = ckpt.path / HISTORY
    if not path.is_file():
        st.info(f"{ckpt.name} has no {HISTORY}.")
        continue
    h = pd.read_csv(path)
    meta = ckpt.meta
    st.caption(f"{meta.get('epochs_run', len(h))} epochs, best at epoch {meta.get('best_epoch')} (dotted), "
               f"{meta.get('train_minutes', '?')} min; train figures are on augmented batches, validation "
               "figures on the held-out validation split.")
    st.plotly_chart(charts.training_curves(h, meta.get("best_epoch")), width="stretch", key=f"curves-{ckpt.path}")
