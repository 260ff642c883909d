"""The gender head's threshold, per group: ROC, reliability and what the Uncertain band does.

Three views of P(female) on the faces found whose gender is known, overall and per group of one grouping
(any of a table's grouping_columns, or two joined by ':'):

- roc_by_group: the ROC curve with 'female' as the positive class (a face is called female when
  P(female) >= t; tpr = share of women called female, fpr = share of men called female) and its AUC, the
  Mann-Whitney statistic with ties counted half, with DeLong's 95% interval (DeLong, DeLong & Clarke-Pearson
  1988, computed from mid-ranks as in Sun & Xu 2014; normal on the AUC's own scale, clipped to [0, 1]). A
  group with one gender only has no AUC, and says so in ``note``.
- reliability_by_group: mean P(female) against the observed share of women in equal-width bins, with
  Wilson intervals, and the expected calibration error (ECE: the count-weighted mean of |gap| over the bins;
  with 10 bins the bias report's gender_ece).
- band_what_if: what a reviewer gets at the plain threshold, with the Uncertain band (agegender.labels:
  P(female) inside [lo, hi] reads "Uncertain", and those faces are not decided), and at each band edge used as
  the threshold: the share abstained, accuracy on the faces decided, and both misgendering rates, each with a
  Wilson interval; and the gap between the groups the band abstains on most and least (What-If Tool and
  Fairness Indicators style, for the band rather than one threshold).
- band_following / moved_bands: the band moves with the threshold, keeping its place around it (shifted back
  inside [0, 1] at the ends, its width kept), so that a what-if always has a band that holds its threshold;
  threshold_within: the threshold moved into a band moved off it.
- threshold_sweep: per group, the band's figures (women called men, men called women, the share abstained)
  at every threshold of a grid, the band moving with the threshold: band_what_if's band setting, vectorised.

Every result is DataFrames with the bias report's metric names where the figure is one of its metrics
(gender_auc, gender_ece, gender_accuracy, female_as_male, male_as_female), so agegender.fairness.tables formats them;
summary() gives all three as JSON. numpy, pandas and scipy only: no model is loaded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from ..labels import DECISION, DEFAULT_BAND, GENDERS
from ..predictions import DERIVED_GROUP, IS_FEMALE, is_female
from . import stats
from .groups import (
    MIN_COUNT,
    Z95,
    found_mask,
    group_names,
    group_positions,
    grouping_columns,
    parse_grouping,
    prepare,
    wilson,
)

OVERALL = "overall"  # the group name of the whole table, listed first
RELIABILITY_BINS = 10
# Column names that are none of the bias report's metrics, and the kind agegender.fairness.tables writes them as.
FORMATS = {**{f"abstained{e}": "share" for e in ("", "_lo", "_hi")},
           **{f"share_female{e}": "share" for e in ("", "_lo", "_hi")},
           "threshold": "p_female", "band_lo": "p_female", "band_hi": "p_female",
           "lowest": "share", "highest": "share", "gap": "share", "gap_lo": "share", "gap_hi": "share",
           "detectable": "share"}
# band_what_if's settings, in the order listed.
PLAIN, BANDED, LOWER_EDGE, UPPER_EDGE = "threshold", "band", "lower edge", "upper edge"

ERR_BAND = "the band [{lo}, {hi}] must hold the threshold {threshold}, with 0 <= lo <= hi <= 1"
ERR_RANGE = "the threshold {threshold} and the band [{lo}, {hi}] must lie in [0, 1], with lo <= hi"
# What the Gender threshold page says when one slider moved the other.
BAND_MOVED = ("The Uncertain band moved with the threshold, keeping its place around it: now [{lo:.2f}, {hi:.2f}] "
              "(was [{was_lo:.2f}, {was_hi:.2f}]).")
THRESHOLD_MOVED = "The threshold moved into the Uncertain band: now {threshold:.2f} (was {was:.2f})."
SWEEP_RATES = ("female_as_male", "male_as_female", "abstained")  # threshold_sweep's rates, in the chart's order
NO_SCORES = ("No face in this table has both a known gender and a P(female): nothing to draw a ROC curve or "
             "a reliability diagram of.")
ONE_CLASS = "only {gender} faces: no ROC curve or AUC"


@dataclass(frozen=True)
class Scored:
    """The faces scored (found, gender known, P(female) known) and their groups: (name, positions), the
    whole table first as OVERALL."""

    female: np.ndarray
    p_female: np.ndarray
    groups: list[tuple[str, np.ndarray]]
    columns: list[str]


def scored_mask(df: pd.DataFrame) -> np.ndarray:
    """Rows with a face found, a gender label and a finite P(female): the rows every figure here is on."""
    p = pd.to_numeric(df["p_female"], errors="coerce").to_numpy(np.float64)
    return found_mask(df) & df["gender"].astype(str).isin(GENDERS).to_numpy() & np.isfinite(p)


def scored(df: pd.DataFrame, grouping: str | None) -> Scored:
    """The rows scored_mask keeps of a predictions table (prepared here when it is not yet), by ``grouping``.
    Raises ValueError for a grouping the table has not."""
    table = df if DERIVED_GROUP in df else prepare(df)
    columns = parse_grouping(grouping, grouping_columns(table)) if grouping else []
    t = table[scored_mask(table)]
    groups = [(OVERALL, np.arange(len(t)))]
    if columns:
        listed = group_positions(t, columns)
        names = group_names(pd.DataFrame([k for k, _ in listed], columns=columns), columns)
        groups += [(name, where) for name, (_, where) in zip(names, listed, strict=True)]
    female = t[IS_FEMALE].to_numpy(bool) if IS_FEMALE in t else is_female(t["gender"])
    return Scored(female, t["p_female"].to_numpy(np.float64), groups, columns)


# ---- ROC and AUC -------------------------------------------------------------------------------------------

def auc_delong(female: np.ndarray, p_female: np.ndarray, z: float = Z95) -> tuple[float, float, float]:
    """(AUC, lo, hi): the Mann-Whitney AUC of P(female) for women against men (ties count half) and DeLong's
    interval; NaN AUC with one gender only, NaN interval with fewer than two of either."""
    female = np.asarray(female, bool)
    p = np.asarray(p_female, np.float64)
    pos, neg = p[female], p[~female]
    m, n = len(pos), len(neg)
    if m == 0 or n == 0:
        return np.nan, np.nan, np.nan
    both = rankdata(np.concatenate([pos, neg]))
    auc = (both[:m].sum() - m * (m + 1) / 2) / (m * n)
    if m < 2 or n < 2:
        return float(auc), np.nan, np.nan
    v10 = (both[:m] - rankdata(pos)) / n  # per woman: the share of men she outranks
    v01 = 1 - (both[m:] - rankdata(neg)) / m  # per man: the share of women who outrank him
    se = np.sqrt(v10.var(ddof=1) / m + v01.var(ddof=1) / n)
    return float(auc), float(max(0.0, auc - z * se)), float(min(1.0, auc + z * se))


def roc_curve(female: np.ndarray, p_female: np.ndarray) -> pd.DataFrame:
    """threshold, fpr, tpr at each distinct P(female) (called female at P >= threshold), from (0, 0) at an
    infinite threshold to (1, 1); empty with one gender only."""
    female = np.asarray(female, bool)
    m = int(female.sum())
    n = len(female) - m
    if m == 0 or n == 0:
        return pd.DataFrame(columns=["threshold", "fpr", "tpr"], dtype=float)
    order = np.argsort(-np.asarray(p_female, np.float64), kind="stable")
    p, y = np.asarray(p_female, np.float64)[order], female[order]
    last = np.r_[np.flatnonzero(np.diff(p) != 0), len(p) - 1]  # the last face at each distinct P
    tp = np.cumsum(y)[last]
    return pd.DataFrame({"threshold": np.r_[np.inf, p[last]], "fpr": np.r_[0, (last + 1 - tp) / n],
                         "tpr": np.r_[0, tp / m]})


@dataclass(frozen=True)
class Roc:
    by_group: pd.DataFrame  # group, n, n_female, n_male, gender_auc(_lo, _hi), note
    curves: pd.DataFrame  # group, threshold, fpr, tpr


def roc_by_group(df: pd.DataFrame, grouping: str | None) -> Roc:
    """ROC curve and AUC with DeLong's interval, overall and per group (see the module's docstring)."""
    s = scored(df, grouping)
    rows, curves = [], []
    for name, where in s.groups:
        y, p = s.female[where], s.p_female[where]
        auc, lo, hi = auc_delong(y, p)
        n_female = int(y.sum())
        one = [g for g, k in zip(GENDERS, (len(y) - n_female, n_female), strict=True) if k] if len(y) else []
        rows.append({"group": name, "n": len(y), "n_female": n_female, "n_male": len(y) - n_female,
                     "gender_auc": auc, "gender_auc_lo": lo, "gender_auc_hi": hi,
                     "note": ONE_CLASS.format(gender=one[0]) if len(one) == 1 else ""})
        curves.append(roc_curve(y, p).assign(group=name))
    curve_frame = pd.concat(curves, ignore_index=True)[["group", "threshold", "fpr", "tpr"]]
    return Roc(pd.DataFrame(rows), curve_frame)


# ---- reliability -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Reliability:
    by_group: pd.DataFrame  # group, n, gender_ece
    bins: pd.DataFrame  # group, bin, bin_lo, bin_hi, n, p_female (mean), share_female(_lo, _hi)


def reliability_by_group(df: pd.DataFrame, grouping: str | None, bins: int = RELIABILITY_BINS) -> Reliability:
    """Per group and equal-width bin of P(female) (the last bin holds 1.0): the faces in it, their mean
    P(female) and the share of them who are women with a Wilson interval; per group the ECE. Empty bins are
    left out."""
    s = scored(df, grouping)
    index = np.minimum((s.p_female * bins).astype(np.int64), bins - 1)
    rows, summary = [], []
    for name, where in s.groups:
        b = index[where]
        count = np.bincount(b, minlength=bins)
        sum_p = np.bincount(b, weights=s.p_female[where], minlength=bins)
        women = np.bincount(b, weights=s.female[where].astype(float), minlength=bins).round().astype(int)
        full = np.flatnonzero(count)
        gaps = np.abs(sum_p - women)[full]  # count x |mean P - share female|
        summary.append({"group": name, "n": len(where),
                        "gender_ece": gaps.sum() / len(where) if len(where) else np.nan})
        for i in full:
            lo, hi = wilson(int(women[i]), int(count[i]))
            rows.append({"group": name, "bin": int(i), "bin_lo": i / bins, "bin_hi": (i + 1) / bins,
                         "n": int(count[i]), "p_female": sum_p[i] / count[i], "share_female": women[i] / count[i],
                         "share_female_lo": lo, "share_female_hi": hi})
    columns = ["group", "bin", "bin_lo", "bin_hi", "n", "p_female", "share_female", "share_female_lo",
               "share_female_hi"]
    return Reliability(pd.DataFrame(summary), pd.DataFrame(rows, columns=columns))


# ---- the Uncertain band's what-if --------------------------------------------------------------------------

@dataclass(frozen=True)
class WhatIf:
    by_group: pd.DataFrame  # group, setting, threshold, n, n_decided, abstained, gender_accuracy, ... (_lo, _hi)
    gap: dict  # the groups abstained on most and least (among those with n >= min_count), and the gap


def _rate(name: str, k: int, n: int) -> dict:
    lo, hi = wilson(k, n)
    return {name: k / n if n else np.nan, f"{name}_lo": lo, f"{name}_hi": hi}


def _setting(female: np.ndarray, p: np.ndarray, threshold: float, band: tuple[float, float] | None) -> dict:
    """One group's figures when faces inside ``band`` (None: no band) are not decided and the others are called
    female at P(female) >= threshold."""
    undecided = (p >= band[0]) & (p <= band[1]) if band else np.zeros(len(p), bool)
    called = p >= threshold
    decided = ~undecided
    women, men = decided & female, decided & ~female
    abstained = _rate("abstained", int(undecided.sum()), len(p))
    if band is None:  # nothing abstains by design: no interval to give
        abstained.update(abstained_lo=np.nan, abstained_hi=np.nan)
    return {"n": len(p), "n_decided": int(decided.sum()), **abstained,
            **_rate("gender_accuracy", int((decided & (called == female)).sum()), int(decided.sum())),
            **_rate("female_as_male", int((women & ~called).sum()), int(women.sum())),
            **_rate("male_as_female", int((men & called).sum()), int(men.sum()))}


def check_band(threshold: float, band: tuple[float, float]) -> tuple[float, float]:
    lo, hi = map(float, band)
    if not 0 <= lo <= threshold <= hi <= 1:
        raise ValueError(ERR_BAND.format(lo=lo, hi=hi, threshold=threshold))
    return lo, hi


def _in_range(threshold: float, band: tuple[float, float]) -> tuple[float, float, float]:
    t, (lo, hi) = float(threshold), map(float, band)
    if not (0 <= t <= 1 and 0 <= lo <= hi <= 1):
        raise ValueError(ERR_RANGE.format(threshold=threshold, lo=lo, hi=hi))
    return t, lo, hi


def moved_bands(thresholds, band: tuple[float, float], previous: float) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) arrays: where ``band``, which holds ``previous``, goes when the threshold moves from ``previous``
    to each of ``thresholds`` (in [0, 1]): moved by as much, and shifted back inside [0, 1] where it would
    cross an end, its width kept. Each band holds its threshold. Raises ValueError(ERR_BAND) for a band that
    does not hold ``previous``."""
    lo, hi = check_band(previous, band)
    t = np.asarray(thresholds, np.float64)
    width = hi - lo
    new_lo, new_hi = lo + (t - previous), hi + (t - previous)  # exactly the band where t is previous
    new_lo, new_hi = np.where(new_lo < 0, 0.0, new_lo), np.where(new_lo < 0, width, new_hi)
    new_lo, new_hi = np.where(new_hi > 1, 1.0 - width, new_lo), np.where(new_hi > 1, 1.0, new_hi)
    # rounding at an end can leave the threshold a hair outside: widen by that hair rather than fail
    return np.minimum(new_lo, t), np.maximum(new_hi, t)


