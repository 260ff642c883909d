"""Do the age intervals hold their coverage for every group? Intervals honest for one group and not for
another are a bias too (docs/intervals.md)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from ..predictions import DERIVED_GROUP, INTERVAL
from .groups import group_positions, prepare, wilson

COVERAGE_COLUMNS = ("n", "covered", "coverage", "coverage_lo", "coverage_hi", "median_width")


def coverage_by_group(df: pd.DataFrame, columns: Sequence[str] | str = ()) -> pd.DataFrame:
    """Per group of ``columns`` (a column name, "a:b", or a list; none: the whole table), over the rows with
    a face found, an exact age and an interval: n, how many intervals hold the age, that share with its
    Wilson 95% interval, and the median width. Groups are listed as agegender.fairness.groups lists them; a table
    without such rows (no interval, or age bins only: docs/intervals.md) gives no rows."""
    cols = columns.split(":") if isinstance(columns, str) else list(columns)
    cols = [c for c in cols if c]
    t = prepare(df) if DERIVED_GROUP in cols and DERIVED_GROUP not in df else df
    lo, hi = (np.asarray(t[c], np.float64) if c in t else np.full(len(t), np.nan) for c in INTERVAL)
    age = np.asarray(t["age"], np.float64) if "age" in t else np.full(len(t), np.nan)
    found = t["found"].to_numpy(bool) if "found" in t else np.ones(len(t), bool)
    keep = found & np.isfinite(age) & np.isfinite(lo) & np.isfinite(hi)
    t, age, lo, hi = t[keep].reset_index(drop=True), age[keep], lo[keep], hi[keep]
    covered = (lo <= age) & (age <= hi)
    rows = []
    for key, where in (group_positions(t, cols) if len(t) else []):
        k, n = int(covered[where].sum()), len(where)
        rows.append({**dict(zip(cols, key, strict=True)), "n": n, "covered": k, "coverage": k / n,
                     **dict(zip(("coverage_lo", "coverage_hi"), wilson(k, n), strict=True)),
                     "median_width": float(np.median(hi[where] - lo[where]))})
    return pd.DataFrame(rows, columns=[*cols, *COVERAGE_COLUMNS])
