"""Evaluation sets and the results cache: labelled datasets registered by name, each checkpoint's
predictions on them kept once, and the cross-dataset view (checkpoints x evaluation sets).

The registry (evalsets.json) and the results live under the results folder ($AGEGENDER_RESULTS, else
<cache>/results), never in a checkpoint folder: a shipped checkpoint stays as shipped unless the caller
asks for a copy there (``save_into_checkpoint``). A result is keyed by what it depends on: the dataset's
fingerprint (its labels and files), the weights' sha256 and TTA. A retrained checkpoint or an edited
labels file is a new key, so a stale result is never served; the old files stay until removed.

A checkpoint's own predictions-val.csv and predictions-test.csv are sources too ("val", "test"), so
the cross-dataset view sets the in-distribution figures beside the others.

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

import numpy as np
import pandas as pd

from ..fairness import stats
from ..fairness.groups import (
    METRICS,
    MIN_COUNT,
    N_BOOT,
    SEED,
    GroupReport,
    found_mask,
    grouping_columns,
    headline_age_metric,
    parse_grouping,
    prepare,
    take,
)
from ..fairness.tables import COUNT, PERCENT, format_value, interval_text, metric_text
from ..meta import atomic_write, atomic_write_text, read_meta
from ..predictions import load_predictions, metric_columns, predictions_path, write_predictions

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
OWN_SPLITS = {"val": "UTKFace val", "test": "UTKFace test"}  # a checkpoint's own predictions files
# Also reserved: 'all' (the split of a dataset without splits), since predictions-<name>.csv in a checkpoint
# folder must never stand for one of its own splits.
RESERVED = (*OWN_SPLITS, "all")
NAME_RULE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]{0,62}[A-Za-z0-9_-])?")  # no trailing '.': Windows drops it
CROSS_DISPLAY = ("checkpoint", "set", "images", "faces found", "gender accuracy", "age MAE", "age bin accuracy",
                 "gender accuracy gap", "age gap", "note")
HEADLINE = ("gender_accuracy", "age_mae", "age_bin_accuracy")  # with a bootstrap interval each
GAP_METRICS = ("gender_accuracy", "age_mae", "age_bin_accuracy")  # best-to-worst group gap, with an interval
# per gap metric, cross_dataset's column suffix -> the disparity table's column (p, q: the test of "all equal")
GAP_FIGURES = {"gap": "gap", "gap_lo": "gap_lo", "gap_hi": "gap_hi", "gap_p": "p_value", "gap_q": "q_value"}
# cross_dataset's columns: figures with _lo / _hi (95% interval); per gap metric its gap, interval and groups
CROSS_COLUMNS = ("checkpoint", "checkpoint_path", "source", "set", "evaluated", "n", "n_found", "found_rate",
                 "age_metric", *(f"{m}{end}" for m in HEADLINE for end in ("", "_lo", "_hi")), "groups",
                 *(f"{m}_{part}" for m in GAP_METRICS for part in (*GAP_FIGURES, "best", "worst")), "note")

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
NOT_EVALUATED = "not evaluated yet"
NO_GROUPING = "no {grouping} column in this set"
FEW_GROUPS = "fewer than two {grouping} groups with {min_count} or more faces found"


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


def lookup(checkpoint_path: str | os.PathLike, set_name: str, tta: bool = True) -> Result | None:
    """The cached result of the checkpoint on the set as the dataset is now, or None: never computes."""
    folder = Path(checkpoint_path)
    es, sha = get_set(set_name), read_meta(folder)["weights_sha256"]
    fingerprint = es.read().fingerprint
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


HEADLINE_FIGURES = ("n", "n_found", "gender_accuracy", "age_mae", "age_bin_accuracy")


def headline_row(checkpoint_path: str | os.PathLike, res: Result | None) -> dict:
    """One checkpoint's headline figures on a set (empty, and marked not evaluated, without a result)."""
    m = res.metrics if res is not None else {}
    return {"checkpoint": Path(checkpoint_path).name, **{k: m.get(k) for k in HEADLINE_FIGURES},
            "evaluated": m.get("evaluated_at", NOT_EVALUATED)}


def sources() -> list[str]:
    """What a predictions picker offers: a checkpoint's own val and test, then each registered set."""
    return [*OWN_SPLITS, *(s.name for s in list_sets())]


def source_label(source: str) -> str:
    """How a source is named to a reader: "UTKFace val", or the set's name."""
    return OWN_SPLITS.get(source, source)