def band_following(threshold: float, band: tuple[float, float], previous: float | None = None,
                   decimals: int | None = None) -> tuple[float, float]:
    """The band to use with ``threshold``: ``band`` moved with the threshold from ``previous`` (moved_bands).
    Without a previous threshold the band held, a band that holds ``threshold`` stays, and one that does not
    moves as if the threshold had been at its centre. ``decimals``: edges rounded to a slider's steps (0.3,
    not 0.30000000000000004), still holding the threshold. Raises ValueError(ERR_RANGE) outside [0, 1]."""
    t, lo, hi = _in_range(threshold, band)
    if previous is None or not lo <= previous <= hi:
        if lo <= t <= hi:
            return lo, hi
        previous = (lo + hi) / 2
    new_lo, new_hi = (float(x[0]) for x in moved_bands([t], (lo, hi), previous))
    if decimals is not None:
        new_lo, new_hi = min(round(new_lo, decimals), t), max(round(new_hi, decimals), t)
    return new_lo, new_hi


def threshold_within(threshold: float, band: tuple[float, float]) -> float:
    """The threshold moved as little as it takes to lie in ``band``: for a band moved off the threshold."""
    t, lo, hi = _in_range(threshold, band)
    return min(max(t, lo), hi)


def band_what_if(df: pd.DataFrame, grouping: str | None, threshold: float = DECISION,
                 band: tuple[float, float] = DEFAULT_BAND, min_count: int = MIN_COUNT) -> WhatIf:
    """Per group (and overall) and setting: the plain threshold, the band (its figures on the faces decided),
    and each band edge as the threshold. Raises ValueError(ERR_BAND) for a band that does not hold the
    threshold."""
    lo, hi = check_band(threshold, band)
    s = scored(df, grouping)
    settings = [(PLAIN, threshold, None), (BANDED, threshold, (lo, hi)), (LOWER_EDGE, lo, None),
                (UPPER_EDGE, hi, None)]
    rows = []
    for name, where in s.groups:
        y, p = s.female[where], s.p_female[where]
        for setting, t, b in settings:
            rows.append({"group": name, "setting": setting, "threshold": t, **_setting(y, p, t, b),
                         "too_small": len(where) < min_count})
    table = pd.DataFrame(rows)
    return WhatIf(table, _abstention_gap(_banded(table), min_count))


