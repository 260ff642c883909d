"""A checkpoint's calibrated age interval applied to its predictions: every predicted age with the interval
meta.json's record gives it (the record: agegender.meta.Calibration, parsed once at load into
Checkpoint.calibration; made by agegender.evaluation.intervals). docs/intervals.md says how it is made."""

from __future__ import annotations

import logging
import math

import numpy as np

from ..meta import CALIBRATE, CQR, META, Calibration

log = logging.getLogger(__name__)

NO_INTERVAL = "no calibrated interval: run " + CALIBRATE
WARN_TTA = "%s/" + META + "'s age interval was calibrated with TTA %s, not %s: predicting no interval"


def apply(cal: Calibration, age, quantiles: np.ndarray | None, limits: tuple[float, float]
          ) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) in years: the base interval (CQR: ``quantiles``, N x 2 at cal.quantiles; RESIDUAL: the predicted
    ``age``) moved by t (by predicted age: the bucket of ``age``'s), clipped to the age range ``limits`` and
    rounded outward to 0.01 y (docs/intervals.md)."""
    t = cal.shifts(age)
    if cal.base == CQR:
        q = np.asarray(quantiles, np.float64)
        lo, hi = q[:, 0] - t, q[:, 1] + t
    else:
        a = np.asarray(age, np.float64)
        lo, hi = a - t, a + t
    mid = (lo + hi) / 2
    lo, hi = np.where(lo > hi, mid, lo), np.where(lo > hi, mid, hi)
    return (np.clip(np.floor(lo * 100) / 100, *limits), np.clip(np.ceil(hi * 100) / 100, *limits))


def predict_with_interval(ckpt, pixels: np.ndarray, tta: bool = True, **kw
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(age, P(female), lo, hi) of aligned faces through a checkpoint (agegender.models.checkpoint.Checkpoint); lo
    and hi are NaN when it has no calibration, or one made with the other TTA setting. ``kw``: batch_size,
    precision."""
    from ..models.inference import predict_distribution  # here: the report imports this module and no torch

    age, pf, dist = predict_distribution(ckpt, pixels, tta, **kw)
    return age, pf, *interval_of(ckpt, age, dist, tta)


def interval_of(ckpt, age: np.ndarray, dist: np.ndarray | None, tta: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) of predicted ``age`` and its distribution ``dist`` (inference.predict_distribution; None for a
    regression head); NaN when the checkpoint has no calibration, or one made with the other TTA setting."""
    cal = ckpt.calibration
    if cal is not None and cal.tta != tta:
        log.warning(WARN_TTA, ckpt.path, "on" if cal.tta else "off", "on" if tta else "off")
        cal = None
    if cal is None:
        return np.full(len(age), np.nan), np.full(len(age), np.nan)
    from ..models.inference import quantiles_in_range

    q = None if dist is None else quantiles_in_range(ckpt, dist, cal.quantiles)
    return apply(cal, age, q, ckpt.age_range)


def age_text(age: float, lo: float | None = None, hi: float | None = None) -> str:
    """A predicted age and its interval as a person reads them: "62 y (55-70)", the whole years the interval
    holds (the labels are whole years); "62 y" without one."""
    if lo is None or hi is None or not (np.isfinite(lo) and np.isfinite(hi)):
        return f"{age:.0f} y"
    a, b = math.ceil(lo), math.floor(hi)
    return f"{age:.0f} y ({a}-{b})" if a <= b else f"{age:.0f} y ({lo:.1f}-{hi:.1f})"
