"""How a table of figures is shown: years with " y", rates as percentages, scores as 0.xxx, counts with
thousands separators, deltas signed, each to 2-3 significant digits. Pure functions, no torch.

The rule is read from a column's name: a metric's name (agegender.fairness.measures.METRICS) takes that
metric's kind, from its unit where it states one and from KINDS where it does not; ``_lo`` / ``_hi``
(an interval's ends) and ``_a`` / ``_b`` (two checkpoints' figures) take the kind of the name they
end; ``_delta`` and a leading ``d_`` mark a difference, shown signed, and in percentage points (pp)
for a rate. A name it does not know falls back to 3 significant digits (whole numbers as counts), so
a new metric still reads well before it is listed here. A count is never keyed on what it counts: the
label audit's "age_suspects" is a number of faces, not years (COUNT_COLUMNS, and any name starting "n_").
Every missing cell, in any column, reads MISSING.

The dashboard shows a table through styled(): a pandas Styler whose display values carry the
formatting while the cells stay numbers, so columns still sort by value and downloads (taken from
the frame, not the Styler) keep the raw figures. display() gives the same text as a frame of strings.
st.dataframe draws a null cell (NaN, None) as its own placeholder, "None" by default, whatever the Styler
says: pass ``placeholder=MISSING`` with every styled table, or one table reads "None" and the next "–".

Every CSV the dashboard offers for download goes through csv_download(): a text cell (a group value from
someone's labels file) that a spreadsheet would run as a formula gets a leading single quote. It lives here,
with the other ways a table is shown, because it must be torch-free for every page and it changes how a
table reads, never its figures. Files the commands write (predictions CSVs) keep the data as it is.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

import pandas as pd

from .measures import METRICS

MISSING = "–"  # an empty cell: no value, or one that is not finite


@dataclass(frozen=True)
class Kind:
    """How a figure of one kind is written."""

    name: str
    suffix: str = ""  # after the number: " y", "%"
    scale: float = 1.0  # 100 for a rate shown as a percentage
    digits: int = 3  # significant digits...
    max_decimals: int = 6  # ...but never more decimals than this
    decimals: int | None = None  # fixed decimals instead (scores), whatever the size
    delta_suffix: str | None = None  # after a difference, where it differs from suffix (rates: " pp")


YEARS = Kind("years", " y", max_decimals=2)
PERCENT = Kind("percent", "%", scale=100, max_decimals=1, delta_suffix=" pp")
SCORE = Kind("score", decimals=3)  # AUC, calibration error, probabilities: 0.xxx
COUNT = Kind("count", decimals=0)
BINS = Kind("bins", " bins", max_decimals=2)
PLAIN = Kind("plain")  # anything not known: 3 significant digits
P_VALUE = Kind("p", digits=2, max_decimals=4)  # a test's p or q: 0.31, 0.0042

# Kinds by the unit a Metric states (agegender.fairness.measures.Metric.unit).
UNIT_KINDS = {"y": YEARS, "years": YEARS, "%": PERCENT, "bins": BINS}
# Kinds of figures whose Metric states no unit (rates, scores), and of other columns the dashboard shows.
KINDS: dict[str, Kind] = {
    "age_cs5": PERCENT, "gender_accuracy": PERCENT, "female_as_male": PERCENT, "male_as_female": PERCENT,
    "age_bin_accuracy": PERCENT, "age_bin_within1": PERCENT, "missed_rate": PERCENT, "age_bin_error": BINS,
    "gender_auc": SCORE, "gender_ece": SCORE,
    "gender_disagreement": PERCENT, "share": PERCENT,
    "age": YEARS, "pred_age": YEARS, "p_female": SCORE, "confidence": SCORE,
    "p_value": P_VALUE, "q_value": P_VALUE, **{f"{p}_{s}": P_VALUE for p in ("p", "q") for s in ("a", "b")},
}
# Columns of counts of faces (the label audit's per-group table among them): whole numbers, whatever they count.
COUNT_COLUMNS = ("n", "suspects", "gender_suspects", "age_suspects", "unreviewed", "wrong", "left_out")
KINDS.update(dict.fromkeys(COUNT_COLUMNS, COUNT))
# In a table with one metric per row (a disparity table: a "metric" column naming it), these columns
# hold that row's metric: "gap", its interval and the gap detectable are differences, unsigned.
ROW_VALUES = {"best": False, "worst": False, "overall": False, "gap": True, "gap_lo": True, "gap_hi": True,
              "detectable": True, **{f"{c}_{s}": True for c in ("gap", "gap_lo", "gap_hi") for s in ("a", "b")}}


@dataclass(frozen=True)
class Format:
    kind: Kind
    delta: bool = False  # a difference: the kind's delta suffix
    signed: bool = False  # "+" before a positive number

    def __call__(self, value) -> str:
        return format_value(value, self.kind, delta=self.delta, signed=self.signed)


def kind_of(name: str) -> Kind | None:
    """The kind of a metric or known column, or None for a name this module does not know."""
    if name.startswith("n_"):  # n_images, n_missed: a count of what follows
        return COUNT
    metric = METRICS.get(name)
    unit = getattr(metric, "unit", "") if metric is not None else ""
    if unit:
        return UNIT_KINDS.get(unit, Kind(f"unit {unit}", f" {unit}"))
    return KINDS.get(name)


def _decimals(x: float, kind: Kind) -> int:
    if kind.decimals is not None:
        return kind.decimals
    x = float(f"{x:.{kind.digits}g}")  # rounded first, so 9.996 is "10.0", not "10.00"
    if x == 0:
        return min(kind.digits - 1, kind.max_decimals)
    return max(0, min(kind.max_decimals, kind.digits - 1 - math.floor(math.log10(abs(x)))))


def format_value(value, kind: Kind = PLAIN, *, delta: bool = False, signed: bool = False) -> str:
    """One figure as text: ``format_value(0.9948, PERCENT) == "99.5%"``, ``format_value(-0.31, YEARS,
    delta=True, signed=True) == "-0.31 y"``, ``format_value(0.021, PERCENT, delta=True, signed=True) ==
    "+2.1 pp"``; a signed figure keeps its sign where it rounds to zero ("-0.00 y"). Missing or not
    finite: MISSING; not a number: as it is."""
    if isinstance(value, bool):
        return str(value)
    if _missing(value):
        return MISSING
    try:
        x = float(value) * kind.scale
    except (TypeError, ValueError):
        return str(value)
    if not math.isfinite(x):
        return MISSING
    text = f"{x:,.{_decimals(x, kind)}f}"
    if signed and x != 0:  # the raw sign, even where it rounds to 0: st.metric draws its arrow from it
        text = ("+" if x > 0 else "-") + text.lstrip("-")
    elif float(text.replace(",", "")) == 0:
        text = text.lstrip("-")  # no "-0.0"
    suffix = kind.delta_suffix if delta and kind.delta_suffix is not None else kind.suffix
    return text + suffix


def _missing(value) -> bool:
    """None, NaN, pd.NA or NaT (a cell pandas counts as missing), never a container."""
    return pd.api.types.is_scalar(value) and bool(pd.isna(value))


def column_format(column: str, values: pd.Series | None = None, metrics: Mapping[str, str] | None = None
                  ) -> Format | None:
    """How a column is written, from its name (see the module's docstring); ``metrics`` maps other
    column names to the metric they hold (e.g. {"test age MAE": "age_mae"}). None for a column to
    leave as it is: text, booleans, or an unknown name over values that are not numbers."""
    if values is not None and (pd.api.types.is_bool_dtype(values) or not pd.api.types.is_numeric_dtype(values)):
        return None
    name = (metrics or {}).get(column, column)
    for end in ("_lo", "_hi"):  # an interval's end: the kind of what it bounds
        if name.endswith(end) and name != end:
            name = name[: -len(end)]
            break
    delta = name.startswith("d_") or name.endswith("_delta")
    name = name.removeprefix("d_").removesuffix("_delta") if delta else name
    kind = kind_of(name)
    if kind is None and name.endswith(("_a", "_b")):  # one checkpoint's figure in a comparison
        kind = kind_of(name[:-2])
    if kind is None:
        if values is None:
            return Format(PLAIN, delta, delta)
        finite = values.dropna()
        whole = len(finite) > 0 and bool((finite == finite.round()).all())
        kind = COUNT if whole and not delta else PLAIN
    return Format(kind, delta, delta)


def formatters(df: pd.DataFrame, metrics: Mapping[str, str] | None = None) -> dict[str, Format]:
    """Per column of ``df``, how it is written (columns left as they are have none)."""
    out = {}
    for c in df.columns:
        f = column_format(str(c), df[c], metrics)
        if f is not None:
            out[c] = f
    return out


def _row_formats(df: pd.DataFrame, row_metric: str | None) -> list[tuple[list, list[str], Format]]:
    """(row labels, columns, format) for a table with one metric per row, named in ``row_metric``."""
    if not row_metric or row_metric not in df.columns:
        return []
    out = []
    for col, delta in ROW_VALUES.items():
        if col not in df.columns:
            continue
        for metric, rows in df.groupby(row_metric, sort=False).groups.items():
            kind = kind_of(str(metric)) or PLAIN
            out.append((list(rows), [col], Format(kind, delta, False)))
    return out


def display(df: pd.DataFrame, metrics: Mapping[str, str] | None = None, row_metric: str | None = "metric"
            ) -> pd.DataFrame:
    """``df`` as the text styled() shows: formatted columns as strings, the others unchanged but for their
    missing cells (MISSING)."""
    out = df.astype(object).where(df.notna(), MISSING)  # missing cells of every column, text ones too
    for c, f in formatters(df, metrics).items():
        out[c] = df[c].map(f)
    for rows, cols, f in _row_formats(df, row_metric):
        out[cols] = out[cols].astype(object)
        out.loc[rows, cols] = df.loc[rows, cols].map(f)
    return out


def styled(df: pd.DataFrame, metrics: Mapping[str, str] | None = None, row_metric: str | None = "metric"):
    """``df`` as a pandas Styler for st.dataframe: the cells stay numbers (columns sort by value), the
    display values are display()'s. Further Styler methods (highlights) chain on the result."""
    styler = df.style.format(formatters(df, metrics), na_rep=MISSING)
    for rows, cols, f in _row_formats(df, row_metric):
        styler = styler.format(f, subset=pd.IndexSlice[rows, cols], na_rep=MISSING)
    return styler


def metric_text(name: str, value, *, delta: bool = False, signed: bool | None = None) -> str:
    """One figure of a metric, for st.metric and captions; a delta is signed unless told otherwise."""
    return format_value(value, kind_of(name) or PLAIN, delta=delta, signed=delta if signed is None else signed)


def interval_text(name: str, lo, hi, *, delta: bool = False) -> str:
    """An interval of a metric: "[1.40 y, 1.70 y]"."""
    return f"[{metric_text(name, lo, delta=delta)}, {metric_text(name, hi, delta=delta)}]"


# OWASP's rule for CSV injection: a cell starting with one of these runs as a formula in Excel, LibreOffice
# and Google Sheets (a tab or carriage return first is trimmed by some, leaving the formula)
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
NEUTRALISE = "'"  # a leading single quote: the spreadsheet shows the text, runs nothing
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")  # "-3.5", "+2", "1e-3": data, not a formula


def safe_cell(value):
    """``value`` as a spreadsheet may safely read it: text that would run as a formula gets NEUTRALISE in
    front; a number, text that is just a number ("-3.5") and missing values stay as they are."""
    if value is None or isinstance(value, (int, float, complex)):  # bool and numpy floats too; other numpy
        # scalars print as numbers, which _NUMBER lets through
        return value
    text = value if isinstance(value, str) else str(value)  # to_csv writes any other object as its str
    bare = text.lstrip(" ")  # a space first is skipped by some spreadsheets: " =1+1" still runs
    if bare.startswith(FORMULA_STARTS) and not _NUMBER.fullmatch(bare.strip()):
        return NEUTRALISE + text
    return value


def csv_download(df: pd.DataFrame) -> str:
    """``df`` as the CSV text a page offers for download (no index): every text cell and column name a
    spreadsheet would run as a formula is neutralised by safe_cell; figures stay numbers."""
    out = df.copy()
    out.columns = [safe_cell(str(c)) for c in out.columns]
    for i, dtype in enumerate(out.dtypes):
        if not (pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_datetime64_any_dtype(dtype)):
            out.isetitem(i, out.iloc[:, i].astype(object).map(safe_cell))
    return out.to_csv(index=False)
