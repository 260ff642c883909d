"""Age-threshold errors per group: at an age threshold T (13, 16, 18, 21, 25 by default), the share of true minors
(true age < T) the model puts at or over the decision threshold (false adult) and of true adults (true age >= T) it
puts under it (false minor), overall and per group, with Wilson 95% intervals.

The decision threshold is T plus a buffer ("predict 25+ to pass 18": buffer 7); the truth threshold stays T. A buffer
trades false adults for false minors. The true side of T comes from the exact age where there is one, else from the
age bin where the whole bin lies on one side (FairFace's 10-19 straddles 13, 16 and 18: those faces are counted in
``n_unknown``, not guessed). Faces without a face found have no prediction and are left out.

threshold_errors() is the frame the bias page shows; section() the report's JSON (``age_thresholds``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..predictions import BIN_HI, BIN_LO
from .groups import found_mask, group_positions, grouping_columns, groupings_for, parse_grouping, prepared, wilson

# the ages rules draw lines at: 13 (COPPA, most sign-ups), 16 (GDPR consent in many states), 18 (majority),
# 21 (US alcohol), 25 (retailers' "Challenge 25")
DEFAULT_THRESHOLDS = (13, 16, 18, 21, 25)
DEFAULT_BUFFER = 0
OVERALL = "overall"  # the grouping (and its one group's name) of the whole table
COLUMNS = ("threshold", "decision", "grouping", "group",
           "n_minors", "false_adults", "false_adult_rate", "false_adult_rate_lo", "false_adult_rate_hi",
           "n_adults", "false_minors", "false_minor_rate", "false_minor_rate_lo", "false_minor_rate_hi", "n_unknown")
SHARES = ("false_adult_rate", "false_minor_rate")
SHARE_COLUMNS = tuple(f"{s}{end}" for s in SHARES for end in ("", "_lo", "_hi"))  # shares of faces, for display

ERR_THRESHOLDS = "age thresholds {text!r}: give whole years above 0 separated by commas, e.g. 13,16,18,21,25"
ERR_BUFFER = ("age buffer {buffer!r}: give whole years at or above 0 (the decision threshold is the age threshold "
              "plus the buffer)")


def parse_thresholds(text: str) -> tuple[int, ...]:
    """"13,16,18" as (13, 16, 18), in the order given, each once; anything but whole years above 0: ValueError."""
    try:
        values = tuple(dict.fromkeys(int(v) for v in text.split(",") if v.strip()))
    except ValueError:
        raise ValueError(ERR_THRESHOLDS.format(text=text)) from None
    if not values or min(values) <= 0:
        raise ValueError(ERR_THRESHOLDS.format(text=text))
    return values


def check(thresholds, buffer) -> None:
    """ValueError (ERR_THRESHOLDS, ERR_BUFFER) unless every threshold is a whole year above 0 and the buffer one at
    or above 0."""
    if not thresholds or any(isinstance(t, bool) or int(t) != t or t <= 0 for t in thresholds):
        raise ValueError(ERR_THRESHOLDS.format(text=",".join(map(str, thresholds))))
    if isinstance(buffer, bool) or int(buffer) != buffer or buffer < 0:
        raise ValueError(ERR_BUFFER.format(buffer=buffer))


def true_sides(df: pd.DataFrame, threshold: int) -> tuple[np.ndarray, np.ndarray]:
    """(minor, adult): rows whose true age is under ``threshold``, and at or over it; neither where it is unknown
    (no age, or an age bin on both sides of it). ``df``: prepared (its bin bounds parsed)."""
    age = np.asarray(df["age"], np.float64)
    exact = np.isfinite(age)
    lo, hi = df[BIN_LO].to_numpy(np.float64), df[BIN_HI].to_numpy(np.float64)
    minor = np.where(exact, age < threshold, hi < threshold)  # bin bounds are inclusive; NaN compares False
    adult = np.where(exact, age >= threshold, lo >= threshold)
    return minor, adult


def _share(k: int, n: int) -> tuple[float, float, float]:
    lo, hi = wilson(k, n)
    return (k / n if n else np.nan), lo, hi


def _row(minor: np.ndarray, adult: np.ndarray, over: np.ndarray, where: np.ndarray) -> dict:
    """One group's counts and shares (positions ``where`` among the scored faces)."""
    m, a, o = minor[where], adult[where], over[where]
    n_minors, n_adults = int(m.sum()), int(a.sum())
    false_adults, false_minors = int((m & o).sum()), int((a & ~o).sum())
    fa, fa_lo, fa_hi = _share(false_adults, n_minors)
    fm, fm_lo, fm_hi = _share(false_minors, n_adults)
    return {"n_minors": n_minors, "false_adults": false_adults, "false_adult_rate": fa, "false_adult_rate_lo": fa_lo,
            "false_adult_rate_hi": fa_hi, "n_adults": n_adults, "false_minors": false_minors,
            "false_minor_rate": fm, "false_minor_rate_lo": fm_lo, "false_minor_rate_hi": fm_hi,
            "n_unknown": len(where) - n_minors - n_adults}


