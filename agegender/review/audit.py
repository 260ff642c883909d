"""Label audit of a predictions table: for every face, how likely its label is wrong, and why.

Gender by confident learning (per-class thresholds on P(female)), age by the label's tail probability under the
model's own age distribution (a Gaussian tail of the residual for a regression head); both kinds ranked in one
list by their p-value within the set (``p_set``). From a predictions table with its ``age_label_tail`` the audit
runs no model. What a report leaves out of its figures (the modes) and the suspects' share by group are here too.
Scoring images with checkpoints and the command (python -m agegender.audit) are review.audit_run. The rules, why
the ranking is within the set, and the measured figures: docs/audit.md.
"""

from __future__ import annotations

from math import sqrt
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.special import erfc

# torch-free at import and in every function: the bias report audits a predictions table through this module
# without loading a model; what needs torch (checkpoint, evaluate, runtime) is review.audit_run's
from ..fairness.groups import wilson
from ..labels import AGE_BUCKET_EDGES, GENDERS
from ..meta import read_meta
from ..predictions import LABEL_TAIL, age_tail, complete, is_female, label_years, year_quantile
from .verdicts import CONFIRMED, WRONG, label_keys

GENDER, AGE = "gender", "age"
DEFAULT_LEVEL = 0.01  # an age label with a tail probability at or below this is a suspect
MIN_SPREAD_N = 30  # regression fallback: an age bucket with fewer faces takes the whole set's spread
# What a report leaves out of its figures (left_out): nothing (the default); only the labels a reviewer marked
# "label wrong"; or, as a labelled what-if, every suspect not confirmed. An unreviewed suspect is a face the model
# disagrees with, often one it gets wrong (a woman it confidently calls a man): leaving it out by default would
# hide the very errors a bias review looks for.
ALL_FACES, CONFIRMED_ERRORS, ALL_SUSPECTS = "all", "confirmed", "suspects"
LEAVE_OUT = (ALL_FACES, CONFIRMED_ERRORS, ALL_SUSPECTS)
MODE_LABELS = {ALL_FACES: "All faces", CONFIRMED_ERRORS: "Without confirmed label errors",
               ALL_SUSPECTS: "Without all suspects (what-if)"}
SHARE_COUNTS = ("suspects", "gender_suspects", "age_suspects", "unreviewed", "wrong", "left_out")
AUDIT_COLUMNS = ("suspect", "flagged", "score", "p_label", "p_set", "reason", "p_gender_label", "age_tail",
                 "age_median")

# Error messages are constants so tests can assert them word for word.
NOTE_NO_TAILS = ("{what} of {path} carry no age_label_tail (written before it existed): the age distributions come "
                 "from the model; run python -m agegender.evaluate again and the audit needs the predictions alone")
ERR_MODE = "unknown mode {mode!r}: use one of {known}"


class AuditError(ValueError):
    """Input the audit cannot use; the message says why and what to do."""


def distribution_head(folder: str | Path) -> bool:
    """Whether a checkpoint's age head is a distribution, from its meta.json alone (no model loaded)."""
    return int(read_meta(folder).get("age_bins", 0) or 0) > 0


def _auditable(t: pd.DataFrame) -> np.ndarray:
    """The rows of a completed table the audit scores: a face found, with both predictions."""
    return (t["found"].to_numpy(bool) & np.isfinite(t["p_female"].to_numpy(np.float64))
            & np.isfinite(t["pred_age"].to_numpy(np.float64)))


def has_label_tails(table: pd.DataFrame) -> bool:
    """Whether every row the audit scores carries its age tail (LABEL_TAIL, written by evaluation with a DLDL
    head): then the audit needs the predictions alone."""
    t = complete(table)
    tails = t[LABEL_TAIL].to_numpy(np.float64)[_auditable(t)]
    return len(tails) > 0 and bool(np.isfinite(tails).all())


