"""A checkpoint's meta.json and its file names, and the one way files are written here (atomically); and
the records in meta.json that more than one module parses: the age interval's calibration (Calibration,
calibration_of; evaluation.intervals makes it, models.interval applies it, models.checkpoint parses it at load).
Imports no torch: the catalog, the dashboard shell and the model card read checkpoints through it
before, or without, loading a model."""

from __future__ import annotations

import hashlib
import json
import math
import os
import stat
import tempfile
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from itertools import pairwise
from pathlib import Path

import numpy as np

from . import __version__, metaschema
from .labels import printable

FORMAT = "agegender-checkpoint/1"
META = "meta.json"  # the file that makes a folder a checkpoint
WEIGHTS = "model.safetensors"
REQUIRED_META = tuple(name for name, required, *_ in metaschema.RULES if required and "." not in name)

# Error messages are constants so tests can assert them word for word.
ERR_NO_FOLDER = "checkpoint folder {path} does not exist"
ERR_NO_META = "{path} is not a checkpoint folder: {META} is missing"
ERR_BAD_META = "{path}/{META} is corrupt ({detail}); restore the folder or retrain"
NOT_A_FILE = "not a regular file"  # ERR_BAD_META's detail: a FIFO, a device, a socket
TOO_BIG = f"over {metaschema.MAX_BYTES} bytes"  # ERR_BAD_META's detail


class CheckpointError(Exception):
    """A checkpoint folder that cannot be used; the message says which file and why."""


@contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary path beside ``path`` to write to; it replaces ``path`` only when the block
    ends without an error, so a reader (or a run killed mid-write) never sees half a file. The
    temporary name, ``.NAME.tmpXXXXXXXX``, is unique per writer, and training's resume clears any
    a kill left behind."""
    path = Path(path)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the files we write are meant to be read
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


ERR_OUTPUT = "cannot write {path}: {detail}"
WHY_NO_FOLDER = "its folder does not exist"
WHY_NOT_A_FILE = "it is a folder, a device or a FIFO, not a file (a write would replace it or block on it)"


def output_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot take an output file a user named, said before any work (an evaluation is minutes): its
    folder is missing, or it exists as something other than a file or a link, which atomic_write would replace
    (a cache's own files may be; a user's /dev/full or FIFO may not); None when it can."""
    path = Path(path)
    if not path.parent.is_dir():
        return WHY_NO_FOLDER
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return None
    return None if stat.S_ISREG(mode) or stat.S_ISLNK(mode) else WHY_NOT_A_FILE


def write_failure(path: str | os.PathLike, e: OSError) -> str:
    """One line for a write that failed (a full disk, no permission, a bad output path)."""
    return ERR_OUTPUT.format(path=printable(str(path)), detail=e.strerror or e)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_write(path) as tmp:
        tmp.write_text(text)


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def soup_runs(meta: dict) -> list[dict]:
    """The records of the runs a soup averages (train.soup writes them); [] for a checkpoint trained as one run."""
    return list((meta.get("soup") or {}).get("runs") or [])


def write_meta(folder: str | os.PathLike, meta: dict) -> None:
    meta = {"format": FORMAT, "code_version": __version__, **meta}
    atomic_write_text(Path(folder) / META, json.dumps(meta, indent=2, sort_keys=False) + "\n")


