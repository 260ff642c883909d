"""Any labelled face dataset as one list of records: UTKFace names, FairFace's CSV, a user's labels file.

Only the UTKFace reader knows UTKFace's name rules and its five groups; the rest of the code reads
``Record``s and a ``Dataset``'s geometry (chips go straight to preprocessing, photos through detection).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..faces.detect import WHY_SPECIAL, SpecialFile, open_regular, read_capped
from ..labels import (  # noqa: F401 - the age-bin names are part of this module's interface
    ERR_BIN,
    ERR_BIN_OF,
    FAIRFACE_BINS,
    GENDERS,
    MAX_AGE,
    RACES,
    bin_label,
    bin_of,
    parse_age_bin,
    printable,
)
from .labelsfile import (  # noqa: F401 - the labels file's messages are part of this module's interface
    ERR_LABELS_EMPTY,
    ERR_LABELS_MISSING,
    ERR_LABELS_UNREADABLE,
    HEADER_BYTES,
    check_header,
    check_regular,
    decode,
    is_parquet,
    read_labels,
    read_table,
)
from .utkface import EXAMPLES, DatasetError, list_images, scan

log = logging.getLogger(__name__)

FORMATS = ("utkface", "fairface", "csv")
GEOMETRIES = ("chips", "photos")  # chips: aligned crops, preprocess directly; photos: detect and align first
DEFAULT_GEOMETRY = "photos"  # a user's images are photos unless they say so: detection never hurts a chip much
LABEL_SUFFIXES = (".csv", ".parquet", ".pq")
FAIRFACE_COLUMNS = ("file", "age", "gender", "race")
FAIRFACE_EXTRA = "service_test"  # FairFace's flag for its API test subset: not a group
FAIRFACE_GENDERS = {"Male": 0, "Female": 1}
FAIRFACE_RACES = ("White", "Black", "Indian", "East Asian", "Southeast Asian", "Middle Eastern", "Latino_Hispanic")
MAPPING_KEYS = ("file", "age", "age_bin", "gender", "gender_map", "groups", "geometry")
DEFAULT_GENDER_MAP = {"0": 0, "1": 1, "male": 0, "m": 0, "female": 1, "f": 1}  # compared case-insensitively

# Why a row was skipped: the keys of Dataset.problems.
SKIP_MISSING = "a required value is empty"
SKIP_AGE = "age is not a number of years"
SKIP_AGE_RANGE = f"age above {MAX_AGE} years"  # below 0 is SKIP_AGE, as it always was
SKIP_BIN = "age bin not recognised"
SKIP_GENDER = "gender not mappable"
SKIP_RACE = "race not one of FairFace's seven"
SKIP_FILE = "image file not found"
SKIP_DUPLICATE = "file listed twice"
SKIP_NAME = "file name carries no UTKFace labels"
WARN_SKIPPED = "skipped {n} row(s): {details}"

ERR_NOT_FOUND = "dataset not found at {path}: pass the images folder, .zip or .tar.gz, or the labels file"
ERR_FORMAT = "unknown dataset format {format!r}: use one of utkface, fairface, csv"
ERR_NEEDS_LABELS = ("format {format!r} needs a labels file: pass the CSV or Parquet file (--labels FILE on the "
                    "command line)")
ERR_UTK_LABELS = "UTKFace takes its labels from file names: leave labels out, or pick format='csv' for a labels file"
ERR_NO_MAPPING = ("{path} is not FairFace's CSV (file,age,gender,race): say which column holds what with "
                  "columns='file=COL,age=COL,gender=COL' (or age_bin=COL)")
ERR_LABELS_OUTSIDE = ("{path} in the dataset folder is a link to {target}, outside the folder: it is not read; "
                      "if you trust that file, pass it yourself with labels=PATH (--labels PATH)")
ERR_MISSING_COLUMN = ("the labels file {path} has no column {column!r} (it has {have}): "
                      "name the right column with {key}=COLUMN in the column mapping")
ERR_NO_RECORDS = "no usable row in {path}: every row was skipped (see the warning); fix the labels or the mapping"
ERR_MAPPING_KEY = "unknown key {key!r} in the column mapping: use {keys}"
ERR_MAPPING_PAIR = "cannot read {piece!r} in the column mapping: write key=value pairs, e.g. file=path,age=age"
ERR_MAPPING_AGE = "the column mapping needs exactly one of age=COLUMN (years) or age_bin=COLUMN (e.g. 20-29)"
ERR_MAPPING_REQUIRED = "the column mapping has no {key}=COLUMN: add it (the column that holds the {key})"
ERR_GENDER_MAP = "cannot read gender_map {text!r}: write VALUE=0 for male and VALUE=1 for female, e.g. F=1,M=0"
ERR_GEOMETRY = "geometry {value!r}: use chips (aligned face crops) or photos (detect and align first)"
ERR_TOML = "cannot read the column mapping {path} ({detail}): write key = \"value\" lines, e.g. file = \"path\""
MAPPING_BYTES = 2**20  # a column mapping is a few lines: a larger .toml is not one
MAPPING_TOO_LARGE = f"more than {MAPPING_BYTES:,} bytes, which no column mapping needs"


@dataclass(frozen=True)
class Record:
    file: str  # path or member relative to the dataset root
    age: float | None  # exact years, or None where only a bin is known
    age_bin: tuple[int, int | None] | None  # inclusive low/high; high None is open ("more than 70")
    gender: int  # 0 male, 1 female: agegender.labels.GENDERS
    groups: dict[str, str] = field(default_factory=dict)  # e.g. {"race": "Indian"} plus any extra columns


@dataclass(frozen=True)
class Problem:
    count: int
    examples: tuple[str, ...]  # at most EXAMPLES of them


@dataclass(frozen=True)
class Dataset:
    records: tuple[Record, ...]
    geometry: str  # chips | photos
    format: str  # utkface | fairface | csv
    group_columns: tuple[str, ...]
    problems: dict[str, Problem]  # reason (a SKIP_ constant) -> how many rows, a few examples
    fingerprint: str  # sha256 of the labels' content and the file list: a cache key
    root: Path  # the folder or archive the files are relative to
    labels: Path | None = None

    @property
    def skipped(self) -> int:
        return sum(p.count for p in self.problems.values())


class _Problems:
    """Skipped rows counted per reason with a few examples, reported in one warning."""

    def __init__(self) -> None:
        self.found: dict[str, list[str]] = {}

    def add(self, reason: str, example: str) -> None:
        self.found.setdefault(reason, []).append(example)

    def summary(self) -> dict[str, Problem]:
        return {r: Problem(len(ex), tuple(ex[:EXAMPLES])) for r, ex in self.found.items()}

    def warn(self) -> None:
        if self.found:
            details = "; ".join(f"{r}: {len(ex)} (e.g. {', '.join(ex[:EXAMPLES])})" for r, ex in self.found.items())
            log.warning(WARN_SKIPPED.format(n=sum(map(len, self.found.values())), details=details))


# ---- the column mapping ---------------------------------------------------------------------------------

def parse_columns(columns: Mapping | str | os.PathLike | None) -> dict:
    """A mapping as a dict, a 'key=value,key=value' string or a .toml file -> a checked dict. In the string
    form a piece whose key is not a mapping key continues the value before it: 'gender_map=F=1,M=0' and
    'groups=country,site' read as one value each."""
    if isinstance(columns, (str, os.PathLike)) and str(columns).lower().endswith(".toml"):
        columns = _read_toml(Path(columns))
    elif isinstance(columns, str):
        columns = _split_pairs(columns)
    m = dict(columns or {})
    for key in m:
        if key not in MAPPING_KEYS:
            raise DatasetError(ERR_MAPPING_KEY.format(key=key, keys=", ".join(MAPPING_KEYS)))
    if ("age" in m) == ("age_bin" in m):
        raise DatasetError(ERR_MAPPING_AGE)
    for key in ("file", "gender"):
        if not m.get(key):
            raise DatasetError(ERR_MAPPING_REQUIRED.format(key=key))
    groups = m.get("groups") or []
    m["groups"] = [g.strip() for g in groups.split(",") if g.strip()] if isinstance(groups, str) else list(groups)
    m["gender_map"] = _gender_map(m.get("gender_map"))
    m["geometry"] = m.get("geometry") or DEFAULT_GEOMETRY
    if m["geometry"] not in GEOMETRIES:
        raise DatasetError(ERR_GEOMETRY.format(value=m["geometry"]))
    return m


def _split_pairs(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    last = None
    for piece in text.split(","):
        key, sep, value = piece.partition("=")
        if sep and key.strip() in MAPPING_KEYS:
            last = key.strip()
            out[last] = value.strip()
        elif last is not None and piece.strip():
            out[last] += "," + piece.strip()
        elif piece.strip():
            raise DatasetError(ERR_MAPPING_PAIR.format(piece=piece))
    return out


def _read_toml(path: Path) -> dict:
    try:
        import tomllib  # Python 3.11+; older Pythons pass the mapping as a string instead
    except ImportError as e:
        raise DatasetError(ERR_TOML.format(path=printable(path), detail="tomllib needs Python 3.11")) from e
    try:
        with open_regular(path) as f:  # a FIFO named x.toml would block a plain read for ever
            raw = read_capped(f, MAPPING_BYTES)
        if raw is None:
            raise DatasetError(ERR_TOML.format(path=printable(path), detail=MAPPING_TOO_LARGE))
        data = tomllib.loads(raw.decode("utf-8"))
    except SpecialFile as e:
        raise DatasetError(ERR_TOML.format(path=printable(path), detail=WHY_SPECIAL.format(kind=e.kind))) from e
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, RecursionError) as e:  # nested a few
        # thousand levels deep, tomllib recurses out
        raise DatasetError(ERR_TOML.format(path=printable(path), detail=printable(str(e) or type(e).__name__))) from e
    return data.get("columns", data)  # top-level keys, or a [columns] table


def _gender_map(spec: Mapping | str | None) -> dict[str, int]:
    if not spec:
        return dict(DEFAULT_GENDER_MAP)
    pairs = _split_gender(spec) if isinstance(spec, str) else dict(spec)
    out = {}
    for value, code in pairs.items():
        code = str(code).strip().lower()
        code = GENDERS.index(code) if code in GENDERS else code
        if str(code) not in ("0", "1"):
            raise DatasetError(ERR_GENDER_MAP.format(text=spec))
        out[str(value).strip().casefold()] = int(code)
    return out


def _split_gender(text: str) -> dict[str, str]:
    pairs = [p.partition("=") for p in text.split(",")]
    if any(not sep or not v.strip() for v, sep, _ in pairs):
        raise DatasetError(ERR_GENDER_MAP.format(text=text))
    return {v: code for v, _, code in pairs}


# ---- the readers ----------------------------------------------------------------------------------------

def read_dataset(path: str | os.PathLike, labels: str | os.PathLike | None = None, format: str | None = None,
                 columns: Mapping | str | os.PathLike | None = None) -> Dataset:
    """Read a labelled dataset. ``path`` holds the images (folder, .zip or .tar.gz) and the labels' file
    names are relative to it; ``path`` may be the labels file itself (images relative to its folder), or a
    folder holding FairFace's CSV. Without ``format``: no labels -> utkface; FairFace's header -> fairface;
    otherwise csv with ``columns``. Bad rows are counted, warned about once, and skipped."""
    path, labels, format = resolve(path, labels, format, columns)
    if format == "utkface":
        return _read_utkface(path)
    data = read_labels(labels)  # what is wrong with the file itself is said before the mapping is asked for
    if format == "csv" and columns is None:
        if not is_parquet(labels):
            check_header(labels, decode(labels, data))
        raise DatasetError(ERR_NO_MAPPING.format(path=printable(labels)))
    return _read_labelled(path, labels, data, format, columns)


def resolve(path: str | os.PathLike, labels: str | os.PathLike | None = None, format: str | None = None,
            columns: Mapping | str | os.PathLike | None = None) -> tuple[Path, Path | None, str]:
    """(images root, labels file, format) as read_dataset will read them, without reading the labels."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DatasetError(ERR_NOT_FOUND.format(path=printable(path)))
    if format is not None and format not in FORMATS:
        raise DatasetError(ERR_FORMAT.format(format=format))
    if labels is None and not path.is_dir() and path.name.lower().endswith(LABEL_SUFFIXES):
        labels, path = path, path.parent  # named by the user: it may be a link to a file anywhere
    if labels is None and path.is_dir() and format in (None, "fairface"):
        labels = _fairface_csv_in(path)
    labels = Path(labels).expanduser() if labels is not None else None
    if labels is not None:  # before guessing a format from its header
        check_regular(labels)
    if format is None:
        format = "utkface" if labels is None else "fairface" if _is_fairface(labels) and columns is None else "csv"
    if format == "utkface" and labels is not None:
        raise DatasetError(ERR_UTK_LABELS)
    if format != "utkface" and labels is None:
        raise DatasetError(ERR_NEEDS_LABELS.format(format=format))
    return path, labels, format


