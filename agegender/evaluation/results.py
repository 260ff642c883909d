"""Evaluation sets and the results cache: labelled datasets registered by name, and each checkpoint's
predictions on them kept once.

The registry (evalsets.json) and the results live under the results folder ($AGEGENDER_RESULTS, else
<cache>/results), never in a checkpoint folder: a shipped checkpoint stays as shipped unless the caller
asks for a copy there (``save_into_checkpoint``). A result is keyed by what it depends on: the dataset's
fingerprint (its labels and files), the weights' sha256 and TTA. A retrained checkpoint or an edited
labels file is a new key, so a stale result is never served; the old files stay until removed.

A checkpoint's own predictions-val.csv and predictions-test.csv are sources too (agegender.evaluation.sources
owns what differs between the kinds), and agegender.evaluation.crossdata sets each checkpoint's figures on every
source side by side.

Imports no torch: reading a dataset (agegender.data.datasets reads images through agegender.data.utkface) and
running a model are imported inside the functions that do them.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..meta import atomic_write, atomic_write_text, read_meta
from ..predictions import OWN_SPLITS, predictions_path, write_predictions

if TYPE_CHECKING:  # evalset imports torch; this module stays without it
    from .evalset import Progress

log = logging.getLogger(__name__)

RESULTS_ENV = "AGEGENDER_RESULTS"
CACHE_ENV = "AGEGENDER_CACHE"  # as data.utkface.default_cache_dir reads it (data reads images: not imported here)
FAIRFACE_ENV = "AGEGENDER_FAIRFACE"
REGISTRY = "evalsets.json"
SETS_FOLDER = "sets"  # results/sets/<name>/: one folder of results per evaluation set
FAIRFACE_SAMPLE = "fairface-sample"  # the name the FairFace sample is registered under when found
# Where the FairFace sample is, when $AGEGENDER_FAIRFACE is unset: this key of the dashboard's own config file
# (.streamlit/secrets.toml in the folder it runs from, as Streamlit reads it), never a path built in here
FAIRFACE_KEY = "fairface_sample"
CONFIG_FILE = Path(".streamlit") / "secrets.toml"
# Reserved as set names: a checkpoint's own splits, and 'all' (the split of a dataset without splits), since
# predictions-<name>.csv in a checkpoint folder must never stand for one of its own splits.
RESERVED = (*OWN_SPLITS, "all")
NAME_RULE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]{0,62}[A-Za-z0-9_-])?")  # no trailing '.': Windows drops it

# Messages are constants so tests can assert them word for word.
ERR_NAME = ("cannot use {name!r} as an evaluation set name: use 1 to 64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit and not ending with '.'")
ERR_RESERVED = "{name!r} names a checkpoint's own predictions: pick another name for the evaluation set"
ERR_EXISTS = "an evaluation set named {name!r} is already registered ({path}): remove it first, or pick another name"
ERR_UNKNOWN = "no evaluation set named {name!r}: register it first (registered: {known})"
ERR_REGISTRY = "cannot read the evaluation set registry {path} ({detail}): fix the file or delete it"
ERR_INSIDE_CHECKPOINT = ("the results folder {results} lies inside the checkpoint folder {checkpoint}: point "
                         "$" + RESULTS_ENV + " elsewhere (results are never written into a checkpoint unless asked)")
ERR_SAVE = "cannot save the predictions into {path} ({detail})"
ERR_NOT_EVALUATED = "{checkpoint} has not been evaluated on {source} yet: evaluate it on the Evaluation sets page"
NO_FACE = "no face found in any of the {n} images of {name}: are these photos of faces?"


class ResultsError(ValueError):
    """An evaluation set or a result that cannot be used; the message says why and what to do."""


# ---- where things are -------------------------------------------------------------------------------------

def results_dir() -> Path:
    """$AGEGENDER_RESULTS, else <cache>/results (the cache: $AGEGENDER_CACHE, else ~/.cache/agegender, as
    agegender.data.utkface.default_cache_dir)."""
    if os.environ.get(RESULTS_ENV):
        return Path(os.environ[RESULTS_ENV]).expanduser()
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "agegender")).expanduser() / "results"


def registry_path() -> Path:
    return results_dir() / REGISTRY


def set_folder(name: str) -> Path:
    return results_dir() / SETS_FOLDER / name


# ---- the registry -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class EvalSet:
    """A registered dataset, as read_dataset reads it: paths resolved at registration, so the dashboard's
    working folder does not matter; ``images`` etc. as of registration (for listing without reading)."""

    name: str
    path: str
    labels: str | None = None
    format: str | None = None
    columns: str | dict | None = None  # the column mapping of format csv, as agegender.data.datasets takes it
    images: int = 0
    geometry: str = ""
    skipped: int = 0

    def read(self):
        """The dataset now (agegender.data.datasets.Dataset); DatasetError when it can no longer be read."""
        from ..data.datasets import read_dataset

        return read_dataset(self.path, self.labels, self.format, self.columns)


def check_name(name: str) -> str:
    """``name`` when it is a usable set name (safe as a folder and a file name on any disk), else ResultsError."""
    if not isinstance(name, str) or not NAME_RULE.fullmatch(name):
        raise ResultsError(ERR_NAME.format(name=name))
    if name.lower() in RESERVED:
        raise ResultsError(ERR_RESERVED.format(name=name))
    return name


def _read_registry() -> list[EvalSet]:
    path = registry_path()
    if not path.is_file():
        return []
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))["sets"]
        return [EvalSet(**e) for e in entries]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise ResultsError(ERR_REGISTRY.format(path=path, detail=e)) from e


def _write_registry(sets: list[EvalSet]) -> None:
    path = registry_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps({"sets": [asdict(s) for s in sets]}, indent=2) + "\n")


def list_sets() -> list[EvalSet]:
    """The registered sets, in registration order. The first listing (no registry file yet) registers the
    FairFace sample when it is found (seed_registry)."""
    if not registry_path().exists():
        seed_registry()
    return _read_registry()


def get_set(name: str) -> EvalSet:
    for s in list_sets():
        if s.name == name:
            return s
    known = ", ".join(s.name for s in list_sets()) or "none"
    raise ResultsError(ERR_UNKNOWN.format(name=name, known=known))


def _columns_arg(columns: str | Mapping | os.PathLike | None) -> str | dict | None:
    """The column mapping as the registry keeps it: a .toml file by its absolute path, a blank string as none."""
    if columns is None or isinstance(columns, Mapping):
        return dict(columns) if columns else None
    text = str(columns).strip()
    if not text:
        return None
    return str(Path(text).expanduser().resolve()) if text.lower().endswith(".toml") else text


def register(name: str, path: str | os.PathLike, labels: str | os.PathLike | None = None, format: str | None = None,
             columns: str | Mapping | os.PathLike | None = None) -> EvalSet:
    """Register a dataset under ``name`` after reading it once (agegender.data.datasets.read_dataset, whose
    DatasetError comes back as it is). Raises ResultsError for a bad or taken name."""
    check_name(name)
    for s in list_sets():
        if s.name.lower() == name.lower():  # one folder per set, and some disks ignore case
            raise ResultsError(ERR_EXISTS.format(name=s.name, path=s.path))
    from ..data.datasets import ERR_LABELS_MISSING, resolve
    from ..data.utkface import DatasetError

    columns = _columns_arg(columns)
    labels = str(labels).strip() if labels is not None and str(labels).strip() else None
    if labels is not None and not Path(labels).expanduser().is_file():  # before resolve guesses a format from it
        raise DatasetError(ERR_LABELS_MISSING.format(path=Path(labels).expanduser()))
    root, labels_file, fmt = resolve(path, labels, format or None, columns)
    es = EvalSet(name, str(root.resolve()), None if labels_file is None else str(labels_file.resolve()), fmt, columns)
    ds = es.read()
    es = EvalSet(**{**asdict(es), "images": len(ds.records), "geometry": ds.geometry, "skipped": ds.skipped})
    _write_registry([*_read_registry(), es])
    return es


def remove(name: str, delete_results: bool = False) -> None:
    """Unregister a set; its cached results stay (a set registered again under the name reuses them)
    unless ``delete_results``."""
    sets = list_sets()
    get_set(name)
    _write_registry([s for s in sets if s.name != name])
    if delete_results:
        shutil.rmtree(set_folder(name), ignore_errors=True)


def fairface_sample(config: str | os.PathLike = CONFIG_FILE) -> Path | None:
    """The FairFace sample's folder: $AGEGENDER_FAIRFACE when set, else ``fairface_sample`` in the TOML file
    ``config``; None when neither names a folder (a config file that cannot be read is logged and ignored)."""
    env = os.environ.get(FAIRFACE_ENV)
    if env is None:
        try:
            import tomllib  # Python 3.11+; older ones set $AGEGENDER_FAIRFACE

            with open(config, "rb") as f:
                env = tomllib.load(f).get(FAIRFACE_KEY)
        except FileNotFoundError:
            return None
        except (ImportError, OSError, ValueError) as e:  # tomllib.TOMLDecodeError is a ValueError
            log.warning("not reading %s for %s: %s", config, FAIRFACE_KEY, e)
            return None
    p = Path(str(env)).expanduser() if env else None
    return p if p is not None and p.is_dir() else None


def seed_registry() -> None:
    """Start a fresh registry with the FairFace sample when it is found, so a reviewer has a set out of
    UTKFace's distribution at once. Once only: the registry file then exists, and a set removed stays removed."""
    from ..data.utkface import DatasetError

    _write_registry([])  # first: register() lists the sets, which would seed again
    found = fairface_sample()
    if found is None:
        return
    try:
        register(FAIRFACE_SAMPLE, found)
    except (DatasetError, ResultsError, OSError) as e:  # a sample that cannot be read is left out, not an error
        log.warning("not registering the FairFace sample at %s: %s", found, e)


