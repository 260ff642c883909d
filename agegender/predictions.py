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

from .labels import GENDERS, called_female
from .meta import atomic_write, read_meta

# The columns, in the order they are written. Widen the table here and nowhere else.
COLUMNS = ("file", "split", "age", "gender", "race", "pred_age", "p_female")
# What identifies an image when two checkpoints' predictions are paired: the file and the labels
# read from its name (two datasets can hold a same-named file with other labels).
IMAGE_KEYS = ("file", "age", "gender", "race")
PREDICTED = ("pred_age", "p_female")  # what a checkpoint contributes; the rest is the dataset's
REQUIRED = ("age", "gender", "race", *PREDICTED)  # what the metrics and the group columns read
FEMALE = GENDERS[1]  # the gender column holds label names; the gender head predicts P(female)

# Error messages are constants so tests can assert them word for word.
ERR_NO_PREDICTIONS = "{path} has no predictions-{split}.csv: run python -m agegender.evaluate --checkpoint {path} " \
                     "--data PATH --split {split}"
ERR_UNREADABLE = "cannot read predictions {path}: {detail}"
ERR_MISSING_COLUMNS = "the predictions lack column(s) {missing}; expected {expected}"


def file_name(split: str) -> str:
    return f"predictions-{split}.csv"


def predictions_path(folder: str | os.PathLike, split: str) -> Path:
    """Where a checkpoint folder keeps its predictions for a split."""
    return Path(folder) / file_name(split)


def validate(df: pd.DataFrame, needed: tuple[str, ...] = REQUIRED) -> pd.DataFrame:
    """``df`` itself when it holds the ``needed`` columns; else a ValueError naming the missing ones."""
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise ValueError(ERR_MISSING_COLUMNS.format(missing=", ".join(missing), expected=", ".join(needed)))
    return df


def load_predictions(checkpoint: str | os.PathLike | None = None, split: str = "val",
                     path: str | os.PathLike | None = None) -> pd.DataFrame:
    """A checkpoint's predictions for a split, or any predictions CSV at ``path``.
    Raises CheckpointError for a folder that is no checkpoint, ValueError for a missing or
    unreadable file or one without the columns the metrics need."""
    if path is None:
        read_meta(checkpoint)  # a clear error for a folder that is no checkpoint
        path = predictions_path(checkpoint, split)
        if not path.is_file():
            raise ValueError(ERR_NO_PREDICTIONS.format(path=checkpoint, split=split))
    try:
        df = pd.read_csv(path)
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as e:
        raise ValueError(ERR_UNREADABLE.format(path=path, detail=e)) from e
    return validate(df)


def write_predictions(df: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write a full table (every column of COLUMNS, in that order) atomically: a reader, or the
    dashboard's cache, never sees half a file."""
    validate(df, COLUMNS)
    with atomic_write(path) as tmp:
        df[list(COLUMNS)].to_csv(tmp, index=False)


def metric_arrays(age, pred_age, female, p_female) -> dict[str, np.ndarray]:
    """The arrays every metric in agegender.fairness.METRICS reads: signed age error, the true
    gender as a boolean (True = female), P(female) and whether the gender call was right."""
    female = np.asarray(female, bool)
    p = np.asarray(p_female, np.float64)
    return {
        "err": np.asarray(pred_age, np.float64) - np.asarray(age, np.float64),
        "female": female,
        "p_female": p,
        "correct": called_female(p) == female,
    }


def is_female(gender: pd.Series) -> np.ndarray:
    """The gender column (label names) as booleans."""
    return (gender.astype(str) == FEMALE).to_numpy()


def metric_columns(df: pd.DataFrame, suffix: str = "") -> dict[str, np.ndarray]:
    """metric_arrays of a table; ``suffix`` picks one side of a paired table (pred_age_a, p_female_a)."""
    return metric_arrays(df["age"], df[f"pred_age{suffix}"], is_female(df["gender"]), df[f"p_female{suffix}"])