def _read_utkface(path: Path) -> Dataset:
    s = scan(path)  # warns once about malformed names itself
    records = tuple(Record(x.member, float(x.age), None, x.gender, {"race": RACES[x.race]}) for x in s.samples)
    malformed = sorted(s.malformed)  # the scan lists them in walk order, which differs between disks
    problems = {SKIP_NAME: Problem(len(malformed), tuple(malformed[:EXAMPLES]))} if malformed else {}
    fingerprint = hashlib.sha256(f"utkface\n{s.fingerprint}".encode()).hexdigest()
    return Dataset(records, "chips", "utkface", ("race",), problems, fingerprint, path)


def _fairface_csv_in(folder: Path) -> Path | None:
    """The one FairFace CSV in a dataset folder. Found, not named by the user: a link out of the folder or a
    special file among its CSVs is refused before anything is opened."""
    found = []
    for p in sorted(folder.glob("*.csv")):
        if p.is_symlink() and not Path(os.path.realpath(p)).is_relative_to(os.path.realpath(folder)):
            raise DatasetError(ERR_LABELS_OUTSIDE.format(path=printable(p), target=printable(os.path.realpath(p))))
        if p.is_dir() or not p.exists():  # a folder called x.csv, a dangling link: not labels
            continue
        check_regular(p)
        if _is_fairface(p):
            found.append(p)
    return found[0] if len(found) == 1 else None


