"""Overall metrics reviewers expect from an age/gender model."""

from __future__ import annotations

import numpy as np

from .fairness import METRICS

SUMMARY = ("age_mae", "age_cs5", "age_bias", "gender_accuracy", "gender_auc")


def summary(age: np.ndarray, pred_age: np.ndarray, gender: np.ndarray, p_female: np.ndarray) -> dict:
    """n, age MAE, CS@5, mean signed error, gender accuracy and AUC (None where undefined),
    with the same metric definitions as the bias report."""
    p = np.asarray(p_female, np.float64)
    female = np.asarray(gender, int) == 1
    cols = {"err": np.asarray(pred_age, np.float64) - np.asarray(age, np.float64), "female": female,
            "p_female": p, "correct": (p >= 0.5) == female}
    out: dict = {"n": int(len(p))}
    for name in SUMMARY:
        v = float(METRICS[name].fn(cols)) if len(p) else float("nan")
        out[name] = v if np.isfinite(v) else None
    return out