def read_meta(path: str | os.PathLike, archs: Collection[str] | None = None) -> dict:
    """A checkpoint's meta.json, read within bounds (a regular file of at most metaschema.MAX_BYTES, nested at
    most metaschema.MAX_DEPTH deep) and checked whole against metaschema before anything uses a value: one
    CheckpointError (ERR_BAD_META) naming the file and every field that is wrong. ``archs``: the known
    architectures; agegender.models.checkpoint.read_meta passes the registry's (this module imports no torch)."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(ERR_NO_FOLDER.format(path=printable(path)))
    if not (path / META).exists():  # a FIFO or a device in its place is there, and refused by _read_bounded
        raise CheckpointError(ERR_NO_META.format(path=printable(path), META=META))
    meta = _parse(path)
    problems = metaschema.violations(meta, archs)
    if problems:
        raise CheckpointError(ERR_BAD_META.format(path=printable(path), META=META, detail="; ".join(problems)))
    return meta


def _read_bounded(path: Path) -> bytes:
    """meta.json's bytes: opened without blocking (a FIFO would wait for a writer forever) and read only if what was
    opened is a regular file, never past MAX_BYTES (a sparse file of gigabytes, or one still growing, costs no
    memory)."""
    fd = os.open(path / META, os.O_RDONLY | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise CheckpointError(ERR_BAD_META.format(path=printable(path), META=META, detail=NOT_A_FILE))
        data = f.read(metaschema.MAX_BYTES + 1)
    if len(data) > metaschema.MAX_BYTES:
        raise CheckpointError(ERR_BAD_META.format(path=printable(path), META=META, detail=TOO_BIG))
    return data


def _parse(path: Path) -> dict:
    """meta.json parsed: a JSON object nested at most MAX_DEPTH deep; else CheckpointError saying which."""
    try:
        meta = json.loads(_read_bounded(path).decode("utf-8"))
    except OSError as e:
        raise CheckpointError(ERR_BAD_META.format(path=printable(path), META=META,
                                                  detail=f"unreadable: {e.strerror}")) from e
    except RecursionError as e:  # the parser's own recursion limit: deeper than any depth check could run on
        raise CheckpointError(ERR_BAD_META.format(path=printable(path), META=META,
                                                  detail=metaschema.TOO_DEEP)) from e
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(ERR_BAD_META.format(path=printable(path), META=META,
                                                  detail=f"not JSON: {printable(e)}")) from e
    if not isinstance(meta, dict):
        raise CheckpointError(ERR_BAD_META.format(path=printable(path), META=META, detail="not a JSON object"))
    if metaschema.depth(meta) > metaschema.MAX_DEPTH:
        raise CheckpointError(ERR_BAD_META.format(path=printable(path), META=META, detail=metaschema.TOO_DEEP))
    return meta


# ---- meta.json's age_interval: the calibration evaluation.intervals makes and models.interval applies --------

KEY = "age_interval"  # meta.json's key
CQR, RESIDUAL = "cqr", "residual"  # a distribution's quantiles conformalised; a regression head's |error|
BY_AGE = {CQR: "cqr-by-predicted-age", RESIDUAL: "residual-by-predicted-age"}  # the same, one t per bucket
FIELDS = ("method", "coverage", "quantiles", "t", "n_cal", "split", "data", "dataset_fingerprint",
          "weights_sha256", "tta")
BUCKET_FIELDS = ("edges", "t_by_bucket", "n_by_bucket")
FIELDS_BY_AGE = (*FIELDS[:3], *BUCKET_FIELDS, *FIELDS[4:])  # "t" replaced by one per bucket

CALIBRATE = "python -m agegender.intervals --checkpoint {path} --data UTKFACE_PATH"
ERR_MALFORMED = "{path}/" + META + " has a malformed " + KEY + " record ({detail}): recalibrate with " + CALIBRATE
ERR_STALE = ("{path}/" + META + "'s " + KEY + " was calibrated for other weights (sha256 {theirs:.12}, these are "
             "{ours:.12}): recalibrate with " + CALIBRATE)


class IntervalError(CheckpointError):
    """A checkpoint's age_interval record that cannot be used; the message says why and how to recalibrate."""

def levels(coverage: float) -> tuple[float, float]:
    """The base interval's quantile levels: the central ``coverage`` of the distribution."""
    return round((1 - coverage) / 2, 12), round((1 + coverage) / 2, 12)  # 0.1, not 0.09999999999999998


def edges_ok(edges) -> bool:
    """Lower edges of age buckets: from 0, increasing."""
    return len(edges) > 0 and edges[0] == 0 and all(b > a for a, b in pairwise(edges))


def bucket_of(age, edges: Sequence[float]) -> np.ndarray:
    """Each age's bucket: the index of the last lower edge at or below it (below the first: the first)."""
    return np.clip(np.searchsorted(np.asarray(edges, np.float64), np.asarray(age, np.float64), "right") - 1, 0, None)