def _banded(table: pd.DataFrame) -> pd.DataFrame:
    """The band's rows of a what-if table, one per group, the overall row left out."""
    return table[(table["setting"] == BANDED) & (table["group"] != OVERALL)].reset_index(drop=True)


def _abstention_gap(banded: pd.DataFrame, min_count: int) -> dict:
    """The groups the band abstains on most and least among those with n >= min_count, and the difference
    with its 95% interval (agegender.fairness.stats: simultaneous Wilson intervals over the groups), the p-value of
    "every group abstains as often" (chi-square) and the smallest gap the groups could show at 80% power."""
    judged = banded[~banded["too_small"]]
    out = {"min_count": min_count, "groups_judged": len(judged)}
    if len(judged) < 2:
        return {**out, **{f"{end}{e}": np.nan for end in ("highest", "lowest") for e in ("", "_lo", "_hi")},
                "highest_group": None, "lowest_group": None, "gap": np.nan,
                **dict.fromkeys(("gap_lo", "gap_hi", "p_value", "detectable"), np.nan), "reading": stats.UNTESTED_WORDS}
    top, bottom = judged.loc[judged["abstained"].idxmax()], judged.loc[judged["abstained"].idxmin()]
    for end, row in (("highest", top), ("lowest", bottom)):
        out.update({f"{end}_group": row["group"], **{f"{end}{e}": float(row[f"abstained{e}"])
                                                     for e in ("", "_lo", "_hi")}})
    n = judged["n"].to_numpy(np.float64)
    k = np.round(judged["abstained"].to_numpy(np.float64) * n)
    lo, hi = stats.gap_interval(*stats.wilson_simultaneous(k, n))
    p = stats.shares_p(k, n)
    small = np.sort(n)[:2]
    share = float(k.sum() / n.sum())
    detectable = stats.detectable_gap(stats.share_se(share, small[0]), stats.share_se(share, small[1]))
    return {**out, "gap": out["highest"] - out["lowest"], "gap_lo": lo, "gap_hi": hi, "p_value": p,
            "detectable": detectable, "reading": stats.reading(p, f"{detectable * 100:.1f} pp")}


