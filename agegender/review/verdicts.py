"""A reviewer's verdicts on suspected label errors ("label confirmed", "label wrong"): kept in a review file
beside the evaluation results (review_path: one file per evaluation set, or per checkpoint folder and own
split; outside the repository and never in the dataset) and read back by image and label, so a verdict
survives a re-audit and lapses once the label itself is changed. The audit (agegender.review.audit) ranks the
suspects; the reports read the verdicts to leave the wrong labels out and keep the confirmed ones."""

from __future__ import annotations

import logging
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ..evaluation import sources
from ..evaluation.sources import IN_CHECKPOINT_ENV  # noqa: F401  (the switch of review_path, named here too)
from ..meta import atomic_write
from ..predictions import IMAGE_KEYS

CONFIRMED, WRONG = "label confirmed", "label wrong"  # a reviewer's verdicts
REVIEW_COLUMNS = (*IMAGE_KEYS, "verdict", "suspect", "score", "reviewed_at")
ERR_REVIEW_UNREADABLE = "cannot read the review file {path} ({detail}): fix it or delete it"
ERR_REVIEW_WRITE = "cannot write the review file {path} ({detail})"

_REVIEW_LOCK = threading.Lock()  # dashboard sessions are threads of one process: no verdict lost between two
log = logging.getLogger(__name__)


class ReviewError(ValueError):
    """A review file that cannot be read or written; the message says which and why."""


def review_path(checkpoint: str | Path, source: str, in_checkpoint: bool | None = None) -> Path:
    """Where verdicts on a source's labels are kept: the Source's review_path (agegender.evaluation.sources, which
    says where and why). Verdicts recorded where earlier versions kept them are copied to the new place the first
    time, so none is lost; that old file is left as it was. Where the copy cannot be written, the old file is
    returned, so its verdicts are still read."""
    src = sources.source(checkpoint, source)
    path, old = src.review_path(in_checkpoint), src.earlier_review_path()
    if old is None:
        return path
    with _REVIEW_LOCK:  # mark() holds it too: a verdict written meanwhile is never overwritten by the copy
        if path.exists() or path == old or not old.is_file():
            return path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_write(path) as tmp:
                shutil.copyfile(old, tmp)
        except OSError as e:
            log.warning("cannot copy the verdicts of %s to %s (%s): reading them where they are", old, path, e)
            return old
    return path


def label_keys(df: pd.DataFrame) -> pd.Series:
    """An image and the label it carries, as text (file, exact age, else age bin, gender): a verdict holds for
    that label only. A table with exact ages and one completed with their bins give the same keys."""
    age = pd.to_numeric(df["age"], errors="coerce") if "age" in df else pd.Series(np.nan, index=df.index)
    bins = df["age_bin"].fillna("").astype(str) if "age_bin" in df else pd.Series("", index=df.index)
    text = [f"{a:g}" if np.isfinite(a) else b for a, b in zip(age, bins, strict=True)]
    return df["file"].astype(str) + "|" + pd.Series(text, index=df.index) + "|" + df["gender"].astype(str)


def read_review(path: str | Path) -> pd.DataFrame:
    """The verdicts in a review file (none when it does not exist yet)."""
    path = Path(path)
    if not path.is_file():
        return pd.DataFrame(columns=list(REVIEW_COLUMNS))
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise ReviewError(ERR_REVIEW_UNREADABLE.format(path=path, detail=e)) from e
    missing = [c for c in ("file", "gender", "verdict") if c not in df]
    if missing:
        raise ReviewError(ERR_REVIEW_UNREADABLE.format(path=path, detail=f"no column {', '.join(missing)}"))
    return df


def mark(path: str | Path, rows: pd.DataFrame, verdict: str | None) -> None:
    """Record ``verdict`` (CONFIRMED, WRONG, or None to clear) for audit ``rows``, replacing earlier verdicts
    on the same image and label; the file is rewritten atomically."""
    if verdict not in (CONFIRMED, WRONG, None):
        raise ValueError(f"verdict must be {CONFIRMED!r}, {WRONG!r} or None, not {verdict!r}")
    path = Path(path)
    with _REVIEW_LOCK:  # review_path copies an earlier file under it too
        old = read_review(path)
        keep = old[~label_keys(old).isin(set(label_keys(rows)))] if len(old) else old
        new = pd.DataFrame(columns=list(REVIEW_COLUMNS))
        if verdict is not None:
            new = rows.reindex(columns=list(REVIEW_COLUMNS)).assign(
                verdict=verdict, reviewed_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        frame = pd.concat([keep.reindex(columns=list(REVIEW_COLUMNS)), new], ignore_index=True)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_write(path) as tmp:
                frame.to_csv(tmp, index=False)
        except OSError as e:
            raise ReviewError(ERR_REVIEW_WRITE.format(path=path, detail=e)) from e


def with_reviews(audit: pd.DataFrame, review: pd.DataFrame) -> pd.DataFrame:
    """The audit with a ``verdict`` column: the review's verdict on the image with this label, else ""."""
    verdicts = dict(zip(label_keys(review), review["verdict"], strict=True)) if len(review) else {}
    return audit.assign(verdict=[verdicts.get(k, "") for k in label_keys(audit)])
