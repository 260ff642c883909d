"""Disaggregated metrics with bootstrap intervals, on fairlearn's MetricFrame pattern:
computed once, read through ``overall`` / ``by_group``, with ``disparity()`` per metric.

Every metric is vectorised over bootstrap resamples (rows of an index matrix), so 1,000
resamples of a few thousand predictions take well under a second. Groups larger than
``exact_n`` are resampled at that size and the spread rescaled by sqrt(m / n) (the m-out-of-n
bootstrap), which keeps 200,000-row files fast; intervals of such groups are a fraction of a
year wide either way.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from .labels import AGE_BUCKET_EDGES, age_bucket
from .predictions import metric_columns, validate

GROUP_COLUMNS = ("age_bucket", "gender", "race")
DEFAULT_GROUPINGS = ("age_bucket", "gender", "race", "race:gender", "age_bucket:race")
ECE_BINS = 10
# Every report, comparison and the model card resample this often from this seed, so that the same
# table gives the same intervals wherever it is shown (the model card is checked byte for byte).
N_BOOT = 1000
SEED = 0
MIN_COUNT = 30  # smaller groups are flagged too small to judge, and left out of disparities and gaps

ERR_BAD_GROUPING = "unknown grouping {grouping!r}: use {known}, or two joined by ':' (e.g. race:gender)"


@dataclass(frozen=True)
class Metric:
    name: str
    label: str
    higher_is_better: bool | None  # None: closest to zero is best (signed error)
    fn: Callable[[dict[str, np.ndarray]], np.ndarray]  # columns -> value per row of resamples
    unit: str = ""


def _mean(x: np.ndarray) -> np.ndarray:
    return x.mean(axis=-1)


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
    Metric("age_mae", "age MAE", False, lambda c: _mean(np.abs(c["err"])), "y"),
    Metric("age_medae", "age median abs. error", False, lambda c: np.median(np.abs(c["err"]), axis=-1), "y"),
    Metric("age_cs5", "age CS@5", True, lambda c: _mean(np.abs(c["err"]) <= 5)),
    Metric("age_bias", "age mean signed error", None, lambda c: _mean(c["err"]), "y"),
    Metric("gender_accuracy", "gender accuracy", True, lambda c: _mean(c["correct"])),
    Metric("gender_auc", "gender AUC", True, _auc),
    Metric("female_as_male", "female read as male", False, lambda c: _rate(~c["correct"], c["female"])),
    Metric("male_as_female", "male read as female", False, lambda c: _rate(~c["correct"], ~c["female"])),
    Metric("gender_ece", "gender calibration error (ECE)", False, _ece),
]}


def prepare(df: pd.DataFrame, edges: tuple[int, ...] = AGE_BUCKET_EDGES) -> pd.DataFrame:
    """A predictions table (agegender.predictions) with group columns added."""
    out = validate(df).copy()
    labels = [age_bucket(lo, edges) for lo in edges]
    out["age_bucket"] = pd.Categorical([age_bucket(a, edges) for a in out["age"]], categories=labels, ordered=True)
    return out


def _estimate(cols: dict[str, np.ndarray], n_boot: int, rng: np.random.Generator, exact_n: int,
              metrics: list[Metric]) -> dict[str, tuple[float, float, float]]:
    n = len(cols["err"])
    point = {m.name: float(m.fn(cols)) for m in metrics}
    if n == 0 or n_boot == 0:
        return {k: (v, np.nan, np.nan) for k, v in point.items()}
    m_size = min(n, exact_n)
    idx = rng.integers(0, n, size=(n_boot, m_size))
    sample = {k: v[idx] for k, v in cols.items()}
    out = {}
    for m in metrics:
        boots = m.fn(sample)
        boots = boots[np.isfinite(boots)]
        if len(boots) < n_boot // 2 or not np.isfinite(point[m.name]):
            out[m.name] = (point[m.name], np.nan, np.nan)
            continue
        if m_size == n:
            lo, hi = np.percentile(boots, [2.5, 97.5])
        else:  # m-out-of-n: the spread around the subsample centre, scaled to n
            centre = np.median(boots)
            q_lo, q_hi = np.percentile(boots - centre, [2.5, 97.5]) * np.sqrt(m_size / n)
            lo, hi = point[m.name] + q_lo, point[m.name] + q_hi
        out[m.name] = (point[m.name], float(lo), float(hi))
    return out


def parse_grouping(grouping: str) -> list[str]:
    cols = grouping.split(":")
    if not 1 <= len(cols) <= 2 or any(c not in GROUP_COLUMNS for c in cols) or len(set(cols)) != len(cols):
        raise ValueError(ERR_BAD_GROUPING.format(grouping=grouping, known=", ".join(GROUP_COLUMNS)))
    return cols


def group_names(by_group: pd.DataFrame, columns: list[str]) -> pd.Series:
    """One name per row of a per-group table: its group's values joined by ' · '."""
    if by_group.empty:
        return pd.Series(dtype=str)
    return by_group[columns].astype(str).agg(" · ".join, axis=1)