def abstention(what_if: WhatIf) -> pd.DataFrame:
    """One row per group (overall left out) with the band's abstained share and its interval: the bar chart's."""
    return _banded(what_if.by_group)


# ---- the band's figures against the threshold --------------------------------------------------------------

def sweep_grid(threshold: float, points: int = 101) -> np.ndarray:
    """0 to 1 in ``points`` even steps, and ``threshold`` itself in place of a step within a hair of it (so that
    the chart's marker sits on a computed point, and 0.35 is not beside 0.35000000000000003)."""
    grid = np.linspace(0.0, 1.0, points)
    return np.union1d(grid[~np.isclose(grid, threshold, rtol=0, atol=1e-9)], [float(threshold)])


def _shares(k: np.ndarray, n: np.ndarray) -> np.ndarray:
    k, n = np.asarray(k, np.float64), np.broadcast_to(np.asarray(n, np.float64), np.shape(k))
    return np.divide(k, n, out=np.full(np.shape(k), np.nan), where=n > 0)


def threshold_sweep(df: pd.DataFrame, grouping: str | None, threshold: float = DECISION,
                    band: tuple[float, float] = DEFAULT_BAND, grid=None) -> pd.DataFrame:
    """Per group (overall first) and threshold t of ``grid`` (default sweep_grid(threshold)): the band moved
    with the threshold from ``threshold`` (moved_bands: at ``threshold`` it is ``band``), the share of faces
    inside it (abstained), and on the faces outside it the share of women called men (P < band_lo) and of men
    called women (P > band_hi): band_what_if's band setting at each t, computed at once from sorted scores.
    NaN where a group has no decided face of that gender. Raises ValueError(ERR_BAND) as band_what_if."""
    lo_now, hi_now = check_band(threshold, band)
    t = sweep_grid(threshold) if grid is None else np.asarray(grid, np.float64)
    lo, hi = moved_bands(t, (lo_now, hi_now), threshold)
    s = scored(df, grouping)
    frames = []
    for name, where in s.groups:
        female, p = s.female[where], s.p_female[where]
        women, men = np.sort(p[female]), np.sort(p[~female])
        women_below, women_above = np.searchsorted(women, lo, "left"), len(women) - np.searchsorted(women, hi, "right")
        men_below, men_above = np.searchsorted(men, lo, "left"), len(men) - np.searchsorted(men, hi, "right")
        women_decided, men_decided = women_below + women_above, men_below + men_above
        frames.append(pd.DataFrame({
            "group": name, "threshold": t, "band_lo": lo, "band_hi": hi, "n": len(p),
            "n_female": len(women), "n_male": len(men),
            "female_as_male": _shares(women_below, women_decided), "male_as_female": _shares(men_above, men_decided),
            "abstained": _shares(len(p) - women_decided - men_decided, len(p))}))
    return pd.concat(frames, ignore_index=True)


