"""The statistics core: resampling, one interval, one best-to-worst gap, and whether groups differ at all.

Every interval the product shows comes from here: group metrics, gaps, paired deltas, gap changes, the
cross-dataset view, shift and the gender band. numpy and scipy only; no model, no torch.

- Resampling draws index matrices (one row per resample) once per call and shares them by every metric of
  that call: ``draws`` (plain), the same matrix applied to two sides (paired: the shared difficulty of the
  images cancels), ``stratified_draws`` (each group, or group x stratum, resampled within itself).
- ``interval``: the bootstrap percentile interval of a statistic (for a mean or a rate, whose bootstrap
  distribution is centred on the estimate), or the m-out-of-n interval of a group resampled below its size.
- ``gap``: the best-to-worst gap of a metric over groups with an interval valid for it. A percentile bootstrap
  of max - min is biased upward (with seven groups of 80 faces, noise alone makes a gap of several points), so
  its interval can miss its own estimate; BCa cannot repair it where the groups are equal (every resampled gap
  is above the true gap of 0). Measured in benchmarks/stats_sim.py. Here instead: simultaneous 95% intervals
  over the groups (bootstrap max-t: each group's estimate +- c standard errors, c the 95% quantile of the
  largest studentised deviation of any group in one resample), and the gap's interval is the range of gaps
  that the box of group intervals allows. The observed gap lies inside it by construction (each estimate is
  inside its own interval), and whenever every true group figure lies in its interval (95% of the time) so
  does the true gap: it is conservative, never anti-conservative.
- ``shares_p`` (Pearson's chi-square of a k x 2 table), ``permutation_p`` (group labels permuted, the gap
  itself the statistic: valid for small groups and for statistics biased by group size, such as ECE) and
  ``wald_p`` (Cochran's Q on bootstrap standard errors): a test of "all groups are equal"; ``bh`` corrects
  the p-values of one report's metrics for their number (Benjamini-Hochberg, false_discovery_control).
- ``detectable_gap``: the smallest difference between two groups that a two-sided 5% test finds 80% of
  the time, from the two groups' standard errors.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy import stats as sps

LEVEL = 0.95  # every interval shown is a 95% one
ALPHA = 0.05  # the level of the heterogeneity test: a gap with q >= ALPHA is within noise
POWER = 0.8  # detectable_gap's power
# permutations per heterogeneity test: p down to 1/501, enough for q at 0.05 over a report's dozen metrics, at
# half the cost of 1000 (the bias report of 2,114 rows and five groupings stays under its 2 s)
N_PERM = 500
PERM_ROWS = 4000  # a permutation test on more faces takes a random subset of this size (valid, less power)
PERM_CHUNK = 250  # permutations drawn at a time, so that 1000 x 4000 indices are never in memory at once

# How a gap reads, in words (the report, the pages): within noise when its q >= ALPHA
NOISE_WORDS = ("within noise: groups of these sizes differ this much by chance alone (q = {q:.2f}; the data "
               "could detect a gap of {detectable} at 80% power)")
REAL_WORDS = "the groups differ: a gap this large is unlikely by chance (q = {q:.2g})"
UNTESTED_WORDS = "not tested"


def draws(n: int, n_boot: int, rng: np.random.Generator, size: int | None = None) -> np.ndarray:
    """(n_boot, size) row positions drawn with replacement from range(n) (size: n unless told: m-out-of-n)."""
    return rng.integers(0, n, size=(n_boot, n if size is None else size))


def stratified_draws(sizes: Sequence[int], n_boot: int, rng: np.random.Generator) -> list[np.ndarray]:
    """One draws() matrix per stratum (a group, or a group's part of another column), in the order given:
    each stratum is resampled within itself, so its size stays fixed."""
    return [draws(n, n_boot, rng) for n in sizes]


def resample(cols: dict[str, np.ndarray], idx: np.ndarray) -> dict[str, np.ndarray]:
    """Metric columns at the positions of an index matrix: each column becomes (n_boot, size)."""
    return {k: v[idx] for k, v in cols.items()}


def _tails(level: float) -> list[float]:
    tail = round(50 * (1 - level), 10)  # 2.5, not 2.5000000000000022: the percentiles stay bit for bit
    return [tail, 100 - tail]


def interval(boots: np.ndarray, point: float | None = None, level: float = LEVEL, scale: float = 1.0,
             min_finite: int = 1) -> tuple[float, float]:
    """The bootstrap interval of a statistic from its resampled values (NaN ones dropped; NaN with fewer than
    ``min_finite`` left). Percentiles; with ``scale`` < 1 (each resample drew m of n rows, scale = sqrt(m / n)),
    the spread around the resamples' median, scaled to n, placed around ``point``."""
    b = np.asarray(boots, np.float64)
    b = b[np.isfinite(b)]
    if len(b) < max(min_finite, 1):
        return np.nan, np.nan
    if scale == 1.0:
        lo, hi = np.percentile(b, _tails(level))
        return float(lo), float(hi)
    q_lo, q_hi = np.percentile(b - np.median(b), _tails(level)) * scale
    return float(point + q_lo), float(point + q_hi)


# ---- the best-to-worst gap ---------------------------------------------------------------------------------

def best_worst(values: np.ndarray, higher_is_better: bool | None) -> tuple[int, int]:
    """Positions of the best and the worst finite value (None: nearest zero is best); the first on ties."""
    v = np.asarray(values, np.float64)
    ok = np.flatnonzero(np.isfinite(v))
    score = np.abs(v[ok]) if higher_is_better is None else v[ok]
    hi, lo = ok[np.argmax(score)], ok[np.argmin(score)]
    return (hi, lo) if higher_is_better else (lo, hi)


def spread(values: np.ndarray, signed: bool = False) -> np.ndarray:
    """The best-to-worst gap along the first axis (groups) over the finite values; NaN with fewer than two.
    max - min; for a signed metric (``signed``: nearest zero is best) |worst - best| with best and worst by
    their distance from zero, as the disparity table has it."""
    v = np.asarray(values, np.float64)
    ok = np.isfinite(v)
    if signed:
        a = np.abs(v)
        w = np.argmax(np.where(ok, a, -np.inf), axis=0)[None]
        b = np.argmin(np.where(ok, a, np.inf), axis=0)[None]
        gap = np.abs(np.take_along_axis(v, w, 0) - np.take_along_axis(v, b, 0))[0]
    else:
        with np.errstate(invalid="ignore"):  # inf - inf where a column has no figure: replaced by NaN below
            gap = np.where(ok, v, -np.inf).max(axis=0) - np.where(ok, v, np.inf).min(axis=0)
    return np.where(ok.sum(axis=0) >= 2, gap, np.nan)


def simultaneous(points: np.ndarray, boots: Sequence[np.ndarray], level: float = LEVEL,
                 scales: Sequence[float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) per group: intervals that hold every group's true figure at once with probability ``level``
    (bootstrap max-t: estimate +- c x the group's bootstrap standard error, c the ``level`` quantile of the
    largest studentised deviation over the groups in one resample). ``boots``: each group's resampled values
    (independent draws per group, NaN where undefined); ``scales``: sqrt(m / n) of a group resampled at m of
    its n faces. A group without spread gets its estimate as its interval."""
    points = np.asarray(points, np.float64)
    scales = np.ones(len(points)) if scales is None else np.asarray(scales, np.float64)
    dev = []
    for p, b, s in zip(points, boots, scales, strict=True):
        b = np.asarray(b, np.float64)
        centre = p if s == 1.0 else np.nanmedian(b) if np.isfinite(b).any() else p
        dev.append((b - centre) * s)
    dev = np.array(dev) if len(dev) else np.zeros((0, 0))
    finite = np.isfinite(dev)
    n_ok = finite.sum(axis=1)
    sd = np.array([np.std(d[f], ddof=1) if k > 1 else np.nan for d, f, k in zip(dev, finite, n_ok, strict=True)])
    with np.errstate(invalid="ignore", divide="ignore"):
        t = np.where(finite & (sd[:, None] > 0), np.abs(dev) / sd[:, None], 0.0)
    c = float(np.quantile(t.max(axis=0), level)) if t.size else np.nan
    half = c * sd
    return points - half, points + half


def gap_interval(lo: np.ndarray, hi: np.ndarray, signed: bool = False) -> tuple[float, float]:
    """The gaps the box of simultaneous group intervals allows: from the most the intervals can overlap
    (0 when they all share a point) to the most they can spread. ``signed``: spread() of a signed metric,
    bounded through each interval's nearest and farthest distance from zero."""
    lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    ok = np.isfinite(lo) & np.isfinite(hi)
    if ok.sum() < 2:
        return np.nan, np.nan
    lo, hi = lo[ok], hi[ok]
    pairs = hi[:, None] - lo[None, :]  # one group high, another low: a group cannot be both
    np.fill_diagonal(pairs, -np.inf)
    upper = max(0.0, float(pairs.max()))
    if signed:
        near = np.where((lo <= 0) & (hi >= 0), 0.0, np.minimum(np.abs(lo), np.abs(hi)))
        far = np.maximum(np.abs(lo), np.abs(hi))
        return max(0.0, float(near.max() - far.min())), upper
    return max(0.0, float(lo.max() - hi.min())), upper


def gap(points: np.ndarray, boots: Sequence[np.ndarray], higher_is_better: bool | None, level: float = LEVEL,
        scales: Sequence[float] | None = None, bounds: tuple[float, float] = (-np.inf, np.inf)) -> dict:
    """The best-to-worst gap over groups (``points``, one figure each; NaN ones left out) with its interval
    from simultaneous() and gap_interval(): best, worst (positions), gap, gap_lo, gap_hi. NaN with fewer than
    two figures. ``bounds``: where the figure can lie at all (a share: [0, 1]), the group intervals cut to it."""
    points = np.asarray(points, np.float64)
    ok = np.flatnonzero(np.isfinite(points))
    if len(ok) < 2:
        return {"best": None, "worst": None, "gap": np.nan, "gap_lo": np.nan, "gap_hi": np.nan}
    best, worst = best_worst(points, higher_is_better)
    scales = None if scales is None else [scales[i] for i in ok]
    lo, hi = np.clip(simultaneous(points[ok], [boots[i] for i in ok], level, scales), *bounds)
    g_lo, g_hi = gap_interval(lo, hi, signed=higher_is_better is None)
    return {"best": int(best), "worst": int(worst), "gap": float(abs(points[worst] - points[best])),
            "gap_lo": g_lo, "gap_hi": g_hi}


def wilson_simultaneous(k: np.ndarray, n: np.ndarray, level: float = LEVEL) -> tuple[np.ndarray, np.ndarray]:
    """Wilson intervals of k / n per group at the Sidak level that makes them hold all at once with
    probability ``level`` (independent groups): for a gap of shares counted, not resampled."""
    k, n = np.asarray(k, np.float64), np.asarray(n, np.float64)
    each = level ** (1 / max(len(k), 1))
    z = float(sps.norm.ppf(0.5 + each / 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / n
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return np.maximum(0.0, centre - half), np.minimum(1.0, centre + half)


# ---- is there a gap at all? --------------------------------------------------------------------------------

def shares_p(k: np.ndarray, n: np.ndarray) -> float:
    """Pearson's chi-square test that every group has the same share (k of n each): the p-value; 1.0 where no
    group has any (or every group has all), NaN with fewer than two groups of any size."""
    k, n = np.asarray(k, np.float64), np.asarray(n, np.float64)
    keep = n > 0
    k, n = k[keep], n[keep]
    if len(k) < 2:
        return np.nan
    if k.sum() == 0 or k.sum() == n.sum():
        return 1.0
    return float(sps.chi2_contingency(np.stack([k, n - k], axis=1), correction=False).pvalue)


def permutation_p(cols: dict[str, np.ndarray], groups: Sequence[np.ndarray],
                  metrics: dict[str, tuple[Callable, bool]], rng: np.random.Generator, n_perm: int = N_PERM,
                  max_rows: int = PERM_ROWS) -> dict[str, float]:
    """Per metric (name -> (fn over metric columns, signed)), the permutation test that all ``groups`` (row
    positions into ``cols``) are alike: the group labels shuffled ``n_perm`` times (the same shuffles for every
    metric), the statistic the gap itself (spread). p = (1 + shuffles with a gap at least the observed) /
    (1 + n_perm). With more than ``max_rows`` faces, a random subset of that many is tested (rows drawn
    without regard to group: still a valid test, with less power)."""
    pos = np.concatenate(groups) if len(groups) else np.zeros(0, np.int64)
    label = np.repeat(np.arange(len(groups)), [len(g) for g in groups])
    if len(pos) > max_rows:
        keep = np.sort(rng.choice(len(pos), max_rows, replace=False))
        pos, label = pos[keep], label[keep]
    order = np.argsort(label, kind="stable")
    pos, label = pos[order], label[order]
    bounds = np.r_[0, np.cumsum(np.bincount(label, minlength=len(groups)))]
    if len(groups) < 2 or (np.diff(bounds) > 0).sum() < 2:
        return dict.fromkeys(metrics, np.nan)

    def gaps(rows: np.ndarray) -> dict[str, np.ndarray]:  # rows: (B, N) positions, block g = group g
        c = resample(cols, rows)
        out = {}
        for name, (fn, signed) in metrics.items():
            vals = np.stack([fn({k: v[:, bounds[g]:bounds[g + 1]] for k, v in c.items()})
                             for g in range(len(groups)) if bounds[g + 1] > bounds[g]])
            out[name] = spread(vals, signed)
        return out

    observed = {k: float(v[0]) for k, v in gaps(pos[None]).items()}
    hits = dict.fromkeys(metrics, 0)
    done = 0
    while done < n_perm:
        b = min(PERM_CHUNK, n_perm - done)
        shuffled = rng.permuted(np.broadcast_to(pos, (b, len(pos))), axis=1)
        for name, g in gaps(shuffled).items():
            hits[name] += int((g >= observed[name] - 1e-12 * max(1.0, abs(observed[name]))).sum())
        done += b
    return {k: (1 + hits[k]) / (1 + n_perm) if np.isfinite(observed[k]) else np.nan for k in metrics}


def wald_p(points: np.ndarray, se: np.ndarray) -> float:
    """Cochran's Q: the Wald test that independent estimates with standard errors ``se`` share one value
    (their precision-weighted mean); chi-square with k - 1 degrees of freedom. NaN with fewer than two usable."""
    points, se = np.asarray(points, np.float64), np.asarray(se, np.float64)
    ok = np.isfinite(points) & np.isfinite(se) & (se > 0)
    if ok.sum() < 2:
        return np.nan
    w = 1 / se[ok] ** 2
    mean = np.sum(w * points[ok]) / w.sum()
    return float(sps.chi2.sf(np.sum(w * (points[ok] - mean) ** 2), ok.sum() - 1))


def bh(p: Sequence[float]) -> np.ndarray:
    """Benjamini-Hochberg q-values of the finite p-values (scipy.stats.false_discovery_control); NaN stays NaN."""
    p = np.asarray(p, np.float64)
    q = np.full(len(p), np.nan)
    ok = np.isfinite(p)
    if ok.any():
        q[ok] = sps.false_discovery_control(p[ok], method="bh")
    return q


def detectable_gap(se_a: float, se_b: float, alpha: float = ALPHA, power: float = POWER) -> float:
    """The smallest difference between two groups with standard errors ``se_a`` and ``se_b`` that a two-sided
    level-``alpha`` z test finds with probability ``power``: (z_{1-alpha/2} + z_power) sqrt(se_a^2 + se_b^2)."""
    return float((sps.norm.ppf(1 - alpha / 2) + sps.norm.ppf(power)) * np.hypot(se_a, se_b))


def share_se(p: float, n: float) -> float:
    """The standard error of a share p over n faces (p: the share pooled over the groups, as under 'all equal')."""
    return float(np.sqrt(p * (1 - p) / n)) if n > 0 else np.nan


def reading(q: float, detectable: str) -> str:
    """A gap in words from its q-value: within noise, or a real difference; 'not tested' without a q."""
    if q is None or not np.isfinite(q):
        return UNTESTED_WORDS
    return NOISE_WORDS.format(q=q, detectable=detectable) if q >= ALPHA else REAL_WORDS.format(q=q)