def _is_fairface(labels: Path) -> bool:
    """Whether the first line is FairFace's header, read as the csv module reads it (so quoted names count)."""
    if labels.suffix.lower() != ".csv":
        return False
    try:
        with open_regular(labels) as f:
            line = f.read(HEADER_BYTES).split(b"\n", 1)[0].decode("utf-8-sig")
    except (OSError, UnicodeDecodeError):  # SpecialFile is an OSError; read_labels says what is wrong
        return False
    header = tuple(c.strip() for c in next(csv.reader([line.strip()]), []))
    return header in (FAIRFACE_COLUMNS, (*FAIRFACE_COLUMNS, FAIRFACE_EXTRA))


def _mapping_for(format: str, columns) -> dict:
    if format == "fairface":
        return {"file": "file", "age_bin": "age", "gender": "gender", "groups": ["race"], "geometry": "photos",
                "gender_map": {}}
    return parse_columns(columns)


def _read_labelled(root: Path, labels: Path, data: bytes, format: str, columns) -> Dataset:
    m = _mapping_for(format, columns)
    df = read_table(labels, data)
    have = printable(", ".join(df.columns))
    for key, column in [(k, m[k]) for k in ("file", "age", "age_bin", "gender") if k in m] + \
            [("groups", g) for g in m["groups"]]:
        if column not in df.columns:
            raise DatasetError(ERR_MISSING_COLUMN.format(path=printable(labels), column=column, key=key, have=have))
    members = _members(root)
    problems, records, seen = _Problems(), [], set()
    for i, row in enumerate(df.to_dict("records"), start=2):  # row 1 is the header, as a spreadsheet counts
        rec, why = _record(row, m, format)
        where = f"row {i} ({printable(row[m['file']]) or 'no file'})"
        if rec is not None and rec.file not in members:
            rec, why = None, (SKIP_FILE, "")
        if rec is not None and rec.file in seen:
            rec, why = None, (SKIP_DUPLICATE, "")
        if rec is None:
            problems.add(why[0], f"{where}{': ' + repr(why[1]) if why[1] else ''}")
            continue
        seen.add(rec.file)
        records.append(rec)
    problems.warn()
    if not records:
        raise DatasetError(ERR_NO_RECORDS.format(path=printable(labels)))
    records = [Record(members[r.file][0], r.age, r.age_bin, r.gender, r.groups) for r in records]
    return Dataset(tuple(records), m["geometry"], format, tuple(m["groups"]), problems.summary(),
                   _fingerprint(format, m, data, records, members), root, labels)


