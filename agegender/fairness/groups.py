"""Disaggregated metrics with bootstrap intervals, on fairlearn's MetricFrame pattern:
computed once, read through ``overall`` / ``by_group``, with ``disparity()`` per metric.

Every metric (fairness.measures) is vectorised over bootstrap resamples, so 1,000
resamples of a few thousand predictions take well under a second. Groups larger than
``exact_n`` are resampled at that size and the spread rescaled by sqrt(m / n) (the m-out-of-n
bootstrap), which keeps 200,000-row files fast; intervals of such groups are a fraction of a
year wide either way.

Any table groups: by its age bucket, gender, age bin and whatever group columns the dataset has
(UTKFace and FairFace: race; a user's CSV: any). A photo without a face found is a result, not a
dropped row: the metrics are computed on the faces found, and every row also gives the share of
images missed, with a Wilson interval.
"""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd

from ..faces import quality
from ..labels import AGE_BUCKET_EDGES, age_bucket, parse_age_bin
from ..predictions import (
    BIN_INDEX,
    DERIVED_GROUP,
    IS_FEMALE,
    KNOWN,
    complete,
    group_columns,
    metric_columns,
    parsed_bins,
    pred_bin_columns,
    with_typed,
)
from . import stats
from .measures import METRICS, MISSED_RATE, Metric

# UTKFace's groups and default groupings, kept for the pages that offer them; any other table:
# grouping_columns(df) and groupings_for(df), which give these on a UTKFace table.
GROUP_COLUMNS = ("age_bucket", "gender", "race")
DEFAULT_GROUPINGS = ("age_bucket", "gender", "race", "race:gender", "age_bucket:race")
LABEL_GROUPS = (DERIVED_GROUP, "gender", "age_bin")  # groupable in every table, besides the dataset's own
# Every report, comparison and the model card resample this often from this seed, so that the same
# table gives the same intervals wherever it is shown (the model card is checked byte for byte).
N_BOOT = 1000
SEED = 0
# AUC's test of "all groups equal" is Cochran's Q on its bootstrap standard errors: ranking every permutation
# would cost as much as the bootstrap again (0.4 s a grouping of 2,114 faces); AUC is unbiased in small groups,
# unlike ECE or a median, which are permuted
WALD_TESTED = ("gender_auc",)
N_PERM = stats.N_PERM  # permutations of the groups per test of "all groups equal"
MIN_COUNT = 30  # smaller groups are flagged too small to judge, and left out of disparities and gaps
Z95 = 1.959963984540054  # the normal quantile of a two-sided 95% interval

# The disparity table's ratio, worst / best, is left empty (NaN; null in JSON) for a signed metric (one whose
# best is closest to zero, higher_is_better None: a mean signed error): a ratio of signed quantities (9.13, -6.54)
# has no meaning. Every other metric is a non-negative error, rate or score.
RATIO_NOTE = "ratio = worst / best; left empty for signed metrics (mean signed errors), where a ratio means nothing"

# disparity()'s columns: the gap, its 95% interval, the test of "all groups equal" and what the data could detect
DISPARITY_COLUMNS = ("metric", "label", "best_group", "best", "worst_group", "worst", "gap", "gap_lo", "gap_hi",
                     "ratio", "overall", "p_value", "q_value", "within_noise", "detectable")

PREPARED_EDGES = "prepared_edges"  # the attrs key prepare() leaves: the age bucket edges it used

ERR_BAD_GROUPING = "unknown grouping {grouping!r}: use {known}, or two joined by ':' (e.g. age_bucket:gender)"


def _bucket_of_bin(label: str, edges: tuple[int, ...], parsed: dict | None = None) -> str:
    """The age bucket an age bin lies in (a FairFace bin is its own bucket: they share the edges); a bin
    that straddles buckets (a user's 25-34) or starts below the first edge keeps its own label."""
    lo, hi = parsed[label] if parsed and label in parsed else parse_age_bin(label)
    if lo < edges[0]:
        return label
    first = age_bucket(lo, edges)
    inside = lo >= edges[-1] if hi is None else age_bucket(hi, edges) == first
    return first if inside else label