def predictions_file(checkpoint_path: str | os.PathLike, source: str, tta: bool = True) -> Path | None:
    """Where the checkpoint's predictions table for ``source`` is: its own predictions-val.csv or
    predictions-test.csv for "val" / "test", else the results cache's for the registered set of that
    name as the dataset is now; None when the checkpoint has not been evaluated on it yet. Raises
    ResultsError for an unknown set, DatasetError for a set that can no longer be read, CheckpointError
    for a folder that is no checkpoint."""
    if source in OWN_SPLITS:
        read_meta(checkpoint_path)  # a clear error for a folder that is no checkpoint
        p = predictions_path(checkpoint_path, source)
        return p if p.is_file() else None
    found = lookup(checkpoint_path, source, tta)
    return None if found is None else found.predictions


def load_result(checkpoint_path: str | os.PathLike, source: str, tta: bool = True) -> pd.DataFrame:
    """The predictions table of predictions_file; ResultsError when not evaluated yet."""
    p = predictions_file(checkpoint_path, source, tta)
    if p is None:
        raise ResultsError(ERR_NOT_EVALUATED.format(checkpoint=Path(checkpoint_path).name, source=source_label(source)))
    return load_predictions(path=p)


# ---- the cross-dataset view -------------------------------------------------------------------------------

def _headline(cols: dict, hit: np.ndarray, rng: np.random.Generator, n_boot: int) -> dict:
    """The headline metrics over the faces found, with a bootstrap 95% interval (the same draws for each)."""
    out = {}
    c = take(cols, hit)
    sample = stats.resample(c, stats.draws(len(hit), n_boot, rng)) if len(hit) else None
    for name in HEADLINE:
        fn = METRICS[name].fn
        v = float(fn(c)) if len(hit) else np.nan
        lo, hi = stats.interval(fn(sample), min_finite=2) if sample is not None and np.isfinite(v) \
            else (np.nan, np.nan)
        out.update({name: v, f"{name}_lo": lo, f"{name}_hi": hi})
    return out


def _gaps(t: pd.DataFrame, headline: dict, grouping: str, n_boot: int, seed: int, min_count: int) -> dict:
    """Per GAP_METRICS: the bias report's disparity (GroupReport.disparity, groups with ``min_count`` faces
    found or more): the gap between the best and the worst group, its 95% interval (simultaneous over the
    groups, agegender.fairness.stats.gap), the test of "all groups equal" (p, and q over the gap metrics) and the
    two groups' names; with why there is none in ``note``."""
    out: dict = {"groups": 0, "note": ""}
    for name in GAP_METRICS:
        out.update({f"{name}_{part}": np.nan for part in GAP_FIGURES} | {f"{name}_best": "", f"{name}_worst": ""})
    try:
        parse_grouping(grouping, grouping_columns(t))
    except ValueError:
        return {**out, "note": NO_GROUPING.format(grouping=grouping)}
    rep = GroupReport(t, grouping, n_boot=n_boot, seed=seed, min_count=min_count, metrics=list(GAP_METRICS),
                      overall=headline)
    out["groups"] = int((rep.by_group["n"] >= min_count).sum()) if len(rep.by_group) else 0
    if out["groups"] < 2:
        return {**out, "note": FEW_GROUPS.format(grouping=grouping, min_count=min_count)}
    for r in rep.disparity().to_dict("records"):
        name = r["metric"]
        out.update({f"{name}_{part}": r[column] for part, column in GAP_FIGURES.items()}
                   | {f"{name}_best": r["best_group"], f"{name}_worst": r["worst_group"]})
    return out


def cell_figures(df: pd.DataFrame, grouping: str = "race", min_count: int = MIN_COUNT, n_boot: int = N_BOOT,
                 seed: int = SEED) -> dict:
    """One predictions table's row of the cross-dataset view: images, faces found, the headline metrics
    with a bootstrap 95% interval and the best-to-worst group gaps with theirs and the test of "all equal"."""
    t = prepare(df)
    found = found_mask(t)
    cols = metric_columns(t)
    rng = np.random.default_rng(seed)  # the headline's draws; the gaps draw from their own (GroupReport's)
    n, n_found = len(t), int(found.sum())
    headline = _headline(cols, np.flatnonzero(found), rng, n_boot)
    return {"n": n, "n_found": n_found, "found_rate": n_found / n if n else np.nan,
            "age_metric": headline_age_metric(t), **headline, **_gaps(t, headline, grouping, n_boot, seed, min_count)}