class GroupReport:
    """Overall and per-group metrics with bootstrap 95% intervals for one grouping of a table."""

    def __init__(self, df: pd.DataFrame, grouping: str | None = None, n_boot: int = N_BOOT, seed: int = SEED,
                 min_count: int = MIN_COUNT, exact_n: int = 4000, metrics: list[str] | None = None,
                 overall: dict | None = None):
        self.grouping = grouping
        self.columns = parse_grouping(grouping) if grouping else []
        self.min_count = min_count
        self.metrics = [METRICS[m] for m in (metrics or METRICS)]
        rng = np.random.default_rng(seed)
        # ``overall`` from another grouping of the same table saves recomputing it
        self.overall = overall or self._row(_estimate(metric_columns(df), n_boot, rng, exact_n, self.metrics), len(df))
        rows = []
        if self.columns:
            for key, part in df.groupby(self.columns, observed=True, sort=True):
                key = key if isinstance(key, tuple) else (key,)
                est = _estimate(metric_columns(part), n_boot, rng, exact_n, self.metrics)
                rows.append({**dict(zip(self.columns, map(str, key), strict=True)),
                             **self._row(est, len(part))})
        self.by_group = pd.DataFrame(rows)

    def _row(self, est: dict, n: int) -> dict:
        row = {"n": n, "too_small": n < self.min_count}
        for name, (v, lo, hi) in est.items():
            row[name], row[f"{name}_lo"], row[f"{name}_hi"] = v, lo, hi
        return row

    def with_groups(self, by_group: pd.DataFrame) -> GroupReport:
        """The same report restricted to some of its groups (a filter in the dashboard)."""
        other = copy.copy(self)
        other.by_group = by_group.reset_index(drop=True)
        return other

    @property
    def group_names(self) -> pd.Series:
        return group_names(self.by_group, self.columns)

    def disparity(self) -> pd.DataFrame:
        """Per metric: the best and worst group (among groups big enough to judge), gap and ratio."""
        judged = self.by_group[~self.by_group["too_small"]] if not self.by_group.empty else self.by_group
        names = self.group_names
        rows = []
        for m in self.metrics:
            vals = judged[m.name].dropna() if not judged.empty else pd.Series(dtype=float)
            if len(vals) < 2:
                continue
            score = vals.abs() if m.higher_is_better is None else vals
            best_i = score.idxmax() if m.higher_is_better else score.idxmin()
            worst_i = score.idxmin() if m.higher_is_better else score.idxmax()
            best, worst = vals[best_i], vals[worst_i]
            rows.append({
                "metric": m.name, "label": m.label, "best_group": names[best_i], "best": best,
                "worst_group": names[worst_i], "worst": worst, "gap": abs(worst - best),
                "ratio": (worst / best) if best not in (0, 0.0) else np.nan,
                "overall": self.overall[m.name],
            })
        return pd.DataFrame(rows, columns=["metric", "label", "best_group", "best", "worst_group", "worst", "gap",
                                           "ratio", "overall"])

    def to_json(self) -> dict:
        def clean(d: dict) -> dict:
            return {k: (None if isinstance(v, float) and not np.isfinite(v) else
                        (v.item() if hasattr(v, "item") else v)) for k, v in d.items()}

        return {
            "grouping": self.grouping, "min_count": self.min_count,
            "overall": clean(self.overall),
            "groups": [clean(r) for r in self.by_group.to_dict("records")],
            "disparity": [clean(r) for r in self.disparity().to_dict("records")],
        }