def age_buckets(age, age_bin, edges: tuple[int, ...] = AGE_BUCKET_EDGES, parsed: dict | None = None
                ) -> pd.Categorical:
    """Each row's age bucket: from the exact age where there is one, else from the age bin (see
    _bucket_of_bin); missing where neither is known. Ordered by age (by lower bound, then upper).
    ``parsed``: {label: bin} of the labels already parsed (predictions.parsed_bins), not parsed again."""
    labels = [age_bucket(lo, edges) for lo in edges]
    age = np.asarray(age, np.float64)
    exact = np.isfinite(age)
    if (age[exact] < edges[0]).any():
        age_bucket(age[exact].min(), edges)  # its error names the age and the first edge
    out = np.full(len(age), None, dtype=object)
    out[exact] = np.asarray(labels, dtype=object)[np.searchsorted(edges, age[exact], side="right") - 1]
    bins = pd.Series(age_bin, dtype=object).fillna("").astype(str).to_numpy()
    for label in set(bins[~exact]) - {""}:
        out[~exact & (bins == label)] = _bucket_of_bin(label, edges, parsed)
    extra = {b for b in out if b is not None} - set(labels)
    order = _bucket_order(edges, parsed)
    return pd.Categorical(out, categories=sorted(labels + sorted(extra), key=order), ordered=True)


def _bucket_order(edges: tuple[int, ...], parsed: dict | None):
    """_bin_order of a bucket label, the buckets' own read from the edges rather than parsed."""
    known = {age_bucket(lo, edges): (lo, np.inf if i == len(edges) - 1 else edges[i + 1] - 1)
             for i, lo in enumerate(edges)}
    for label, (lo, hi) in (parsed or {}).items():
        known.setdefault(label, (lo, np.inf if hi is None else hi))
    return lambda label: known[label] if label in known else _bin_order(label)


def prepare(df: pd.DataFrame, edges: tuple[int, ...] = AGE_BUCKET_EDGES) -> pd.DataFrame:
    """A predictions table (agegender.predictions), completed to every column, with its age bucket and typed
    columns (predictions.with_typed: a boolean female, age bins as numbers) added, every bin label parsed
    once. A command prepares its table once, at its entry, and passes it down: functions that take a table
    call prepared(), which returns a prepared one as it is."""
    out = complete(df)
    parsed = parsed_bins(out["age_bin"], *(out[c] for c in pred_bin_columns(out)))
    out[DERIVED_GROUP] = age_buckets(out["age"], out["age_bin"], edges, parsed)
    with_typed(out, parsed)
    out.attrs[PREPARED_EDGES] = tuple(edges)
    if "yaw" in out:  # photos: how the face was taken, as groups ("turned over 30°", "under 60 px")
        out[quality.POSE] = pd.Categorical(quality.pose_group(out["yaw"]), [*quality.POSE_LABELS, quality.UNKNOWN])
    if "face_px" in out:
        out[quality.SIZE] = pd.Categorical(quality.size_group(out["face_px"]), [*quality.SIZE_LABELS, quality.UNKNOWN])
    return out


def is_prepared(df: pd.DataFrame, edges: tuple[int, ...] | None = None) -> bool:
    """Whether prepare() made ``df`` (its typed columns are there), with ``edges`` when given and recorded."""
    made = df.attrs.get(PREPARED_EDGES)
    same = edges is None or made is None or tuple(made) == tuple(edges)
    return same and DERIVED_GROUP in df and IS_FEMALE in df and BIN_INDEX in df


def prepared(df: pd.DataFrame, edges: tuple[int, ...] | None = None) -> pd.DataFrame:
    """``df`` when prepare() made it (with ``edges``, when given), else prepare(df, edges): a report takes
    either. A table with its own age bucket but no typed columns keeps its buckets and gains the columns."""
    if is_prepared(df, edges):
        return df
    if edges is None and DERIVED_GROUP in df and all(c in df for c in KNOWN):
        return with_typed(df.copy())
    return prepare(df, AGE_BUCKET_EDGES if edges is None else edges)


def grouping_columns(df: pd.DataFrame) -> list[str]:
    """The columns a table can be grouped by: age bucket, gender, age bin, the dataset's groups, and pose and
    face size where the faces were measured (photos)."""
    return [*LABEL_GROUPS, *group_columns(df), *_quality_groups(df)]


def _quality_groups(df: pd.DataFrame) -> list[str]:
    measured = {quality.POSE: "yaw", quality.SIZE: "face_px"}
    return [g for g, c in measured.items() if c in df and np.isfinite(np.asarray(df[c], np.float64)).any()]


def groupings_for(df: pd.DataFrame) -> list[str]:
    """The groupings a report gives by default: age bucket, gender, each group column alone and by gender,
    and age bucket by the first group column (on UTKFace: DEFAULT_GROUPINGS)."""
    groups = group_columns(df)
    return [DERIVED_GROUP, "gender", *[x for g in groups for x in (g, f"{g}:gender")],
            *([f"{DERIVED_GROUP}:{groups[0]}"] if groups else []), *_quality_groups(df)]


