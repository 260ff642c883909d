"""The predictions table: one row per scored image, the file every report reads.

Evaluation writes it into a checkpoint as ``predictions-<split>.csv``; the bias report, the
comparison, the model card and the dashboard read it. This module owns its columns, its file
name, reading, writing and checking it, and the arrays the metrics are computed on. Imports no
torch, so readers of a table never load a model.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from .faces import quality
from .labels import FAIRFACE_BINS, GENDERS, bin_label, called_female, nearest_bin, parse_age_bin
from .meta import atomic_write, read_meta

# The columns, in the order they are written. Widen the table here and nowhere else. Between the labels
# and the predictions come the dataset's group columns, whatever they are (UTKFace: race; FairFace: race;
# a user's labels file: any): every column not named here is a group column.
LABELS = ("file", "split", "age", "age_bin", "gender")  # age: exact years, empty where only the bin is known
# found: a face was found (photos); else empty. pred_age_lo, pred_age_hi: the age's calibrated interval
# (agegender.evaluation.intervals), empty where the checkpoint has none or in a table written before intervals existed.
INTERVAL = ("pred_age_lo", "pred_age_hi")
# age_label_tail: the label audit's age p_label (review.audit), written at evaluation so the audit needs no model:
# the mass of the model's age distribution at least as far from its median as the label (label_tails). Empty for
# a regression head (the audit's residual fallback needs no model) and in a table written before it existed.
LABEL_TAIL = "age_label_tail"
PREDICTED = ("found", "pred_age", *INTERVAL, "pred_age_bin", "p_female", LABEL_TAIL)
KNOWN = (*LABELS, *PREDICTED)
# What identifies an image when two checkpoints' predictions are paired: the file and its labels
# (two datasets can hold a same-named file with other labels).
IMAGE_KEYS = ("file", "age", "age_bin", "gender")
REQUIRED = ("gender", "pred_age", "p_female")  # plus age or age_bin: what the metrics read
FEMALE = GENDERS[1]  # the gender column holds label names; the gender head predicts P(female)
SPLIT_ALL = "all"  # the split column of a dataset that has no splits
QUALITY = quality.COLUMNS  # how each face was photographed (pose, size, sharpness): figures, not groups
QUALITY_GROUPS = (quality.POSE, quality.SIZE)  # their groups, derived by agegender.fairness.groups.prepare
# a prediction's own extras, or one side's of a paired table
PER_SIDE = ("pred_", "p_female_", "found_", f"{LABEL_TAIL}_")
DERIVED_GROUP = "age_bucket"  # added from the age by agegender.fairness.groups.prepare: not one of the dataset's groups
# Typed columns agegender.fairness.groups.prepare adds (with_typed), so that the labels are parsed once per table, not
# once per metric, group or resample: the true gender as a boolean; the true age bin's index on the table's bin
# scale (bin_scale) and its inclusive bounds (hi inf for an open bin; NaN where the label is empty); and each
# predicted bin's index on the same scale (pred_age_bin_index, or pred_age_bin_index_a/_b on a paired table).
IS_FEMALE = "is_female"
BIN_INDEX, BIN_LO, BIN_HI = "age_bin_index", "age_bin_lo", "age_bin_hi"
PRED_BIN_INDEX = "pred_age_bin_index"
TYPED = (IS_FEMALE, BIN_INDEX, BIN_LO, BIN_HI)

# Error messages are constants so tests can assert them word for word.
ERR_NO_PREDICTIONS = "{path} has no predictions-{split}.csv: run python -m agegender.evaluate --checkpoint {path} " \
                     "--data PATH --split {split}"
ERR_UNREADABLE = "cannot read predictions {path}: {detail}"
ERR_MISSING_COLUMNS = "the predictions lack column(s) {missing}; expected {expected}"
ERR_NO_AGE = "the predictions have neither an age nor an age_bin column: one of them holds the true age"

# A checkpoint's own held-out splits: evaluation writes predictions-<split>.csv for each into the checkpoint
# folder, and every source that is not one of them is a registered evaluation set. Declared here, once.
OWN_SPLITS = ("val", "test")


def file_name(split: str) -> str:
    return f"predictions-{split}.csv"


def predictions_path(folder: str | os.PathLike, split: str) -> Path:
    """Where a checkpoint folder keeps its predictions for a split."""
    return Path(folder) / file_name(split)


def validate(df: pd.DataFrame, needed: tuple[str, ...] = REQUIRED) -> pd.DataFrame:
    """``df`` itself when it holds the ``needed`` columns and a true age (age or age_bin); else a ValueError."""
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise ValueError(ERR_MISSING_COLUMNS.format(missing=", ".join(missing), expected=", ".join(needed)))
    if "age" not in df.columns and "age_bin" not in df.columns:
        raise ValueError(ERR_NO_AGE)
    return df


def group_columns(df: pd.DataFrame) -> list[str]:
    """The dataset's own group columns, in table order (UTKFace and FairFace: race)."""
    derived = (DERIVED_GROUP, *QUALITY, *QUALITY_GROUPS, *TYPED)
    return [c for c in df.columns if c not in KNOWN and c not in derived and not c.startswith(PER_SIDE)]


