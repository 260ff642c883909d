"""A labels file read safely, whatever the name points at: only a regular file is opened (a FIFO would block,
a device read for ever), its size is capped before reading and reading stops at the cap, and what is
wrong with it (an encoding, no rows, semicolons) is said in its own words before any column is asked for.

Every message names the file through agegender.labels.printable: a newline in a name cannot split a line.
"""

from __future__ import annotations

import codecs
import io
import math
import os
from pathlib import Path

import pandas as pd

from ..faces.detect import SpecialFile, open_regular, read_capped, special_kind
from ..labels import printable
from .utkface import DatasetError

# FairFace's train labels (86,744 rows) are 3 MB and a million-row CSV some 60 MB; pandas needs about ten
# times the file in memory, so a larger file is far more likely a mistake (or a trap) than labels
MAX_LABELS_MB = 256
MAX_LABELS_ENV = "AGEGENDER_MAX_LABELS_MB"  # raises (or lowers) the cap, in megabytes
HEADER_BYTES = 64 * 1024  # what is read to recognise FairFace's header: no header line is longer

ERR_LABELS_MISSING = "labels file not found at {path}: pass the CSV or Parquet file with labels=PATH"
ERR_LABELS_UNREADABLE = "cannot read the labels file {path} ({detail}): save it as a UTF-8 CSV or a Parquet file"
ERR_LABELS_EMPTY = ("the labels file {path} has no rows (it is empty, or holds a header only): export the labels "
                    "again with a header and one row per image")
ERR_LABELS_SPECIAL = ("the labels file {path} is not a regular file but {kind}: save the labels as a CSV or "
                      "Parquet file and pass that")
ERR_LABELS_TOO_LARGE = ("the labels file {path} is {size}, more than the {cap:g} MB cap: if it really holds labels, "
                        "raise the cap with the environment variable " + MAX_LABELS_ENV + ", e.g. "
                        + MAX_LABELS_ENV + "={suggest}")
ERR_LABELS_CAP = MAX_LABELS_ENV + "={value} is not a number of megabytes above 0: set it to e.g. 1024, or unset it"
ERR_LABELS_ENCODING = ("the labels file {path} is not UTF-8: it looks like {encoding}; save it as UTF-8 "
                       "(in Excel: Save As, CSV UTF-8) and try again")
ERR_LABELS_SEMICOLONS = ("the labels file {path} separates its columns with semicolons ({header}): save it with "
                         "commas (in Excel: Save As, CSV UTF-8, with a comma as the list separator)")
# ERR_LABELS_ENCODING's guesses
LOOKS_UTF16_BOM = "UTF-16 (it starts with UTF-16's byte-order mark)"
LOOKS_UTF32_BOM = "UTF-32 (it starts with UTF-32's byte-order mark)"
LOOKS_UTF16 = "UTF-16 without a byte-order mark (a NUL byte beside every letter)"
LOOKS_BINARY = "binary data, not text (it holds NUL bytes)"
LOOKS_LATIN1 = "Latin-1 or Windows-1252 (byte {byte:#04x} on line {line} is not UTF-8)"
MORE_THAN = "more than {cap:g} MB"  # ERR_LABELS_TOO_LARGE's size for a file that grew while it was read


def check_regular(labels: Path) -> None:
    """Refuse a labels name that is missing or not a regular file, on a stat (a link is followed): nothing opened."""
    try:
        kind = special_kind(labels.stat().st_mode)
    except OSError as e:
        raise DatasetError(ERR_LABELS_MISSING.format(path=printable(labels))) from e
    if kind is not None:
        raise DatasetError(ERR_LABELS_SPECIAL.format(path=printable(labels), kind=kind))




def labels_cap_mb() -> float:
    """The labels file size cap in MB: MAX_LABELS_MB, or the environment's MAX_LABELS_ENV."""
    raw = os.environ.get(MAX_LABELS_ENV, "").strip()
    if not raw:
        return MAX_LABELS_MB
    try:
        cap = float(raw)
    except ValueError:
        cap = math.nan
    if not (math.isfinite(cap) and cap > 0):
        raise DatasetError(ERR_LABELS_CAP.format(value=printable(raw)))
    return cap


def read_labels(labels: Path) -> bytes:
    """A labels file's bytes: only a regular file, refused above the cap without reading past it."""
    cap = labels_cap_mb()
    limit = int(cap * 2**20)
    try:
        with open_regular(labels) as f:
            data, size = read_capped(f, limit), os.fstat(f.fileno()).st_size
    except SpecialFile as e:
        raise DatasetError(ERR_LABELS_SPECIAL.format(path=printable(labels), kind=e.kind)) from e
    except FileNotFoundError as e:
        raise DatasetError(ERR_LABELS_MISSING.format(path=printable(labels))) from e
    except OSError as e:
        detail = printable(e.strerror or e)
        raise DatasetError(ERR_LABELS_UNREADABLE.format(path=printable(labels), detail=detail)) from e
    if data is None:
        shown = f"{size / 2**20:,.1f} MB" if size > limit else MORE_THAN.format(cap=cap)
        suggest = math.ceil(2 * max(size, limit) / 2**20)
        raise DatasetError(ERR_LABELS_TOO_LARGE.format(path=printable(labels), size=shown, cap=cap, suggest=suggest))
    if not data:
        raise DatasetError(ERR_LABELS_EMPTY.format(path=printable(labels)))
    return data


def decode(labels: Path, data: bytes) -> str:
    """A CSV's text. A UTF-8 byte-order mark is accepted; any other encoding is named, never guessed at."""
    looks = None
    if data.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):  # before UTF-16's: FF FE starts both
        looks = LOOKS_UTF32_BOM
    elif data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        looks = LOOKS_UTF16_BOM
    elif b"\0" in data:  # valid UTF-8, but no labels file holds NUL: UTF-16 of plain letters, or not text
        head = data[:HEADER_BYTES]
        nuls = sorted((head[0::2].count(0), head[1::2].count(0)))  # UTF-16 of letters: every other byte
        looks = LOOKS_UTF16 if nuls[1] > 0.4 * len(head) and nuls[0] < 0.05 * len(head) else LOOKS_BINARY
    if looks is None:
        try:
            return data.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            looks = LOOKS_LATIN1.format(byte=data[e.start], line=data.count(b"\n", 0, e.start) + 1)
    raise DatasetError(ERR_LABELS_ENCODING.format(path=printable(labels), encoding=looks))


def check_header(labels: Path, text: str) -> None:
    header = text.split("\n", 1)[0].strip()
    if ";" in header and "," not in header:
        raise DatasetError(ERR_LABELS_SEMICOLONS.format(path=printable(labels), header=printable(header[:200])))


def is_parquet(labels: Path) -> bool:
    return labels.suffix.lower() in (".parquet", ".pq")


def read_table(labels: Path, data: bytes) -> pd.DataFrame:
    try:
        if is_parquet(labels):
            df = pd.read_parquet(io.BytesIO(data))
            df = df.astype(object).where(df.notna(), "").astype(str)
        else:
            df = pd.read_csv(io.StringIO(decode(labels, data)), dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError as e:
        raise DatasetError(ERR_LABELS_EMPTY.format(path=printable(labels))) from e
    except (OSError, ValueError, pd.errors.ParserError) as e:  # ArrowInvalid is a ValueError
        detail = printable(str(e).strip())
        raise DatasetError(ERR_LABELS_UNREADABLE.format(path=printable(labels), detail=detail)) from e
    if df.empty:
        raise DatasetError(ERR_LABELS_EMPTY.format(path=printable(labels)))
    df.columns = [str(c).strip() for c in df.columns]
    return df