def headline_age_metric(df: pd.DataFrame) -> str:
    """age_mae where the table has exact ages, age_bin_accuracy where it has bins only (FairFace)."""
    return "age_mae" if np.isfinite(np.asarray(df["age"], np.float64)).any() else "age_bin_accuracy"


def found_mask(df: pd.DataFrame) -> np.ndarray:
    """Rows with a face found; every row of a table that has no found column."""
    return df["found"].to_numpy(bool) if "found" in df else np.ones(len(df), bool)


def take(cols: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, np.ndarray]:
    """Some rows of metric columns. Columns are built once for a whole table and sliced, not built per
    group: a group's own age_bin labels may lack a bin between two others, which would shrink its errors."""
    return {k: v[rows] for k, v in cols.items()}


def _bin_order(label) -> tuple[int, float]:
    lo, hi = parse_age_bin(label)
    return lo, np.inf if hi is None else hi


def value_order(col: pd.Series) -> list:
    """The values of a group column in the order its groups are listed: a categorical's in its categories'
    order (the age bucket), age bins by age (age_bin, a user's "18-24"), anything else sorted."""
    if isinstance(col.dtype, pd.CategoricalDtype):
        present = set(col.dropna())
        return [c for c in col.cat.categories if c in present]
    values = list(col.dropna().unique())
    try:
        return sorted(values, key=_bin_order)
    except (ValueError, TypeError):  # not age bins
        try:
            return sorted(values)
        except TypeError:  # mixed types
            return sorted(values, key=str)


def group_positions(df: pd.DataFrame, columns: list[str]) -> list[tuple[tuple, np.ndarray]]:
    """(the group's values, its row positions) per group of ``columns``, listed in value_order of each
    column (df.groupby's order, but age bins by age); without columns, the whole table as one group."""
    if not columns:
        return [((), np.arange(len(df)))]
    pos = pd.Series(np.arange(len(df)))
    keys = [df[c].reset_index(drop=True) for c in columns]
    groups = [(k if isinstance(k, tuple) else (k,), p.to_numpy())
              for k, p in pos.groupby(keys, observed=True, sort=True)]
    rank = [{v: i for i, v in enumerate(value_order(k))} for k in keys]
    return sorted(groups, key=lambda g: tuple(r[v] for r, v in zip(rank, g[0], strict=True)))


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion k / n (sound near 0 and 1, where a detector's miss rate
    lives, unlike the normal approximation); NaN without images."""
    if n == 0:
        return np.nan, np.nan
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def _estimate(cols: dict[str, np.ndarray], n_boot: int, rng: np.random.Generator, exact_n: int,
              metrics: list[Metric]) -> tuple[dict[str, tuple[float, float, float]], dict[str, tuple]]:
    """({metric: (value, lo, hi)}, {metric: (its resampled values, sqrt(m / n))}) of one group: every metric
    on the same draws; a group over ``exact_n`` faces drawn at exact_n and the spread rescaled (m-out-of-n)."""
    n = len(cols["err"])
    if n == 0:  # a group whose every face was missed: nothing to measure, nothing drawn
        return {m.name: (np.nan, np.nan, np.nan) for m in metrics}, {}
    point = {m.name: float(m.fn(cols)) for m in metrics}
    if n_boot == 0:
        return {k: (v, np.nan, np.nan) for k, v in point.items()}, {}
    m_size = min(n, exact_n)
    scale = 1.0 if m_size == n else float(np.sqrt(m_size / n))
    sample = stats.resample(cols, stats.draws(n, n_boot, rng, m_size))
    out, boots = {}, {}
    for m in metrics:
        if not np.isfinite(point[m.name]):  # undefined here (ages given as bins): no interval either
            out[m.name] = (point[m.name], np.nan, np.nan)
            continue
        boots[m.name] = (m.fn(sample), scale)
        lo, hi = stats.interval(boots[m.name][0], point[m.name], scale=scale, min_finite=n_boot // 2)
        out[m.name] = (point[m.name], lo, hi)
    return out, boots


def parse_grouping(grouping: str, known: list[str] | tuple[str, ...] | None = None) -> list[str]:
    """The columns of a grouping: one or two distinct names joined by ':', each among ``known`` (a table's
    grouping_columns) when given; without ``known`` the form alone is checked."""
    cols = grouping.split(":")
    allowed = (lambda c: c in known) if known is not None else (lambda c: bool(c.strip()))
    if not 1 <= len(cols) <= 2 or not all(map(allowed, cols)) or len(set(cols)) != len(cols):
        listed = known if known is not None else GROUP_COLUMNS
        raise ValueError(ERR_BAD_GROUPING.format(grouping=grouping, known=", ".join(listed)))
    return cols


def group_names(by_group: pd.DataFrame, columns: list[str]) -> pd.Series:
    """One name per row of a per-group table: its group's values joined by ' · '."""
    if by_group.empty:
        return pd.Series(dtype=str)
    return by_group[columns].astype(str).agg(" · ".join, axis=1)


