"""Overall metrics reviewers expect from an age/gender model."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..labels import GENDERS
from ..predictions import complete, metric_columns
from .groups import found_mask, take
from .measures import METRICS

# Age in years where the labels give exact ages (None where they give bins: FairFace), age in bins always
# (an exact age falls in FairFace's bins), gender.
SUMMARY = ("age_mae", "age_cs5", "age_bias", "age_bin_accuracy", "age_bin_within1", "age_bin_error",
           "gender_accuracy", "gender_auc")


def summary(age: np.ndarray, pred_age: np.ndarray, gender: np.ndarray, p_female: np.ndarray) -> dict:
    """The summary of label arrays as training holds them (exact ages; gender 1 = female, as in UTKFace
    names): the figures summary_of gives for the table evaluation writes of them."""
    return summary_of(pd.DataFrame({
        "age": np.asarray(age, np.float64), "gender": np.asarray(GENDERS)[np.asarray(gender, int)],
        "pred_age": np.asarray(pred_age, np.float64), "p_female": np.asarray(p_female, np.float64)}))


def summary_of(df: pd.DataFrame) -> dict:
    """The summary of a predictions table (agegender.predictions): ``n`` labelled images, ``n_found``
    with a face found, and the SUMMARY metrics over those (None where undefined), with the same
    definitions as the bias report."""
    t = complete(df)
    found = found_mask(t)
    cols = take(metric_columns(t), np.flatnonzero(found))
    out: dict = {"n": len(t), "n_found": int(found.sum())}
    for name in SUMMARY:
        v = float(METRICS[name].fn(cols)) if found.any() else float("nan")
        out[name] = v if np.isfinite(v) else None
    return out