def _record(row: dict, m: dict, format: str) -> tuple[Record | None, tuple[str, str]]:
    """One row -> a Record, or None with (reason, offending value)."""
    needed = [m["file"], m.get("age") or m["age_bin"], m["gender"], *m["groups"]]
    if any(not str(row[c]).strip() for c in needed):
        return None, (SKIP_MISSING, "")
    age = age_bin = None
    if "age" in m:
        try:
            age = float(row[m["age"]])
        except ValueError:
            return None, (SKIP_AGE, row[m["age"]])
        if not 0 <= age < math.inf:
            return None, (SKIP_AGE, row[m["age"]])
        if age > MAX_AGE:  # 300 is a typo or a trap, not an age: it would skew every mean
            return None, (SKIP_AGE_RANGE, row[m["age"]])
    else:
        try:
            age_bin = parse_age_bin(row[m["age_bin"]])
        except ValueError:
            return None, (SKIP_BIN, row[m["age_bin"]])
        if age_bin[0] > MAX_AGE:
            return None, (SKIP_AGE_RANGE, row[m["age_bin"]])
        if format == "fairface" and age_bin not in FAIRFACE_BINS:
            return None, (SKIP_BIN, row[m["age_bin"]])
    raw = row[m["gender"]].strip()
    gender = FAIRFACE_GENDERS.get(raw) if format == "fairface" else m["gender_map"].get(raw.casefold())
    if gender is None:
        return None, (SKIP_GENDER, raw)
    groups = {g: str(row[g]).strip() for g in m["groups"]}
    if format == "fairface" and groups["race"] not in FAIRFACE_RACES:
        return None, (SKIP_RACE, groups["race"])
    file = str(row[m["file"]]).strip().replace("\\", "/").removeprefix("./")  # as a listing writes it
    return Record(file, age, age_bin, gender, groups), ("", "")