# ---- results ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Result:
    set_name: str
    checkpoint: Path
    predictions: Path  # the predictions table in the results cache
    metrics: dict
    reused: bool  # read from the cache, not computed now
    saved_to: Path | None = None  # the copy in the checkpoint folder, when asked for

    @property
    def problem(self) -> str:
        """Why the figures say nothing (no face found at all), or ""."""
        m = self.metrics
        return NO_FACE.format(n=m.get("n", 0), name=self.set_name) if not m.get("n_found") else ""


def _result_files(name: str, fingerprint: str, weights_sha256: str, tta: bool) -> tuple[Path, Path]:
    stem = set_folder(name) / f"{fingerprint[:16]}-{weights_sha256[:16]}-{'tta' if tta else 'notta'}"
    return stem.with_suffix(".csv"), stem.with_suffix(".json")


def _cached(csv: Path, js: Path, fingerprint: str, sha: str, tta: bool) -> dict | None:
    """The metrics of a cached result that is whole and is the one asked for, else None."""
    if not (csv.is_file() and js.is_file()):
        return None
    try:
        m = json.loads(js.read_text())
    except (OSError, ValueError) as e:
        log.warning("ignoring a damaged result %s (%s)", js, e)
        return None
    same = (m.get("dataset_fingerprint"), m.get("weights_sha256"), m.get("tta")) == (fingerprint, sha, tta)
    return m if same else None