@dataclass(frozen=True)
class Calibration:
    method: str  # CQR or RESIDUAL; by predicted age, BY_AGE[CQR] or BY_AGE[RESIDUAL]
    coverage: float  # the target, 1 - alpha
    quantiles: tuple[float, ...]  # CQR: the base interval's levels (levels(coverage)); RESIDUAL: none
    t: float | None  # years each end moves out (negative: in); None by predicted age (t_by_bucket)
    n_cal: int  # validation faces it was computed on
    split: str  # which split of the checkpoint's manifest
    data: str  # the dataset's folder name, as captions say it: "UTKFace"
    dataset_fingerprint: str  # agegender.data.utkface.Scan.fingerprint of the data calibrated on
    weights_sha256: str  # the weights it holds for
    tta: bool  # whether the predictions were averaged with the mirror image
    edges: tuple[float, ...] = ()  # by predicted age: each bucket's lower edge in years, from 0, the last open
    t_by_bucket: tuple[float, ...] = ()  # by predicted age: each bucket's t
    n_by_bucket: tuple[int, ...] = ()  # by predicted age: each bucket's validation faces

    @property
    def base(self) -> str:
        """The base interval's kind, CQR or RESIDUAL, whether or not t is per bucket."""
        return next((m for m, b in BY_AGE.items() if b == self.method), self.method)

    def shifts(self, age) -> np.ndarray:
        """Each face's t, from its predicted age ``age`` (by predicted age) or not."""
        if not self.edges:
            return np.float64(self.t)
        return np.asarray(self.t_by_bucket, np.float64)[bucket_of(age, self.edges)]

    def to_json(self) -> dict:
        d = {**asdict(self), **{k: list(getattr(self, k)) for k in ("quantiles", *BUCKET_FIELDS)}}
        return {k: d[k] for k in (FIELDS_BY_AGE if self.edges else FIELDS)}

    @classmethod
    def from_json(cls, rec, path) -> Calibration:
        """A record read back, every field checked; IntervalError (ERR_MALFORMED) saying what is wrong."""
        problem = _problem(rec)
        if problem:
            raise IntervalError(ERR_MALFORMED.format(path=path, detail=problem))
        by_age = {"t": None, "edges": tuple(rec["edges"]), "n_by_bucket": tuple(rec["n_by_bucket"]),
                  "t_by_bucket": tuple(map(float, rec["t_by_bucket"]))} if "edges" in rec else {"t": float(rec["t"])}
        return cls(**{**rec, "coverage": float(rec["coverage"]), "quantiles": tuple(rec["quantiles"]), **by_age})

    def buckets(self) -> list[str]:
        """The predicted-age buckets' names, "0-2" ... "70+"; none for a single t."""
        e = self.edges
        return [f"{a:g}-{b - 1:g}" for a, b in pairwise(e)] + [f"{e[-1]:g}+"] if e else []

    def caption(self) -> str:
        """Where the interval comes from, in a few words: "80% interval, calibrated on UTKFace val"."""
        return f"{self.coverage:.0%} interval, calibrated on {self.data} {self.split}"


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _count(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x > 0


def _bucket_problem(rec) -> str | None:
    """What is wrong with a by-predicted-age record's buckets, or None."""
    edges, ts, ns = rec["edges"], rec["t_by_bucket"], rec["n_by_bucket"]
    if not (isinstance(edges, list) and all(map(_number, edges)) and edges_ok(edges)):
        return "edges must be a list of increasing ages in years, from 0"
    if not (isinstance(ts, list) and len(ts) == len(edges) and all(map(_number, ts))):
        return "t_by_bucket must hold a finite number of years for each of the edges"
    if not (isinstance(ns, list) and len(ns) == len(edges) and all(map(_count, ns)) and sum(ns) == rec["n_cal"]):
        return "n_by_bucket must hold a positive count for each of the edges, adding up to n_cal"
    return None


def _problem(rec) -> str | None:
    """What is wrong with an age_interval record read from meta.json, or None."""
    if not isinstance(rec, dict):
        return "not a JSON object"
    by_age = rec.get("method") in BY_AGE.values() or any(k in rec for k in BUCKET_FIELDS)
    fields = FIELDS_BY_AGE if by_age else FIELDS
    missing, unknown = [k for k in fields if k not in rec], [k for k in rec if k not in fields]
    if missing or unknown:
        return "; ".join(([f"missing {', '.join(missing)}"] if missing else [])
                         + ([f"unknown {', '.join(unknown)}"] if unknown else []))
    methods = tuple(BY_AGE.values()) if by_age else (CQR, RESIDUAL)
    checks = [
        (rec["method"] in methods, f"method must be {methods[0]} or {methods[1]}"),
        (_number(rec["coverage"]) and 0 < rec["coverage"] < 1, "coverage must be a number between 0 and 1"),
        (by_age or _number(rec["t"]), "t must be a finite number of years"),
        (_count(rec["n_cal"]), "n_cal must be a positive integer"),
        (isinstance(rec["tta"], bool), "tta must be true or false"),
        (all(isinstance(rec[k], str) for k in ("split", "data", "dataset_fingerprint", "weights_sha256")),
         "split, data, dataset_fingerprint and weights_sha256 must be strings"),
    ]
    for ok, detail in checks:
        if not ok:
            return detail
    if by_age and _bucket_problem(rec):
        return _bucket_problem(rec)
    want = list(levels(rec["coverage"])) if rec["method"] in (CQR, BY_AGE[CQR]) else []
    q = rec["quantiles"]
    if not (isinstance(q, list) and len(q) == len(want) and all(map(_number, q))
            and np.allclose(q, want, rtol=0, atol=1e-9)):
        return f"quantiles {q} do not match a {rec['method']} interval of coverage {rec['coverage']}: expected {want}"
    return None

def calibration_of(meta: dict, path) -> Calibration | None:
    """A checkpoint's calibration (meta its meta.json, ``path`` its folder), None when it has none;
    IntervalError for a malformed record, or one made for other weights or another kind of age head."""
    if KEY not in meta:
        return None
    cal = Calibration.from_json(meta[KEY], path)
    ours = str(meta.get("weights_sha256"))
    if cal.weights_sha256 != ours:
        raise IntervalError(ERR_STALE.format(path=path, theirs=cal.weights_sha256, ours=ours))
    head = CQR if int(meta.get("age_bins", 0)) else RESIDUAL
    if cal.base != head:
        raise IntervalError(ERR_MALFORMED.format(path=path, detail=f"method {cal.method}, but the age head "
                                                 f"calls for {head}"))
    return cal