def age_bins(labels) -> list[tuple[int, int | None]]:
    """The bins named in label columns, in age order: the scale bin errors are counted on."""
    found = {parse_age_bin(t) for t in pd.Series(labels).dropna().astype(str).unique() if t.strip()}
    return sorted(found, key=lambda b: b[0])


def bin_scale(labels, parsed: dict | None = None) -> list[tuple[int, int | None]]:
    """The bins a predicted age is put in: FairFace's when the labels use only FairFace bins (or none: exact
    ages), else the labels' own. A sample of FairFace without children still has a 10-19 bin to miss into.
    ``parsed``: {label: bin} of labels already parsed (parsed_bins), so none is parsed again."""
    named = age_bins(labels) if parsed is None else sorted(set(parsed.values()), key=lambda b: b[0])
    return list(FAIRFACE_BINS) if set(named) <= set(FAIRFACE_BINS) else named


def parsed_bins(*columns) -> dict[str, tuple[int, int | None]]:
    """{label: (lo, hi)} of every non-empty bin label in ``columns``: each distinct label parsed once."""
    labels = set()
    for c in columns:
        labels.update(pd.Series(c).dropna().astype(str).unique())
    return {t: parse_age_bin(t) for t in labels if t.strip()}


def pred_bins(pred_age, scale) -> list[str]:
    """Each predicted age's bin label on ``scale`` (bin_scale); empty where there is no prediction."""
    return [bin_label(scale[nearest_bin(a, scale)]) if np.isfinite(a) else "" for a in np.asarray(pred_age, float)]


def complete(df: pd.DataFrame, bins=FAIRFACE_BINS) -> pd.DataFrame:
    """A table with every column of KNOWN: tables written before age bins, face detection and age intervals
    existed (the shipped checkpoints' own) and tables built in memory get age_bin and pred_age_bin from the
    exact ages on ``bins`` (FairFace's), found True, split 'all', no interval and no label tail (NaN). Columns
    already there are kept as they are."""
    validate(df)
    out = df.copy()
    if "age" not in out:
        out["age"] = np.nan
    if "age_bin" not in out:
        out["age_bin"] = [bin_label(bins[nearest_bin(a, bins)]) if np.isfinite(a) else ""
                          for a in np.asarray(out["age"], float)]
    if "pred_age_bin" not in out:
        out["pred_age_bin"] = pred_bins(out["pred_age"], bin_scale(out["age_bin"]))
    if "found" not in out:
        out["found"] = True
    for c in (*INTERVAL, LABEL_TAIL):
        if c not in out:
            out[c] = np.nan
    if "split" not in out:
        out["split"] = SPLIT_ALL
    if "file" not in out:
        out["file"] = [f"row{i}" for i in range(len(out))]
    out["found"] = out["found"].astype(bool)
    first = [*LABELS, *group_columns(out), *PREDICTED]
    return out[first + [c for c in out.columns if c not in first]]  # a prediction's extras, a pair's sides


