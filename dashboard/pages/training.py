"""Training curves from each checkpoint's history.csv: train loss beside the train and validation
age MAE and gender accuracy, and the external development check (--external) where the run had one."""

import streamlit as st

from dashboard import state

st.title("Training")

# heavy imports after the title, so the page shows while they load
import pandas as pd

from agegender.fairness import tables
from agegender.meta import soup_runs
from agegender.report import charts
from agegender.train.runstate import EXTERNAL_FIELDS, HISTORY
from agegender.train.soup import run_histories


def external_caption(h: pd.DataFrame, meta: dict) -> str | None:
    """What the external curves are, or None for a history without them."""
    if "ext_gender_acc" not in h or not pd.to_numeric(h["ext_gender_acc"], errors="coerce").notna().any():
        return None
    ext = meta.get("external") or {}
    where = f"`{ext['path']}`" if ext.get("path") else "an external set"
    every = f", scored every {ext['every']} epochs and at the last" if ext.get("every") else ""
    return (f"External check (green, dashed): {where}{every}. A development check, reported only: it never "
            "picks the best epoch or stops training, and nothing should be tuned on it (a different sample "
            "judges the model).")


def show(h: pd.DataFrame, meta: dict, key: str) -> None:
    """One run's curves: ``meta`` is the checkpoint's, or one run's record in a soup's."""
    st.caption(f"{meta.get('epochs_run', len(h))} epochs, best at epoch {meta.get('best_epoch')} (dotted), "
               f"{meta.get('train_minutes', '?')} min; train figures are on augmented batches, validation "
               "figures on the held-out validation split.")
    st.plotly_chart(charts.training_curves(h, meta.get("best_epoch")), width="stretch", key=f"curves-{key}")
    caption = external_caption(h, meta)
    if caption:
        st.caption(caption)
        scored = h.loc[pd.to_numeric(h["ext_n_found"], errors="coerce").notna(),
                       ["epoch", *[c for c in EXTERNAL_FIELDS if c in h]]]
        with st.expander("external check, per scored epoch (gender gap: best to worst group, groups of 30+ faces)"):
            st.dataframe(scored, hide_index=True, placeholder=tables.MISSING)


for ckpt in state.selected_checkpoints():
    st.subheader(ckpt.name)
    path = ckpt.path / HISTORY
    runs = run_histories(ckpt.path, ckpt.meta)
    if runs:
        st.caption(f"The mean of {len(soup_runs(ckpt.meta))} runs' weights (agegender.train.soup): never trained "
                   "as such, so each run's curves follow; its own figures are on the Checkpoints page.")
        for run, file in runs:
            st.markdown(f"**{run['name']}** ({run['share']:.0%} of the mean)")
            show(pd.read_csv(file), run, f"{ckpt.path}-{file.name}")
        continue
    if not path.is_file():
        st.info(f"{ckpt.name} has no {HISTORY}.")
        continue
    show(pd.read_csv(path), ckpt.meta, str(ckpt.path))
