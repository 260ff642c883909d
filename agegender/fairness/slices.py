"""Worst-slice discovery: the intersections of group columns where the model does worst, found by search
rather than picked by a reviewer.

Every combination of values of one to ``max_order`` distinct group columns (age bucket, gender, the dataset's
own groups such as race, pose and face size of photos) is a slice. Each slice with at least ``min_count`` rows
(and as many outside it) is compared with the rest of the table: the gap (slice minus rest, so positive is
worse), its 95% interval, and a one-sided p-value that the slice is worse than the rest. The p-values of every
slice tried for a metric are then adjusted together (Benjamini-Hochberg), because among hundreds of slices some
look bad by chance: a slice with q below 0.05 is a discovery, and among the discoveries at most 5% are expected
to be slices that are not truly worse.

Metrics are losses computed on the rows where they are defined (faces found; exact ages for the MAE): the
age MAE where the table has exact ages, else the age-bin error rate (fairness.headline_age_metric), and the
gender error rate. Intervals are analytic, not bootstrapped: the p-values of hundreds of slices need a test
anyway, and the matching interval (Newcombe's, from the Wilson intervals fairness uses, for rates; Welch's for
the MAE) costs nothing per slice, is deterministic and holds at the smallest slice allowed. Imports no torch.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from ..predictions import DERIVED_GROUP, group_columns, metric_columns
from . import tables
from .groups import LABEL_GROUPS, Z95, found_mask, grouping_columns, headline_age_metric, prepared, value_order

ALPHA = 0.05  # a slice with q below this is a discovery (the false discovery rate BH controls)
MIN_SLICE = 30  # rows a slice needs, and its rest: fairness.MIN_COUNT, the size below which groups go unjudged
# The smallest min_count allowed. Fisher's test is exact at any size; Welch's t on absolute age errors was checked
# at 10 (see _welch), below which a slice is a handful of faces and no test says much.
MIN_FLOOR = 10
MAX_ORDER = 3  # up to three columns at once: race x gender x age bucket
# Column combinations searched at most, lowest orders first: 3 columns give 7, 10 give 175, 20 give 1,350. A
# combination costs one pass over the table, so this bounds the time whatever columns a dataset brings.
MAX_COMBINATIONS = 500
# Slices listed per metric, worst first, in the report's JSON and on the page's "every slice" view: a table of
# many columns has tens of thousands (their q-values count them all; the listing need not).
SHOW_AT_MOST = 500

ERR_MIN_COUNT = "min_count must be at least {floor} (got {got}): smaller slices are too few faces to test"
ERR_MAX_ORDER = "max_order must be at least 1 (got {got})"
ERR_UNKNOWN_METRIC = "unknown slice metric {name!r}: use {known}"
ERR_UNKNOWN_COLUMN = "the table has no group column(s) {missing}: it can be sliced by {known}"


@dataclass(frozen=True)
class SliceMetric:
    """A loss per row (NaN where undefined), and how a slice's mean of it is tested: a rate of 0/1 errors
    (Fisher's exact test, Newcombe's interval) or a mean of absolute errors (Welch's t)."""

    name: str
    label: str
    rate: bool
    loss: Callable[[dict[str, np.ndarray]], np.ndarray]  # metric columns (predictions.metric_columns) -> loss
    kind: tables.Kind


def _bin_miss(c: dict[str, np.ndarray]) -> np.ndarray:
    return np.where(np.isfinite(c["bin_err"]), c["bin_err"] != 0, np.nan)


SLICE_METRICS: dict[str, SliceMetric] = {m.name: m for m in [
    SliceMetric("age_mae", "age MAE", False, lambda c: np.abs(c["err"]), tables.YEARS),
    SliceMetric("age_bin_error_rate", "age bin error rate", True, _bin_miss, tables.PERCENT),
    SliceMetric("gender_error_rate", "gender error rate", True, lambda c: (~c["correct"]).astype(float),
                tables.PERCENT),
]}


def default_metrics(df: pd.DataFrame) -> list[str]:
    """The headline age metric the table has (MAE of exact ages, else the bin error rate) and the gender one."""
    return ["age_mae" if headline_age_metric(df) == "age_mae" else "age_bin_error_rate", "gender_error_rate"]


def slice_columns(df: pd.DataFrame) -> list[str]:
    """The columns slices are made of, in the order a slice is written: the dataset's groups, gender, the age
    bucket, then pose and face size of photos (fairness.grouping_columns). Not age_bin: it is the age bucket
    again on FairFace, and nested in it on exact ages, so it would only repeat slices."""
    groups = group_columns(df)
    quality = [c for c in grouping_columns(df) if c not in LABEL_GROUPS and c not in groups]
    return [*groups, "gender", DERIVED_GROUP, *quality]


@dataclass
class SliceSearch:
    """The slices tried, worst first per metric, and how they were searched. ``table`` has a row per distinct
    slice tested: metric, slice (column -> value), description, order, n, value, rest_n, rest_value, gap,
    gap_lo, gap_hi, p, q, tried (slices tested for that metric: BH's m) and same_rows (other descriptions of
    the same rows)."""

    table: pd.DataFrame
    tried: dict[str, int]
    columns: list[str]
    max_order: int
    min_count: int
    alpha: float
    combinations: int  # column combinations searched
    truncated: bool  # MAX_COMBINATIONS stopped the search before every combination up to max_order
    seconds: float = 0.0
    duplicates: dict[str, int] = field(default_factory=dict)  # descriptions folded into another's slice

    def significant(self) -> pd.DataFrame:
        return self.table[self.table["q"] < self.alpha]

    def summary(self) -> str:
        """One sentence: how many slices were tried over what, and what q means."""
        tried = ", ".join(f"{n:,} for {SLICE_METRICS[m].label}" for m, n in self.tried.items()) or "none"
        cut = f" (stopped after the first {self.combinations} column combinations)" if self.truncated else ""
        names = ", ".join(c.replace("_", " ") for c in self.columns)
        return (f"Slices tried: {tried}; every combination of values of up to {self.max_order} of {names}, with "
                f"at least {self.min_count} faces in the slice and outside it{cut}. q is the Benjamini-Hochberg "
                f"adjusted p-value over every slice tried for the metric: among the {len(self.significant())} "
                f"slice(s) with q below {self.alpha:g}, at most {self.alpha:.0%} are expected to be no worse than "
                f"the rest in truth.")

    def to_json(self) -> dict:
        """The settings and counts of the search; the slices themselves are entries()."""
        return {"columns": self.columns, "max_order": self.max_order, "min_count": self.min_count,
                "alpha": self.alpha, "tried": self.tried, "duplicates": self.duplicates,
                "combinations": self.combinations, "truncated": self.truncated, "listed_per_metric": SHOW_AT_MOST}

    def entries(self) -> list[dict]:
        """The slices tried as JSON-ready dicts, worst first per metric, SHOW_AT_MOST per metric."""
        def clean(v):
            if isinstance(v, float | np.floating):
                return float(v) if np.isfinite(v) else None
            return v.item() if hasattr(v, "item") else v

        return [{k: clean(v) for k, v in r.items()} for r in shown(self, show_all=True).to_dict("records")]


def _codes(col: pd.Series, min_count: int) -> tuple[np.ndarray, list]:
    """A group column as integer codes in value_order, -1 where the value is missing, empty or held by fewer
    than min_count rows (no slice can hold it, at any order: this keeps the cross of three columns small)."""
    present = col[col.notna() & (col.astype(str).str.strip() != "")]
    counts = present.value_counts()
    values = [v for v in value_order(present) if counts.get(v, 0) >= min_count]
    return pd.Index(values, dtype=object).get_indexer(col.astype(object)).astype(np.int64), values


def _value_text(column: str, value) -> str:
    """A value as a slice is written: "Indian", "female", "40-49"; a bare number says its column ("site 7")."""
    text = str(value)
    try:
        float(text)
    except ValueError:
        return text
    return f"{column} {text}"


def describe(sl: dict) -> str:
    """A slice as text: its values joined by ' · ' ("Indian · female · 40-49")."""
    return " · ".join(_value_text(c, v) for c, v in sl.items())


def _cells(codes: list[np.ndarray], cards: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The cell of every row with all values known in the cross of some columns, and those rows. A cell is its
    mixed-radix number (decoded by _decode), compacted to positions in the returned list of numbers where the
    full cross would be too large to count."""
    known = np.logical_and.reduce([c >= 0 for c in codes])
    key = np.zeros(int(known.sum()), np.int64)
    for c, k in zip(codes, cards, strict=True):
        key = key * k + c[known]
    if np.prod(cards, dtype=np.float64) > 4 * len(key) + 1024:
        numbers, key = np.unique(key, return_inverse=True)
        return key, known, numbers
    return key, known, None


def _decode(number: int, cs: tuple[str, ...], values: dict[str, list]) -> dict:
    out = {}
    for c in reversed(cs):
        number, i = divmod(number, len(values[c]))
        v = values[c][i]
        out[c] = v.item() if isinstance(v, np.generic) else v  # JSON takes no numpy scalars
    return {c: out[c] for c in cs}


def _candidates(x: np.ndarray, codes: dict[str, np.ndarray], values: dict[str, list], columns: list[str],
                max_order: int, min_count: int, max_combinations: int):
    """Every distinct slice with min_count rows in and out, as [slice, order, n, sum, sum of squares, other
    descriptions], the number of combinations searched and whether the cap stopped the search.

    Two descriptions of the same rows (race=X where every X is female, and race=X · gender=female) are one
    slice, tested once and counted once in BH's m, named by the first found: the fewest columns, then the
    column order; the other is kept in same_rows. Rows are compared by their count and a sum of random weights,
    identical for identical rows (bincount adds in row order); distinct rows would have to agree on both by
    chance, about 1 in 2**50."""
    n_all = len(x)
    weights = np.random.default_rng(0).random(n_all)
    found: dict[tuple, list] = {}
    combos = [cs for k in range(1, max_order + 1) for cs in itertools.combinations(columns, k)]
    for cs in combos[:max_combinations]:
        key, known, numbers = _cells([codes[c] for c in cs], [len(values[c]) for c in cs])
        size = len(numbers) if numbers is not None else int(np.prod([len(values[c]) for c in cs]))
        counts = np.bincount(key, minlength=size)
        cells = np.flatnonzero((counts >= min_count) & (n_all - counts >= min_count))
        if not len(cells):
            continue
        xs = x[known]
        sums, squares = np.bincount(key, xs, size), np.bincount(key, xs * xs, size)
        ids = np.bincount(key, weights[known], size)
        for cell in cells:
            sl = _decode(int(cell if numbers is None else numbers[cell]), cs, values)
            rows = (int(counts[cell]), float(ids[cell]))
            if rows in found:
                found[rows][-1].append(describe(sl))
            else:
                found[rows] = [sl, len(cs), int(counts[cell]), sums[cell], squares[cell], []]
    return list(found.values()), min(len(combos), max_combinations), len(combos) > max_combinations


def _fisher(k1: np.ndarray, n1: np.ndarray, k: int, n: int) -> np.ndarray:
    """One-sided Fisher exact p-values that each slice's error rate exceeds the rest's: the chance of k1 or more
    errors among n1 rows drawn from n holding k (hypergeometric), exact at any slice size."""
    return stats.hypergeom.sf(k1 - 1, n, k, n1)


def _newcombe(k1: np.ndarray, n1: np.ndarray, k2: np.ndarray, n2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Newcombe's hybrid score interval of p1 - p2 (his method 10), from the two Wilson intervals: good coverage
    at small n and rates near 0, where a normal interval is too narrow."""
    def wilson(k, n):
        p = k / n
        centre = (p + Z95 ** 2 / (2 * n)) / (1 + Z95 ** 2 / n)
        half = Z95 / (1 + Z95 ** 2 / n) * np.sqrt(p * (1 - p) / n + Z95 ** 2 / (4 * n * n))
        return p, np.maximum(0, centre - half), np.minimum(1, centre + half)

    p1, l1, u1 = wilson(k1, n1)
    p2, l2, u2 = wilson(k2, n2)
    d = p1 - p2
    return d - np.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), d + np.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)


