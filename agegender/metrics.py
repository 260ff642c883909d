"""Overall metrics reviewers expect from an age/gender model."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .fairness import METRICS
from .predictions import metric_arrays, metric_columns

SUMMARY = ("age_mae", "age_cs5", "age_bias", "gender_accuracy", "gender_auc")


def summary(age: np.ndarray, pred_age: np.ndarray, gender: np.ndarray, p_female: np.ndarray) -> dict:
    """The summary of label arrays as training holds them (gender 1 = female, as in UTKFace names)."""
    return _summarise(metric_arrays(age, pred_age, np.asarray(gender, int) == 1, p_female))


def summary_of(df: pd.DataFrame) -> dict:
    """The summary of a predictions table (agegender.predictions)."""
    return _summarise(metric_columns(df))


def _summarise(cols: dict[str, np.ndarray]) -> dict:
    """n, age MAE, CS@5, mean signed error, gender accuracy and AUC (None where undefined),
    with the same metric definitions as the bias report."""
    n = len(cols["p_female"])
    out: dict = {"n": int(n)}
    for name in SUMMARY:
        v = float(METRICS[name].fn(cols)) if n else float("nan")
        out[name] = v if np.isfinite(v) else None
    return out