def residual_spread(pred: np.ndarray, target: np.ndarray, edges=AGE_BUCKET_EDGES) -> np.ndarray:
    """Per face, 1.4826 x the median absolute residual (pred - target) of the faces predicted in its age
    bucket; the whole set's where a bucket has fewer than MIN_SPREAD_N faces; at least one year."""
    res = np.abs(pred - target)
    out = np.full(len(pred), 1.4826 * np.median(res) if len(res) else 1.0)
    bucket = np.searchsorted(np.asarray(edges), pred, side="right")
    for b in np.unique(bucket):
        inside = bucket == b
        if inside.sum() >= MIN_SPREAD_N:
            out[inside] = 1.4826 * np.median(res[inside])
    return np.maximum(out, 1.0)


def regression_tail(pred: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                    exact: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(two-sided Gaussian tail of the distance from the prediction to the label, spread): the fallback of a
    head without a distribution. A bin [lo, hi] holds lo <= age < hi + 1; its middle stands for the label in
    the spread (an open bin's: lo + 5)."""
    top = np.where(exact, hi, hi + 1)
    middle = np.where(exact, lo, np.where(np.isfinite(hi), (lo + top) / 2, lo + 5))
    spread = residual_spread(pred, middle)
    d = np.maximum(0.0, np.maximum(lo - pred, pred - top))
    return erfc(d / spread / sqrt(2)), spread


def gender_thresholds(female: np.ndarray, p_female: np.ndarray) -> dict[str, float]:
    """Confident learning's per-class thresholds: t_j = the mean P(j) over the images labelled j (NaN for a
    class with no image)."""
    p = np.asarray(p_female, np.float64)
    female = np.asarray(female, bool)
    return {GENDERS[0]: float(np.mean(1 - p[~female])) if (~female).any() else np.nan,
            GENDERS[1]: float(np.mean(p[female])) if female.any() else np.nan}


def gender_suspects(female: np.ndarray, p_female: np.ndarray, t: dict[str, float]) -> np.ndarray:
    """Labelled i, P(j) >= t_j for the other class j, and j wins when both classes pass their thresholds."""
    p = np.asarray(p_female, np.float64)
    p_label, p_other = np.where(female, p, 1 - p), np.where(female, 1 - p, p)
    t_label = np.where(female, t[GENDERS[1]], t[GENDERS[0]])
    t_other = np.where(female, t[GENDERS[0]], t[GENDERS[1]])
    with np.errstate(invalid="ignore"):
        return (p_other >= t_other) & ((p_label < t_label) | (p_other > p_label))


# ---- the audit table ------------------------------------------------------------------------------------

def within_set(p: np.ndarray) -> np.ndarray:
    """Each value's empirical p-value among ``p``: the share of values at most as large (NaN stays NaN)."""
    p = np.asarray(p, np.float64)
    out = np.full(len(p), np.nan)
    ok = np.isfinite(p)
    if ok.any():
        v = np.sort(p[ok])
        out[ok] = np.searchsorted(v, p[ok], side="right") / len(v)
    return out


def audit_table(table: pd.DataFrame, probs: np.ndarray | None = None, level: float = DEFAULT_LEVEL) -> pd.DataFrame:
    """The predictions table's rows with a prediction, with the audit's columns (AUDIT_COLUMNS), ranked: the
    suspects (``flagged``) first, each group by p_set (within_set), smallest first. The age tail: from ``probs``,
    each table row's age distribution (age_distributions; rows without a face are not read); else the table's own
    LABEL_TAIL when every scored row has one (has_label_tails: the same figure, written by evaluation); else
    the regression fallback."""
    t = complete(table)
    stored = probs is None and has_label_tails(t)
    rows = np.flatnonzero(_auditable(t))
    t = t.iloc[rows].reset_index(drop=True)
    female, pf = is_female(t["gender"]), t["p_female"].to_numpy(np.float64)
    thresholds = gender_thresholds(female, pf)
    p_gender = np.where(female, pf, 1 - pf)
    g_flag = gender_suspects(female, pf, thresholds)
    lo, hi, exact = label_years(t)
    pred = t["pred_age"].to_numpy(np.float64)
    if probs is not None:
        probs = np.asarray(probs, np.float64)[rows]
        tail, median = age_tail(probs, lo, hi), year_quantile(probs, 0.5)
        a, b = year_quantile(probs, 0.05), year_quantile(probs, 0.95)
        model = [f"the model's median {m:.0f} y, 90% within {x:.0f}-{y:.0f} y"
                 for m, x, y in zip(median, a, b, strict=True)]
    elif stored:  # the same tail, written by evaluation; the predictions table keeps no median
        tail, median = t[LABEL_TAIL].to_numpy(np.float64), np.full(len(t), np.nan)
        ends = t[["pred_age_lo", "pred_age_hi"]].to_numpy(np.float64)
        model = [f"predicted {p:.1f} y" + (f" ({x:.0f}-{y:.0f})" if np.isfinite(x) and np.isfinite(y) else "")
                 for p, (x, y) in zip(pred, ends, strict=True)]
    else:
        (tail, sd), median = regression_tail(pred, lo, hi, exact), pred
        model = [f"predicted {p:.1f} y, spread {s:.1f} y" for p, s in zip(pred, sd, strict=True)]
    a_flag = tail <= level
    set_gender, set_age = within_set(p_gender), within_set(tail)
    gender_first = np.where(g_flag != a_flag, g_flag, set_gender <= set_age)
    p_label = np.where(gender_first, p_gender, tail)
    p_set = np.where(gender_first, set_gender, set_age)
    why = _reasons(t, gender_first, (g_flag, a_flag), thresholds, tail, model)
    out = t.assign(suspect=np.where(gender_first, GENDER, AGE), flagged=g_flag | a_flag, score=1 - p_label,
                   p_label=p_label, p_set=p_set, reason=why, p_gender_label=p_gender, age_tail=tail,
                   age_median=median)
    out = out.iloc[np.lexsort((p_label, p_set, ~out["flagged"].to_numpy()))].reset_index(drop=True)
    out.attrs.update(thresholds=thresholds, level=level,
                     age_method="residual" if probs is None and not stored else "distribution",
                     age_source="model" if probs is not None else "predictions")
    return out


def audit_from_predictions(table: pd.DataFrame, checkpoint: str | Path | None = None,
                           level: float = DEFAULT_LEVEL) -> pd.DataFrame | None:
    """audit_table of a predictions table when it needs no model: the table carries its label tails, or the
    checkpoint (its meta.json read, no model loaded) has a regression head; None when it would need the model."""
    if has_label_tails(table) or (checkpoint is not None and not distribution_head(checkpoint)):
        return audit_table(table, None, level)
    return None


def audit_needs_model(table: pd.DataFrame, checkpoint: str | Path) -> str:
    """Why the audit of a checkpoint's predictions table would need the model ("" when it needs none)."""
    if has_label_tails(table) or not distribution_head(checkpoint):
        return ""
    return NOTE_NO_TAILS.format(what="the predictions", path=checkpoint)


def _reasons(t, gender_first, flags, thresholds, tail, model) -> list[str]:
    """Why each row is (or would be) a suspect: its kind's figures first, then the other kind's when that
    kind flags it too."""
    out = []
    for i, r in enumerate(t.itertuples(index=False)):
        other = GENDERS[1 - GENDERS.index(r.gender)]
        p_other = r.p_female if other == GENDERS[1] else 1 - r.p_female
        gender = (f"labelled {r.gender}; P({other}) {p_other:.4f}, threshold {thresholds[other]:.3f} (the mean "
                  f"P({other}) of faces labelled {other}): margin {p_other - thresholds[other]:+.3f}")
        label = f"{r.age:.0f} y" if np.isfinite(r.age) else f"in {r.age_bin}"
        age = f"labelled {label}; {model[i]}; P(at least this far) {tail[i]:.2g}"
        first, second = (gender, age) if gender_first[i] else (age, gender)
        out.append(f"{first} | also {second}" if flags[0][i] and flags[1][i] else first)
    return out


def suspects(audit: pd.DataFrame, threshold: float | None = None) -> np.ndarray:
    """Which audit rows are suspects: with ``threshold`` None the audit's own rules (``flagged``), else every
    row whose score reaches it, of either kind."""
    return audit["flagged"].to_numpy(bool) if threshold is None else audit["score"].to_numpy(np.float64) >= threshold


def counts(audit: pd.DataFrame, threshold: float | None = None) -> dict[str, int]:
    s = suspects(audit, threshold)
    return {GENDER: int((s & (audit["suspect"] == GENDER)).sum()), AGE: int((s & (audit["suspect"] == AGE)).sum()),
            "total": int(s.sum())}


def left_out(audit: pd.DataFrame, mode: str, threshold: float | None = None) -> np.ndarray:
    """Which audit rows a report leaves out of its figures in ``mode`` (LEAVE_OUT): ALL_FACES none;
    CONFIRMED_ERRORS the labels a reviewer marked "label wrong"; ALL_SUSPECTS, a what-if, those and every
    suspect (suspects()) not reviewed "label confirmed", unreviewed ones included. Pass an audit with its
    verdicts (review.with_reviews); without them no label counts as reviewed."""
    if mode not in LEAVE_OUT:
        raise ValueError(ERR_MODE.format(mode=mode, known=", ".join(LEAVE_OUT)))
    verdict = (audit["verdict"] if "verdict" in audit else pd.Series("", index=audit.index)).to_numpy()
    if mode == ALL_FACES:
        return np.zeros(len(audit), bool)
    wrong = verdict == WRONG
    if mode == CONFIRMED_ERRORS:
        return wrong
    return wrong | (suspects(audit, threshold) & (verdict != CONFIRMED))


def leave_out(df: pd.DataFrame, audit: pd.DataFrame, mode: str, threshold: float | None = None) -> pd.DataFrame:
    """The predictions table ``df`` without the rows left_out() names for ``mode`` (matched by image and
    label), in the table's order."""
    gone = set(label_keys(audit[left_out(audit, mode, threshold)]))
    return df[~label_keys(df).isin(gone).to_numpy()]


def without_suspects(df: pd.DataFrame, audit: pd.DataFrame, threshold: float | None = None) -> pd.DataFrame:
    """The what-if leave_out(df, audit, ALL_SUSPECTS, threshold): every suspect but the confirmed ones out,
    unreviewed ones too, and the rows reviewed "label wrong"."""
    return leave_out(df, audit, ALL_SUSPECTS, threshold)


def suspect_share_by_group(df: pd.DataFrame, audit: pd.DataFrame, columns: list[str],
                           threshold: float | None = None, mode: str = ALL_SUSPECTS) -> pd.DataFrame:
    """Per group of each column of ``df``: the audited faces (n); its suspects (of which gender and age
    suspects, and how many nobody has reviewed); the labels reviewed "label wrong"; how many faces ``mode``
    leaves out (left_out()), their share and its Wilson 95% interval. Every count column is a count of faces."""
    keys = label_keys(df)
    audited = keys.isin(set(label_keys(audit))).to_numpy()
    akeys = label_keys(audit)
    verdict = audit["verdict"] if "verdict" in audit else pd.Series("", index=audit.index)
    flagged = suspects(audit, threshold)
    sets = {"suspects": set(akeys[flagged]), "gender_suspects": set(akeys[flagged & (audit["suspect"] == GENDER)]),
            "age_suspects": set(akeys[flagged & (audit["suspect"] == AGE)]),
            "unreviewed": set(akeys[flagged & (verdict == "").to_numpy()]),
            "wrong": set(akeys[(verdict == WRONG).to_numpy()]),
            "left_out": set(akeys[left_out(audit, mode, threshold)])}
    rows = []
    for col in columns:
        for value, g in df[audited].groupby(col, observed=True, sort=True):
            k = keys[g.index]
            counts_ = {name: int(k.isin(s).sum()) for name, s in sets.items()}
            lo, hi = wilson(counts_["left_out"], len(g))
            rows.append({"column": col, "group": str(value), "n": len(g), **counts_,
                         "share": counts_["left_out"] / len(g), "share_lo": lo, "share_hi": hi})
    return pd.DataFrame(rows, columns=["column", "group", "n", *SHARE_COUNTS, "share", "share_lo", "share_hi"])
