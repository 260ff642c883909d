"""The metrics of a bias report, defined once: each ``Metric`` names its figure, which way is better, and a
function from metric columns (predictions.metric_columns) to its value, vectorised over bootstrap resamples (a
column of shape (n_boot, size) gives n_boot values), so every report, comparison and test computes the same
figure the same way. ``among``, for a share, names the rows it is a share of; GroupReport (fairness.groups)
reads it to choose the test of "all groups equal"."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata

ECE_BINS = 10


@dataclass(frozen=True)
class Metric:
    name: str
    label: str
    higher_is_better: bool | None  # None: closest to zero is best (signed error)
    fn: Callable[[dict[str, np.ndarray]], np.ndarray]  # columns -> value per row of resamples
    unit: str = ""
    # a share: the rows it is a share of (columns -> bool mask); tested for "all groups equal" by chi-square.
    # None: any other figure (a mean error, a median, AUC, ECE), tested by permuting the groups.
    among: Callable[[dict[str, np.ndarray]], np.ndarray] | None = None


def _mean(x: np.ndarray) -> np.ndarray:
    return x.mean(axis=-1)


def _mean_over(x: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """The mean of x over the valid entries of each row; NaN where a row has none. A table of exact ages
    takes the plain mean, so its figures stay what they were to the last bit."""
    if valid.all():
        return _mean(x)
    n = valid.sum(axis=-1)
    total = np.where(valid, x, 0).sum(axis=-1)
    return np.where(n > 0, total / np.maximum(n, 1), np.nan)


def _median_over(x: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """The median of x over the valid entries of each row, NaN where a row has none: a sort with the
    invalid ones pushed to the end, because np.nanmedian warns on a row of NaN (a resample of a group
    of bins only), and warnings are not thread-safe to silence under Streamlit."""
    if valid.all():
        return np.median(x, axis=-1)
    ordered = np.sort(np.where(valid, x, np.inf), axis=-1)
    k = valid.sum(axis=-1)
    last = ordered.shape[-1] - 1

    def at(i):
        return np.take_along_axis(ordered, np.clip(i, 0, last)[..., None], axis=-1)[..., 0]

    return np.where(k > 0, (at((k - 1) // 2) + at(k // 2)) / 2, np.nan)


def _exact(c: dict[str, np.ndarray]) -> np.ndarray:
    """Rows with an exact true age: the age metrics are computed on them (FairFace gives only bins)."""
    return np.isfinite(c["err"])


def _binned(c: dict[str, np.ndarray]) -> np.ndarray:
    """Rows whose true and predicted bins are both known: the bin metrics are computed on them."""
    return np.isfinite(c["bin_err"])


def _every(c: dict[str, np.ndarray]) -> np.ndarray:
    return np.ones(np.shape(c["correct"]), bool)


def _rate(hit: np.ndarray, among: np.ndarray) -> np.ndarray:
    n = among.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, (hit & among).sum(axis=-1) / np.maximum(n, 1), np.nan)


def _auc(c: dict[str, np.ndarray]) -> np.ndarray:
    y, p = c["female"], c["p_female"]
    n_pos = y.sum(axis=-1)
    n_neg = y.shape[-1] - n_pos
    ranks = rankdata(p, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = ((ranks * y).sum(axis=-1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return np.where((n_pos > 0) & (n_neg > 0), auc, np.nan)


def _ece(c: dict[str, np.ndarray]) -> np.ndarray:
    """Expected calibration error of P(female), 10 equal-width bins."""
    p, y = c["p_female"], c["female"]
    bins = np.minimum((p * ECE_BINS).astype(np.int64), ECE_BINS - 1)
    rows = p.reshape(-1, p.shape[-1]) if p.ndim > 1 else p[None]
    b2 = bins.reshape(rows.shape)
    y2 = y.reshape(rows.shape)
    offset = (np.arange(rows.shape[0]) * ECE_BINS)[:, None]
    flat = (b2 + offset).ravel()
    size = rows.shape[0] * ECE_BINS
    sp = np.bincount(flat, weights=rows.ravel(), minlength=size).reshape(-1, ECE_BINS)
    sy = np.bincount(flat, weights=y2.ravel().astype(float), minlength=size).reshape(-1, ECE_BINS)
    ece = np.abs(sp - sy).sum(axis=1) / rows.shape[1]
    return ece.reshape(p.shape[:-1]) if p.ndim > 1 else ece[0]


METRICS: dict[str, Metric] = {m.name: m for m in [
    Metric("age_mae", "age MAE", False, lambda c: _mean_over(np.abs(c["err"]), _exact(c)), "y"),
    Metric("age_medae", "age median abs. error", False, lambda c: _median_over(np.abs(c["err"]), _exact(c)), "y"),
    Metric("age_cs5", "age CS@5", True, lambda c: _mean_over(np.abs(c["err"]) <= 5, _exact(c)), among=_exact),
    Metric("age_bias", "age mean signed error", None, lambda c: _mean_over(c["err"], _exact(c)), "y"),
    Metric("age_bin_accuracy", "age bin accuracy", True, lambda c: _mean_over(c["bin_err"] == 0, _binned(c)),
           among=_binned),
    Metric("age_bin_within1", "age within one bin", True, lambda c: _mean_over(np.abs(c["bin_err"]) <= 1, _binned(c)),
           among=_binned),
    Metric("age_bin_error", "age mean signed bin error", None, lambda c: _mean_over(c["bin_err"], _binned(c)), "bins"),
    Metric("gender_accuracy", "gender accuracy", True, lambda c: _mean(c["correct"]), among=_every),
    Metric("gender_auc", "gender AUC", True, _auc),
    Metric("female_as_male", "female read as male", False, lambda c: _rate(~c["correct"], c["female"]),
           among=lambda c: c["female"]),
    Metric("male_as_female", "male read as female", False, lambda c: _rate(~c["correct"], ~c["female"]),
           among=lambda c: ~c["female"]),
    Metric("gender_ece", "gender calibration error (ECE)", False, _ece),
]}


# Not one of METRICS: computed on every labelled image (METRICS see only the faces found), with a Wilson
# interval rather than a bootstrap. In the disparity table when any face was missed.
MISSED_RATE = Metric("missed_rate", "no face found", False, lambda c: _mean(c["missed"]), among=_every)
