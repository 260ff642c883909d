"""Compare checkpoints on the images both scored: overall and per-group deltas with paired
bootstrap intervals, and where their predictions disagree."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .fairness import METRICS, metric_columns, parse_grouping, prepare
from .labels import AGE_BUCKET_EDGES

KEYS = ["file", "age", "gender", "race"]


def pair(a: pd.DataFrame, b: pd.DataFrame, edges: tuple[int, ...] = AGE_BUCKET_EDGES) -> pd.DataFrame:
    """Rows scored by both, with pred_age_a/_b and p_female_a/_b; raises when they share none."""
    m = a[KEYS + ["pred_age", "p_female"]].merge(b[KEYS + ["pred_age", "p_female"]], on=KEYS, suffixes=("_a", "_b"))
    if m.empty:
        raise ValueError("the two checkpoints share no scored image: compare predictions of the same split and data")
    return prepare(m.assign(pred_age=m["pred_age_a"], p_female=m["p_female_a"]), edges)


def _side(m: pd.DataFrame, s: str) -> dict[str, np.ndarray]:
    return metric_columns(m.assign(pred_age=m[f"pred_age_{s}"], p_female=m[f"p_female_{s}"]))


def paired_deltas(m: pd.DataFrame, grouping: str | None = None,
                  metrics: tuple[str, ...] = ("age_mae", "gender_accuracy"),
                  n_boot: int = 1000, seed: int = 0, min_count: int = 30) -> pd.DataFrame:
    """Per group (or overall): each metric for a and b, b - a, and its paired 95% interval
    (both resampled with the same indices, so the shared difficulty of the images cancels)."""
    rng = np.random.default_rng(seed)
    cols = parse_grouping(grouping) if grouping else []
    parts = m.groupby(cols, observed=True) if cols else [((), m)]
    rows = []
    for key, g in parts:
        key = key if isinstance(key, tuple) else (key,)
        ca, cb = _side(g, "a"), _side(g, "b")
        idx = rng.integers(0, len(g), size=(n_boot, len(g)))
        row = {**dict(zip(cols, map(str, key), strict=True)), "n": len(g), "too_small": len(g) < min_count}
        for name in metrics:
            fn = METRICS[name].fn
            va, vb = float(fn(ca)), float(fn(cb))
            boots = fn({k: v[idx] for k, v in cb.items()}) - fn({k: v[idx] for k, v in ca.items()})
            boots = boots[np.isfinite(boots)]
            lo, hi = np.percentile(boots, [2.5, 97.5]) if len(boots) else (np.nan, np.nan)
            row.update({f"{name}_a": va, f"{name}_b": vb, f"{name}_delta": vb - va,
                        f"{name}_delta_lo": float(lo), f"{name}_delta_hi": float(hi)})
        rows.append(row)
    return pd.DataFrame(rows)


def agreement(m: pd.DataFrame, grouping: str | None = "race") -> dict:
    """How often the gender labels disagree (overall and per group) and how far apart the ages are."""
    fa, fb = m["p_female_a"] >= 0.5, m["p_female_b"] >= 0.5
    diff = (m["pred_age_b"] - m["pred_age_a"]).to_numpy()
    out = {"n": len(m), "gender_disagreement": float((fa != fb).mean()), "age_diff": diff,
           "age_diff_mean_abs": float(np.abs(diff).mean()), "age_diff_median": float(np.median(diff))}
    if grouping:
        cols = parse_grouping(grouping)
        out["by_group"] = (m.assign(disagree=(fa != fb)).groupby(cols, observed=True)["disagree"]
                           .agg(["size", "mean"]).rename(columns={"size": "n", "mean": "gender_disagreement"})
                           .reset_index())
    return out