def _welch(m1, v1, n1, m2, v2, n2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One-sided Welch t p-values that the slice's mean absolute error (m1, variance v1, n1 rows) exceeds the
    rest's, and the 95% interval of the difference.

    Valid at MIN_FLOOR: absolute errors are skewed right (UTKFace test: skewness 2.0), which makes the upper
    tail of t lighter than Student's, so the test is conservative, never liberal, for "worse than the rest".
    On the shipped checkpoint's test predictions, random slices (the null) of 10 / 30 / 100 faces were called
    worse at p < 0.05 in 1.3% / 2.2% / 3.4% of 200,000 draws, and at p < 0.001 in 0.003% / 0.003% / 0.01%.
    A permutation test would be exact too, but BH over hundreds of slices needs p-values near 1e-4, i.e. tens
    of thousands of permutations per slice."""
    a, b = v1 / n1, v2 / n2
    se = np.sqrt(a + b)
    d = m1 - m2
    spread = se > 0  # without spread on either side the difference is what it is: p 0 or 1, no width
    safe = np.where(spread, se, 1.0)
    df = np.where(spread, (a + b) ** 2 / np.maximum(a * a / (n1 - 1) + b * b / (n2 - 1), 1e-300), 1.0)
    p = np.where(spread, stats.t.sf(d / safe, df), (d <= 0).astype(float))
    half = np.where(spread, stats.t.ppf(0.975, df) * se, 0.0)
    return p, d - half, d + half


def bh(p) -> np.ndarray:
    """Benjamini-Hochberg q-values: q of the i-th smallest of m p-values is min over j >= i of p_(j) * m / j,
    at most 1; a slice with q below alpha is a discovery at false discovery rate alpha."""
    p = np.asarray(p, np.float64)
    m = len(p)
    order = np.argsort(p, kind="stable")
    ranked = p[order] * m / np.arange(1, m + 1)
    q = np.empty(m)
    q[order] = np.minimum(np.minimum.accumulate(ranked[::-1])[::-1], 1.0)
    return q


def _search(df: pd.DataFrame, metric: SliceMetric, columns: list[str], max_order: int, min_count: int,
            max_combinations: int) -> tuple[list[dict], int, int, bool]:
    loss = metric.loss(metric_columns(df))
    keep = found_mask(df) & np.isfinite(loss)
    x = loss[keep]
    centre = 0.0 if metric.rate else float(x.mean()) if len(x) else 0.0
    x = x - centre  # means and variances from sums, kept accurate by centring (rates stay counts)
    codes, values = {}, {}
    for c in columns:
        codes[c], values[c] = _codes(df[c][keep], min_count)
    found, combos, truncated = _candidates(x, codes, values, columns, max_order, min_count, max_combinations)
    if not found:
        return [], combos, 0, truncated
    n, s, ss = len(x), x.sum(), (x * x).sum()
    n1 = np.array([f[2] for f in found], np.float64)
    s1, ss1 = np.array([f[3] for f in found]), np.array([f[4] for f in found])
    n2, s2, ss2 = n - n1, s - s1, ss - ss1
    if metric.rate:
        k1, k2 = np.rint(s1), np.rint(s2)
        p = _fisher(k1, n1, int(round(s)), n)
        lo, hi = _newcombe(k1, n1, k2, n2)
        v1, v2 = k1 / n1, k2 / n2
    else:
        v1, v2 = s1 / n1 + centre, s2 / n2 + centre
        var1 = np.maximum(ss1 - s1 * s1 / n1, 0) / (n1 - 1)
        var2 = np.maximum(ss2 - s2 * s2 / n2, 0) / (n2 - 1)
        p, lo, hi = _welch(v1, var1, n1, v2, var2, n2)
    q = bh(p)
    rows = [{"metric": metric.name, "label": metric.label, "slice": f[0], "description": describe(f[0]),
             "order": f[1], "n": f[2], "value": float(v1[i]), "rest_n": int(n2[i]), "rest_value": float(v2[i]),
             "gap": float(v1[i] - v2[i]), "gap_lo": float(lo[i]), "gap_hi": float(hi[i]), "p": float(p[i]),
             "q": float(q[i]), "tried": len(found), "same_rows": f[5]} for i, f in enumerate(found)]
    rows.sort(key=lambda r: (-r["gap"], r["q"]))
    return rows, combos, sum(len(f[5]) for f in found), truncated


COLUMNS = ["metric", "label", "slice", "description", "order", "n", "value", "rest_n", "rest_value", "gap",
           "gap_lo", "gap_hi", "p", "q", "tried", "same_rows"]


def find_slices(df: pd.DataFrame, metrics: list[str] | None = None, max_order: int = MAX_ORDER,
                min_count: int = MIN_SLICE, alpha: float = ALPHA, columns: list[str] | None = None,
                max_combinations: int = MAX_COMBINATIONS) -> SliceSearch:
    """Search the slices of a predictions table (see the module's docstring); ``metrics`` default to
    default_metrics(df), ``columns`` to slice_columns(df). Raises ValueError naming the fix for an unknown
    metric or column, a min_count below MIN_FLOOR or a max_order below 1."""
    start = time.perf_counter()
    df = prepared(df)
    metrics = metrics or default_metrics(df)
    unknown = [m for m in metrics if m not in SLICE_METRICS]
    if unknown:
        raise ValueError(ERR_UNKNOWN_METRIC.format(name=unknown[0], known=", ".join(SLICE_METRICS)))
    known = slice_columns(df)
    columns = list(columns) if columns is not None else known
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(ERR_UNKNOWN_COLUMN.format(missing=", ".join(missing), known=", ".join(known)))
    if min_count < MIN_FLOOR:
        raise ValueError(ERR_MIN_COUNT.format(floor=MIN_FLOOR, got=min_count))
    if max_order < 1:
        raise ValueError(ERR_MAX_ORDER.format(got=max_order))
    rows, tried, duplicates, combos, truncated = [], {}, {}, 0, False
    for m in metrics:
        found, combos, dup, cut = _search(df, SLICE_METRICS[m], columns, max_order, min_count, max_combinations)
        rows += found
        tried[m], duplicates[m], truncated = len(found), dup, truncated or cut
    return SliceSearch(pd.DataFrame(rows, columns=COLUMNS), tried, columns, max_order, min_count, alpha, combos,
                       truncated, time.perf_counter() - start, duplicates)


# --- how slices are shown (the report's HTML and the Bias page) ---------------------------------------------

def _q_text(q: float) -> str:
    return "<0.001" if q < 0.001 else f"{q:.3f}"


def display(table: pd.DataFrame) -> pd.DataFrame:
    """Slices as text, in the order given: slice, metric, value, rest, gap [95% interval], n, q."""
    rows = []
    for r in table.to_dict("records"):
        kind = SLICE_METRICS[r["metric"]].kind

        def fmt(v, delta=False, kind=kind):
            return tables.format_value(v, kind, delta=delta, signed=delta)

        rows.append({"slice": r["description"], "metric": r["label"], "value": fmt(r["value"]),
                     "rest": fmt(r["rest_value"]),
                     "gap [95% interval]": f"{fmt(r['gap'], True)} [{fmt(r['gap_lo'], True)}, "
                                           f"{fmt(r['gap_hi'], True)}]",
                     "n": tables.format_value(r["n"], tables.COUNT), "q": _q_text(r["q"])})
    return pd.DataFrame(rows, columns=["slice", "metric", "value", "rest", "gap [95% interval]", "n", "q"])


def shown(search: SliceSearch, show_all: bool = False, top: int = SHOW_AT_MOST) -> pd.DataFrame:
    """The slices to show, worst first per metric: the discoveries (q below alpha), or every slice tried;
    ``top`` per metric at most."""
    table = search.table if show_all else search.significant()
    return table.groupby("metric", sort=False).head(top)


def styled(search: SliceSearch, table: pd.DataFrame):
    """display(table) as a pandas Styler with the discoveries (q below alpha) in bold."""
    hits = (table["q"] < search.alpha).to_numpy()
    return display(table).style.apply(
        lambda r: ["font-weight: bold" if hits[r.name] else "color: #777" for _ in r], axis=1)


def empty_text(search: SliceSearch) -> str:
    """Why shown(search) is empty: no slice large enough, or none a discovery."""
    if not sum(search.tried.values()):
        return f"No slice has {search.min_count} faces in it and as many outside it: nothing to search."
    return (f"No slice is worse than the rest at q < {search.alpha:g}. Show every slice tried to see the "
            f"closest.")