# ---- JSON --------------------------------------------------------------------------------------------------

def _records(frame: pd.DataFrame) -> list[dict]:
    """Rows as plain JSON values: NaN and infinities become null."""
    return json.loads(frame.replace([np.inf, -np.inf], np.nan).to_json(orient="records"))


def summary(df: pd.DataFrame, grouping: str | None, threshold: float = DECISION,
            band: tuple[float, float] = DEFAULT_BAND, bins: int = RELIABILITY_BINS,
            min_count: int = MIN_COUNT) -> dict:
    """All three views as one json.dumps-able dict (the curves and bins left out: the figures a report states)."""
    df = df if DERIVED_GROUP in df else prepare(df)  # once, not per view
    what_if = band_what_if(df, grouping, threshold, band, min_count)
    rel = reliability_by_group(df, grouping, bins)
    return {"grouping": grouping, "positive": GENDERS[1], "threshold": threshold, "band": list(band),
            "auc_interval": "DeLong 95%", "reliability_bins": bins,
            "roc": _records(roc_by_group(df, grouping).by_group),
            "reliability": _records(rel.by_group), "reliability_bins_table": _records(rel.bins),
            "what_if": _records(what_if.by_group), "abstention_gap": _records(pd.DataFrame([what_if.gap]))[0]}