def cross_dataset(checkpoint_paths: list[str | os.PathLike], set_names: list[str] | None = None,
                  grouping: str = "race", tta: bool = True, min_count: int = MIN_COUNT, n_boot: int = N_BOOT,
                  seed: int = SEED) -> pd.DataFrame:
    """One row per (checkpoint, source) of ``set_names`` (default: sources(), the checkpoints' own val and
    test first): cell_figures of its predictions, or ``evaluated`` False with the figures missing where the
    checkpoint has not been evaluated on it (never computed here). Each set is read once, for its
    fingerprint; a set that can no longer be read gives its error in ``note``."""
    from ..data.utkface import DatasetError

    names = list(set_names) if set_names is not None else sources()
    fingerprints: dict[str, str | Exception] = {}
    for s in names:
        if s not in OWN_SPLITS:
            try:
                fingerprints[s] = get_set(s).read().fingerprint
            except DatasetError as e:
                fingerprints[s] = e
    rows = []
    for ckpt in map(Path, checkpoint_paths):
        sha = read_meta(ckpt)["weights_sha256"]
        for s in names:
            row = {"checkpoint": ckpt.name, "checkpoint_path": str(ckpt), "source": s, "set": source_label(s)}
            path, why = _cell_path(ckpt, s, fingerprints.get(s), sha, tta)
            if path is None:
                rows.append({**row, "evaluated": False, "note": why})
                continue
            rows.append({**row, "evaluated": True,
                         **cell_figures(load_predictions(path=path), grouping, min_count, n_boot, seed)})
    out = pd.DataFrame(rows)
    return out.reindex(columns=CROSS_COLUMNS) if len(out) else pd.DataFrame(columns=CROSS_COLUMNS)


def _cell_path(ckpt: Path, source: str, fingerprint: str | Exception | None, sha: str, tta: bool
               ) -> tuple[Path | None, str]:
    if source in OWN_SPLITS:
        p = predictions_path(ckpt, source)
        return (p, "") if p.is_file() else (None, NOT_EVALUATED)
    if isinstance(fingerprint, Exception):
        return None, str(fingerprint)
    csv, js = _result_files(source, fingerprint, sha, tta)
    return (csv, "") if _cached(csv, js, fingerprint, sha, tta) is not None else (None, NOT_EVALUATED)


def _with_interval(r: dict, name: str) -> str:
    v = r.get(name)
    if v is None or not np.isfinite(v):
        return format_value(None)
    return f"{metric_text(name, v)} {interval_text(name, r[f'{name}_lo'], r[f'{name}_hi'])}"


def _gap_text(r: dict, name: str) -> str:
    gap = r.get(f"{name}_gap")
    if not isinstance(name, str) or gap is None or not np.isfinite(gap):
        return format_value(None)
    lo, hi = (metric_text(name, r[f"{name}_gap_{end}"], delta=True, signed=False) for end in ("lo", "hi"))
    q = r.get(f"{name}_gap_q")
    test = "" if q is None or not np.isfinite(q) else \
        f", q = {q:.2g}" + (" (within noise)" if q >= stats.ALPHA else "")
    return (f"{metric_text(name, gap, delta=True, signed=False)} [{lo}, {hi}]{test}: "
            f"worst {r[f'{name}_worst']}, best {r[f'{name}_best']}")


def cross_display(df: pd.DataFrame) -> pd.DataFrame:
    """cross_dataset's table as a reader sees it: rates as percentages and ages in years, each figure with
    its 95% interval, each gap with its interval, its q (the test of "all groups equal"; "within noise" when
    q >= 0.05) and its worst and best group; the age gap is on the set's headline age
    metric (MAE where it has exact ages, bin accuracy where it has bins only)."""
    rows = []
    for r in df.to_dict("records"):
        rows.append({
            "checkpoint": r["checkpoint"], "set": r["set"],
            "images": format_value(r["n"], COUNT), "faces found": format_value(r["found_rate"], PERCENT),
            "gender accuracy": _with_interval(r, "gender_accuracy"), "age MAE": _with_interval(r, "age_mae"),
            "age bin accuracy": _with_interval(r, "age_bin_accuracy"),
            "gender accuracy gap": _gap_text(r, "gender_accuracy"), "age gap": _gap_text(r, r["age_metric"]),
            "note": r["note"] if isinstance(r["note"], str) else "",
        })
    return pd.DataFrame(rows, columns=CROSS_DISPLAY)