class GroupReport:
    """Overall and per-group metrics with bootstrap 95% intervals for one grouping of a table, on the faces
    found (``n``), with the share of images without a face found (``n_images``, ``n_missed``,
    ``missed_rate`` and its Wilson interval); disparity() per metric, with the gap's interval and the test
    of "all groups equal" (agegender.fairness.stats), over the groups with at least ``min_count`` faces."""

    def __init__(self, df: pd.DataFrame, grouping: str | None = None, n_boot: int = N_BOOT, seed: int = SEED,
                 min_count: int = MIN_COUNT, exact_n: int = 4000, metrics: list[str] | None = None,
                 overall: dict | None = None, n_perm: int | None = None):
        df = prepared(df)
        self.grouping = grouping
        self.columns = parse_grouping(grouping, grouping_columns(df)) if grouping else []
        self.min_count = min_count
        self.metrics = [METRICS[m] for m in (metrics or METRICS)]
        rng = np.random.default_rng(seed)
        cols, found = metric_columns(df), found_mask(df)
        self._boots: dict[str, dict] = {}  # per group name: each metric's resampled values (the gap's interval)
        self._among: dict[str, dict] = {}  # per group name: the faces each share is of (the chi-square test)
        # ``overall`` from another grouping of the same table saves recomputing it
        self.overall = overall or self._measure(cols, found, np.arange(len(df)), n_boot, rng, exact_n)[0]
        rows, hits = [], {}
        if self.columns:
            for key, where in group_positions(df, self.columns):
                row, boots, hit = self._measure(cols, found, where, n_boot, rng, exact_n)
                rows.append({**dict(zip(self.columns, map(str, key), strict=True)), **row})
                name = " · ".join(map(str, key))
                self._boots[name], hits[name] = boots, hit
                self._among[name] = {m.name: int(m.among(take(cols, hit)).sum()) for m in self.metrics if m.among}
        self.by_group = pd.DataFrame(rows)
        perms = (N_PERM if n_boot else 0) if n_perm is None else n_perm
        self._tested = self._permutation_tests(cols, hits, perms, seed)

    def _measure(self, cols: dict, found: np.ndarray, where: np.ndarray, n_boot: int, rng: np.random.Generator,
                 exact_n: int) -> tuple[dict, dict, np.ndarray]:
        """The row of a group (positions ``where``): metrics on its faces found, the miss rate on all of it;
        with the metrics' resampled values and the positions of the faces found."""
        hit = where[found[where]]
        est, boots = _estimate(take(cols, hit), n_boot, rng, exact_n, self.metrics)
        n_images, n = len(where), len(hit)
        row = {"n": n, "n_images": n_images, "n_missed": n_images - n, "too_small": n < self.min_count}
        for name, (v, lo, hi) in est.items():
            row[name], row[f"{name}_lo"], row[f"{name}_hi"] = v, lo, hi
        lo, hi = wilson(n_images - n, n_images)
        row["missed_rate"] = (n_images - n) / n_images if n_images else np.nan
        row["missed_rate_lo"], row["missed_rate_hi"] = lo, hi
        return row, boots, hit

    def _permutation_tests(self, cols: dict, hits: dict[str, np.ndarray], n_perm: int, seed: int) -> dict:
        """Per metric that is not a share: (the groups tested, p) of the permutation test over the groups big
        enough to judge. Its own random stream, so the intervals stay those of the seed whether tested or not."""
        judged = {k: h for k, h in hits.items() if len(h) >= self.min_count}
        others = {m.name: (m.fn, m.higher_is_better is None) for m in self.metrics
                  if m.among is None and m.name not in WALD_TESTED}
        if n_perm <= 0 or len(judged) < 2 or not others:
            return {}
        p = stats.permutation_p(cols, list(judged.values()), others, np.random.default_rng([seed, 1]), n_perm)
        return {name: (frozenset(judged), v) for name, v in p.items()}

    def with_groups(self, by_group: pd.DataFrame) -> GroupReport:
        """The same report restricted to some of its groups (a filter in the dashboard)."""
        other = copy.copy(self)
        other.by_group = by_group.reset_index(drop=True)
        return other

    @property
    def group_names(self) -> pd.Series:
        return group_names(self.by_group, self.columns)

    @property
    def any_missed(self) -> bool:
        return self.overall.get("n_missed", 0) > 0

    def disparity(self) -> pd.DataFrame:
        """Per metric: the best and worst group (among groups big enough to judge), gap and ratio (NaN for a
        signed metric, RATIO_NOTE, and where the best is 0); the miss rate too when any face was missed, judged
        on groups with enough images (a group whose every face was missed has no face to judge the other
        metrics on, but is the detector's worst). With each gap: its 95% interval (gap_lo, gap_hi:
        simultaneous intervals over the groups, stats.gap), the p-value of "all groups equal" (chi-square for
        a share, else permutations of the groups), its q over this table's metrics (Benjamini-Hochberg), the
        smallest gap the groups could show at 80% power (detectable) and in words what it means (reading)."""
        names = self.group_names
        rows = []
        for m in self.metrics + ([MISSED_RATE] if self.any_missed else []):
            size = "n_images" if m is MISSED_RATE else "n"
            judged = self.by_group[self.by_group[size] >= self.min_count] if not self.by_group.empty \
                else self.by_group
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
                "ratio": worst / best if m.higher_is_better is not None and best != 0 else np.nan,
                "overall": self.overall[m.name], **self._gap_test(m, judged.loc[vals.index], names[vals.index]),
            })
        out = pd.DataFrame(rows, columns=[*DISPARITY_COLUMNS, "reading"])
        out["q_value"] = stats.bh(out["p_value"].to_numpy(np.float64))
        out["within_noise"] = [bool(q >= stats.ALPHA) if np.isfinite(q) else None for q in out["q_value"]]
        out["reading"] = [stats.reading(q, detectable_text(m, d)) for m, q, d in
                          zip(out["metric"], out["q_value"], out["detectable"], strict=True)]
        return out[[*DISPARITY_COLUMNS, "reading"]]

    def _gap_test(self, m: Metric, judged: pd.DataFrame, names: pd.Series) -> dict:
        """gap_lo, gap_hi, p_value, detectable of metric ``m`` over the ``judged`` rows (group ``names``)."""
        vals = judged[m.name].to_numpy(np.float64)
        if m is MISSED_RATE:
            k, n = judged["n_missed"].to_numpy(), judged["n_images"].to_numpy()
            lo, hi = stats.wilson_simultaneous(k, n)
            g_lo, g_hi = stats.gap_interval(lo, hi)
            return {"gap_lo": g_lo, "gap_hi": g_hi, "p_value": stats.shares_p(k, n),
                    "detectable": _share_detectable(k, n)}
        boots = [self._boots.get(g, {}).get(m.name, (np.full(1, np.nan), 1.0)) for g in names]
        fit = stats.gap(vals, [b for b, _ in boots], m.higher_is_better, scales=[s for _, s in boots],
                        bounds=(0.0, 1.0) if m.among else (-np.inf, np.inf))
        sd = [float(np.nanstd(b, ddof=1) * s) if np.isfinite(b).sum() > 1 else np.nan for b, s in boots]
        if m.among is not None:
            n = np.array([self._among.get(g, {}).get(m.name, 0) for g in names])
            k = np.round(vals * n)
            p, detectable = stats.shares_p(k, n), _share_detectable(k, n)
        else:
            tested, p = self._tested.get(m.name, (None, np.nan))
            p = p if tested == frozenset(names) else np.nan  # a filtered view was not tested as it is
            p = stats.wald_p(vals, np.array(sd)) if m.name in WALD_TESTED else p
            big = sorted((x for x in sd if np.isfinite(x)), reverse=True)
            detectable = stats.detectable_gap(big[0], big[1]) if len(big) >= 2 else np.nan
        return {"gap_lo": fit["gap_lo"], "gap_hi": fit["gap_hi"], "p_value": p, "detectable": detectable}

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


def _share_detectable(k: np.ndarray, n: np.ndarray) -> float:
    """detectable_gap between the two groups with the fewest faces a share is of, at the pooled share."""
    n = np.asarray(n, np.float64)
    if (n > 0).sum() < 2:
        return np.nan
    p = float(np.sum(k) / n.sum())
    small = np.sort(n[n > 0])[:2]
    return stats.detectable_gap(stats.share_se(p, small[0]), stats.share_se(p, small[1]))


def detectable_text(metric: str, value: float) -> str:
    """A disparity row's detectable gap as text: points for a share, the unit of a mean, 0.xxx for a score."""
    m = METRICS.get(metric, MISSED_RATE)
    if not np.isfinite(value):
        return "no figure"
    if m.unit:
        return f"{value:.2f} {m.unit}"
    return f"{value * 100:.1f} pp" if m.among is not None or m is MISSED_RATE else f"{value:.3f}"