def _members(root: Path) -> dict[str, tuple[str, int]]:
    """Image file names as the labels may write them -> (member at root, size). An archive whose images all
    sit under one top folder (as downloads often do) is also addressed without that folder."""
    kind, listed = list_images(root)
    out = {name: (name, size) for name, size in listed}
    tops = {name.split("/", 1)[0] for name, _ in listed}
    if kind != "folder" and len(tops) == 1 and all("/" in name for name, _ in listed):
        out.update({name.split("/", 1)[1]: (name, size) for name, size in listed})
    return out


def _fingerprint(format: str, m: dict, data: bytes, records: list[Record], members: dict) -> str:
    h = hashlib.sha256(f"{format}\n{json.dumps(m, sort_keys=True)}\n".encode())
    h.update(data)  # the bytes read, not the file read again: it may have changed since
    for r in sorted(records, key=lambda r: r.file):
        h.update(f"{r.file}\t{members[r.file][1]}\n".encode())
    return h.hexdigest()


def add_data_arguments(p: argparse.ArgumentParser) -> None:
    """--data, --labels, --format and --columns, as every command that reads a dataset takes them (the meaning is
    python -m agegender.evaluate's: read_dataset's arguments)."""
    p.add_argument("--data", required=True, help="the images: folder, .zip or .tar.gz (or the labels file)")
    p.add_argument("--labels", help="labels file (CSV or Parquet); file paths in it are relative to --data")
    p.add_argument("--format", choices=FORMATS, help="default: utkface without --labels, fairface for FairFace's "
                   "CSV, csv otherwise (as python -m agegender.evaluate)")
    p.add_argument("--columns", help="column mapping for --format csv, as python -m agegender.evaluate")