def load_predictions(checkpoint: str | os.PathLike | None = None, split: str = "val",
                     path: str | os.PathLike | None = None) -> pd.DataFrame:
    """A checkpoint's predictions for a split, or any predictions CSV at ``path``, completed to every
    column of KNOWN (see complete()). Raises CheckpointError for a folder that is no checkpoint,
    ValueError for a missing or unreadable file or one without the columns the metrics need."""
    if path is None:
        read_meta(checkpoint)  # a clear error for a folder that is no checkpoint
        path = predictions_path(checkpoint, split)
        if not path.is_file():
            raise ValueError(ERR_NO_PREDICTIONS.format(path=checkpoint, split=split))
    try:
        # labels stay strings ("20-29", a site code "007"); the numbers are parsed below
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as e:
        raise ValueError(ERR_UNREADABLE.format(path=path, detail=e)) from e
    numeric = [c for c in df.columns if c in ("age", "p_female", LABEL_TAIL, *QUALITY)
               or c.startswith("pred_age") and c != "pred_age_bin"]
    for c in numeric:
        df[c] = pd.to_numeric(df[c].replace("", np.nan), errors="coerce")
    if "found" in df:
        df["found"] = df["found"].str.lower().isin(("true", "1"))
    return complete(validate(df))


def write_predictions(df: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write a table completed to every column of KNOWN, in order (labels, groups, predictions),
    atomically: a reader, or the dashboard's cache, never sees half a file."""
    out = complete(df)
    out = out.drop(columns=[c for c in out.columns if c in TYPED or c.startswith(PRED_BIN_INDEX)])
    with atomic_write(path) as tmp:
        out.to_csv(tmp, index=False)


def found_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The rows with a face found: every metric but the miss rate is computed on them."""
    return df[df["found"].astype(bool)] if "found" in df else df


def metric_arrays(age, pred_age, female, p_female, bin_err=None) -> dict[str, np.ndarray]:
    """The arrays every metric in agegender.fairness.measures.METRICS reads: signed age error (NaN where only a bin
    is known), signed error in age bins (predicted bin index minus true, on the table's bins), the true
    gender as a boolean (True = female), P(female) and whether the gender call was right."""
    female = np.asarray(female, bool)
    p = np.asarray(p_female, np.float64)
    err = np.asarray(pred_age, np.float64) - np.asarray(age, np.float64)
    return {
        "err": err,
        "bin_err": np.full(len(p), np.nan) if bin_err is None else np.asarray(bin_err, np.float64),
        "female": female,
        "p_female": p,
        "correct": called_female(p) == female,
    }


def is_female(gender: pd.Series) -> np.ndarray:
    """The gender column (label names) as booleans."""
    return (gender.astype(str) == FEMALE).to_numpy()


def bin_errors(true_bins: pd.Series, pred_bins: pd.Series) -> np.ndarray:
    """Predicted bin index minus the true one, counted on bin_scale of the bins the two columns name (so a
    FairFace table counts 20-29 to 40-49 as two bins even when no row is in 30-39); NaN where a label is empty."""
    scale = {b: i for i, b in enumerate(bin_scale(pd.concat([true_bins, pred_bins])))}

    def index(s: pd.Series) -> np.ndarray:
        return np.array([scale[parse_age_bin(t)] if str(t).strip() else np.nan for t in s.fillna("")], np.float64)

    return index(pred_bins) - index(true_bins)


def pred_bin_columns(df: pd.DataFrame) -> list[str]:
    """The predicted age bin labels of a table: pred_age_bin, or each side's (pred_age_bin_a) of a paired one."""
    return [c for c in df.columns if c.startswith("pred_age_bin") and not c.startswith(PRED_BIN_INDEX)]


def with_typed(df: pd.DataFrame, parsed: dict | None = None) -> pd.DataFrame:
    """A completed table with the TYPED columns and each side's PRED_BIN_INDEX added (in place, and returned):
    the scale is bin_scale of every bin label the table names, as bin_errors counts it. ``parsed``: parsed_bins
    of those labels, when the caller has them."""
    sides = pred_bin_columns(df)
    parsed = parsed_bins(df["age_bin"], *(df[c] for c in sides)) if parsed is None else parsed
    index = {b: i for i, b in enumerate(bin_scale(None, parsed))}

    def column(labels: pd.Series, pick) -> np.ndarray:
        values = {t: pick(b) for t, b in parsed.items()}
        return np.array([values.get(t, np.nan) for t in labels.fillna("").astype(str)], np.float64)

    df[IS_FEMALE] = is_female(df["gender"])
    df[BIN_INDEX] = column(df["age_bin"], lambda b: index[b])
    df[BIN_LO] = column(df["age_bin"], lambda b: b[0])
    df[BIN_HI] = column(df["age_bin"], lambda b: np.inf if b[1] is None else b[1])
    for c in sides:
        df[PRED_BIN_INDEX + c[len("pred_age_bin"):]] = column(df[c], lambda b: index[b])
    return df


def metric_columns(df: pd.DataFrame, suffix: str = "") -> dict[str, np.ndarray]:
    """metric_arrays of a table (completed: see complete()); ``suffix`` picks one side of a paired table
    (pred_age_a, p_female_a). Rows without a face found are the caller's to drop (found_rows). A prepared
    table's typed columns (with_typed) are read as they are; any other table's labels are parsed here."""
    if BIN_INDEX in df and PRED_BIN_INDEX + suffix in df:
        bins = df[PRED_BIN_INDEX + suffix].to_numpy(np.float64) - df[BIN_INDEX].to_numpy(np.float64)
        female = df[IS_FEMALE].to_numpy(bool)
    else:
        bins = bin_errors(df["age_bin"], df[f"pred_age_bin{suffix}"]) if "age_bin" in df else None
        female = is_female(df["gender"])
    return metric_arrays(df["age"], df[f"pred_age{suffix}"], female, df[f"p_female{suffix}"], bins)


# ---- the label audit's age tail (review.audit): pure NumPy, so evaluation writes it and the audit reads it ----

def year_quantile(probs: np.ndarray, q: float) -> np.ndarray:
    """Each row's q-quantile of a distribution over whole years 0..bins-1: the first year whose cumulative
    mass reaches q."""
    return (probs.cumsum(1) >= q - 1e-12).argmax(1).astype(np.float64)


def age_tail(probs: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """P(|A - m| >= d) under each row's distribution over whole years: m its median, d the distance from m to
    the label's years [lo, hi] (an exact age: lo = hi; an open bin: hi = inf), 0 when they hold m."""
    m = year_quantile(probs, 0.5)
    d = np.maximum(0.0, np.maximum(lo - m, m - hi))
    far = np.abs(np.arange(probs.shape[1])[None, :] - m[:, None]) >= d[:, None] - 1e-9
    return np.clip((probs * far).sum(1), 0.0, 1.0)


def label_years(t: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lo, hi, exact): each label's years, inclusive: an exact age, else its bin (an open bin: hi = inf)."""
    lo = t["age"].to_numpy(np.float64).copy()
    hi, exact = lo.copy(), np.isfinite(lo)
    for i in np.flatnonzero(~exact):
        a, b = parse_age_bin(str(t["age_bin"].iloc[i]))
        lo[i], hi[i] = a, np.inf if b is None else b
    return lo, hi, exact


def label_tails(probs: np.ndarray, table: pd.DataFrame) -> np.ndarray:
    """The LABEL_TAIL column: age_tail of each row's label (``table``'s age, else its age_bin) under its age
    distribution (``probs``, one row per table row; a row of NaN, a face not found, gives NaN)."""
    if not len(table):
        return np.zeros(0)
    lo, hi, _ = label_years(table)
    probs = np.asarray(probs, np.float64)
    ok = np.isfinite(probs).all(1)
    out = np.full(len(table), np.nan)
    out[ok] = age_tail(probs[ok], lo[ok], hi[ok])
    return out