def _outside(checkpoint: Path) -> None:
    results, ckpt = results_dir().resolve(), checkpoint.resolve()
    if results.is_relative_to(ckpt):
        raise ResultsError(ERR_INSIDE_CHECKPOINT.format(results=results, checkpoint=ckpt))


def lookup(checkpoint_path: str | os.PathLike, set_name: str, tta: bool = True,
           fingerprint: str | None = None) -> Result | None:
    """The cached result of the checkpoint on the set as the dataset is now (``fingerprint``: the set's, when the
    caller has read it already), or None: never computes."""
    folder = Path(checkpoint_path)
    es, sha = get_set(set_name), read_meta(folder)["weights_sha256"]
    fingerprint = fingerprint or es.read().fingerprint
    csv, js = _result_files(es.name, fingerprint, sha, tta)
    metrics = _cached(csv, js, fingerprint, sha, tta)
    return None if metrics is None else Result(es.name, folder, csv, metrics, True)


def evaluate(checkpoint_path: str | os.PathLike, set_name: str, progress: Progress | None = None,
             save_into_checkpoint: bool = False, tta: bool = True, load: Callable | None = None) -> Result:
    """The checkpoint's predictions and metrics on a registered set: from the results cache when there,
    else computed (``progress(stage, done, total)`` through both stages, evaluate.evaluate_dataset) and
    cached. Written into the checkpoint folder, as predictions-<set>.csv, only with ``save_into_checkpoint``.
    ``load`` loads a checkpoint (default models.checkpoint.load_checkpoint; the dashboard passes its cached loader).
    Raises DatasetError, CheckpointError or ResultsError with a one-line message."""
    folder = Path(checkpoint_path)
    es = get_set(set_name)
    sha = read_meta(folder)["weights_sha256"]
    _outside(folder)
    ds = es.read()
    csv, js = _result_files(es.name, ds.fingerprint, sha, tta)
    metrics = _cached(csv, js, ds.fingerprint, sha, tta)
    reused = metrics is not None
    if not reused:
        metrics = _compute(folder, es, ds, sha, tta, progress, load, csv, js)
    saved = _save_into(folder, es.name, csv) if save_into_checkpoint else None
    return Result(es.name, folder, csv, metrics, reused, saved)


def _compute(folder: Path, es: EvalSet, ds, sha: str, tta: bool, progress, load, csv: Path, js: Path) -> dict:
    from ..models.checkpoint import load_checkpoint
    from .evaluate import evaluate_dataset

    t0 = time.perf_counter()
    ckpt = (load or load_checkpoint)(folder)
    df, m = evaluate_dataset(ckpt, ds, tta, progress=progress)
    m = {**m, "set": es.name, "checkpoint": str(folder), "weights_sha256": sha, "tta": tta,
         "data": es.path, "labels": es.labels, "seconds": round(time.perf_counter() - t0, 2),
         "evaluated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    csv.parent.mkdir(parents=True, exist_ok=True)
    write_predictions(df, csv)
    atomic_write_text(js, json.dumps(m, indent=2) + "\n")  # last: a result counts once its metrics are there
    return m


def _save_into(folder: Path, name: str, csv: Path) -> Path:
    out = predictions_path(folder, name)
    try:
        with atomic_write(out) as tmp:
            shutil.copyfile(csv, tmp)
    except OSError as e:
        raise ResultsError(ERR_SAVE.format(path=out, detail=e)) from e
    return out