def single_groupings(df: pd.DataFrame) -> list[str]:
    """The report's groupings of one column (fairness.groupings_for): age bucket, gender, the dataset's groups."""
    return [g for g in groupings_for(df) if ":" not in g]


def threshold_errors(df: pd.DataFrame, thresholds=DEFAULT_THRESHOLDS, buffer: int = DEFAULT_BUFFER,
                     groupings: list[str] | None = None) -> pd.DataFrame:
    """One row (COLUMNS) per threshold and group: the whole table first (grouping OVERALL), then each group of
    each grouping (a column, or two joined by ':'; default single_groupings). A group with no true minors has
    n_minors 0 and NaN for the false-adult share and its interval (likewise for adults), never a division by zero.
    ``df``: prepared or not. A bad threshold, buffer or grouping: ValueError (ERR_THRESHOLDS, ERR_BUFFER,
    groups.ERR_BAD_GROUPING)."""
    thresholds = tuple(thresholds)
    check(thresholds, buffer)
    df = prepared(df)
    groupings = single_groupings(df) if groupings is None else list(groupings)
    splits = {g: parse_grouping(g, grouping_columns(df)) for g in groupings}  # all checked before any counting
    scored = found_mask(df) & np.isfinite(np.asarray(df["pred_age"], np.float64))
    table = df[scored].reset_index(drop=True)
    pred = table["pred_age"].to_numpy(np.float64)
    parts = [(OVERALL, [((OVERALL,), np.arange(len(table)))])]
    parts += [(g, group_positions(table, cols)) for g, cols in splits.items()]
    rows = []
    for t in thresholds:
        minor, adult = true_sides(table, t)
        over = pred >= t + buffer
        for grouping, groups in parts:
            rows += [{"threshold": t, "decision": t + buffer, "grouping": grouping,
                      "group": " · ".join(map(str, key)), **_row(minor, adult, over, where)} for key, where in groups]
    return pd.DataFrame(rows, columns=list(COLUMNS))


def records(frame: pd.DataFrame) -> list[dict]:
    """threshold_errors' rows as JSON-ready dicts: plain numbers, None for a share with no faces to be a share of."""
    def plain(v):
        if isinstance(v, (float, np.floating)):
            return float(v) if np.isfinite(v) else None
        return v.item() if hasattr(v, "item") else v

    return [{k: plain(v) for k, v in r.items()} for r in frame.to_dict("records")]


def section(df: pd.DataFrame, thresholds=DEFAULT_THRESHOLDS, buffer: int = DEFAULT_BUFFER,
            groupings: list[str] | None = None) -> dict:
    """The report's ``age_thresholds``: {"thresholds", "buffer", "groupings", "rows"}, rows as records()."""
    df = prepared(df)
    groupings = single_groupings(df) if groupings is None else list(groupings)
    rows = records(threshold_errors(df, thresholds, buffer, groupings))
    return {"thresholds": [int(t) for t in thresholds], "buffer": buffer, "groupings": groupings, "rows": rows}


def frame(section_: dict) -> pd.DataFrame:
    """A section()'s rows back as threshold_errors' frame (None read as NaN)."""
    return pd.DataFrame(section_["rows"], columns=list(COLUMNS)).astype(dict.fromkeys(SHARE_COLUMNS, float))
