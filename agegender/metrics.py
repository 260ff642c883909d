"""Overall metrics reviewers expect from an age/gender model."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score


def summary(age: np.ndarray, pred_age: np.ndarray, gender: np.ndarray, p_female: np.ndarray) -> dict:
    """n, age MAE, CS@5, mean signed error, gender accuracy and AUC (None with one class)."""
    age, pred_age = np.asarray(age, float), np.asarray(pred_age, float)
    gender, p_female = np.asarray(gender, int), np.asarray(p_female, float)
    err = pred_age - age
    auc = roc_auc_score(gender, p_female) if len(np.unique(gender)) == 2 else None
    return {
        "n": int(len(age)),
        "age_mae": float(np.abs(err).mean()) if len(age) else None,
        "age_cs5": float((np.abs(err) <= 5).mean()) if len(age) else None,
        "age_bias": float(err.mean()) if len(age) else None,
        "gender_accuracy": float(((p_female >= 0.5) == (gender == 1)).mean()) if len(age) else None,
        "gender_auc": None if auc is None else float(auc),
    }
