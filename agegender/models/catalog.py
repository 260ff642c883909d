"""Where checkpoints and the dataset are, which checkpoints there are, their meta.json read without
torch, their headline figures and whether those say the checkpoint learnt anything. Imports no
torch, so the dashboard shell can render before the models load."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from pathlib import Path

from ..meta import META, WEIGHTS, CheckpointError, read_meta, soup_runs  # noqa: F401 - WEIGHTS re-exported for the dashboard

REPO_CHECKPOINTS = Path(__file__).resolve().parents[2] / "checkpoints"
DATA_ENV = "AGEGENDER_UTKFACE"
DATA_FIELD = "UTKFace dataset (error explorer)"  # the sidebar field where a reviewer types the UTKFace path

# Health: what the validation figures in meta.json say about a checkpoint (see health()).
MIN_VAL_N = 100  # at 100 images chance accuracy (0.5) is 2 standard errors below GENDER_CHANCE
GENDER_CHANCE = 0.6  # gender accuracy or AUC at or below this is no better than guessing
AGE_MAE_FACTOR = 0.7  # x age_scale: always guessing the training mean scores 0.75 of it on UTKFace
HEALTH_NO_VAL = "no validation figures (metrics.val in meta.json): training stopped before evaluating it"
HEALTH_FEW = "only {n} validation images (under {min_n}): too few to show that it learnt anything"
HEALTH_MISSING = "validation {figure} is {value}"
HEALTH_CHANCE = "validation {figure} {value:.2f} is no better than chance ({limit:.2f} or less)"
HEALTH_SCALE = "age_scale in meta.json is {value}, not a positive number"
HEALTH_AGE = ("validation age MAE {value:.1f} y is no better than always guessing the mean training age "
              "({limit:.1f} y or more: {factor} x the {scale:.1f} y spread of the training ages)")
FLAGGED = ("{name} looks untrained or diverged: {reason}. It still works; "
           "read its predictions with that in mind.")


def list_checkpoints(root: str | os.PathLike) -> list[Path]:
    """Folders under ``root`` that hold a meta.json, sorted by name."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if (p / META).is_file())


def default_pick(paths: list[Path]) -> list[Path]:
    """The checkpoint a fresh session starts on: the first usable one (its meta.json sound) trained without
    bias mitigation (the baseline a mitigated one is read against), else the first usable; none where none is
    usable (a session, or the dashboard's warm-up, never starts on a checkpoint that cannot load)."""
    usable = []
    for p in paths:
        try:
            meta = read_meta(p)
        except CheckpointError:
            continue
        if not meta.get("balance"):
            return [p]
        usable.append(p)
    return usable[:1]


def problem_of(path: str | os.PathLike) -> str | None:
    """Why the checkpoint folder at ``path`` cannot be used (its meta.json missing, unreadable, too big, nested
    too deep, or breaking agegender.metaschema: the CheckpointError's message), or None. Never raises for
    what a folder holds, so one bad checkpoint cannot take a picker or a table down with it."""
    try:
        read_meta(path)
    except CheckpointError as e:
        return str(e)
    return None


def trained_at(path: str | os.PathLike) -> float:
    """When a checkpoint was trained, as a file time: its weights file's modification time (training
    writes it at each new best epoch and evaluation never rewrites it, whereas meta.json is rewritten
    by every evaluation, and holds no training date); meta.json's where there are no weights; 0.0
    where neither can be read."""
    for name in (WEIGHTS, META):
        try:
            return (Path(path) / name).stat().st_mtime
        except OSError:
            continue
    return 0.0


def most_recent(paths: list[Path], n: int = 2) -> list[Path]:
    """The ``n`` most recently trained of ``paths`` (trained_at; a tie goes by name), oldest first, so
    that the first is the baseline a comparison reads the newer one against."""
    return _by_age(paths)[-n:] if n > 0 else []


def compare_pick(picked: list[Path], paths: list[Path], untouched: bool, n: int = 2) -> list[Path]:
    """What the compare page opens on when fewer than ``n`` checkpoints are picked: the ``n`` most
    recent of ``paths`` while the picker holds what a fresh session starts on (``untouched``),
    else the ones picked with the most recent others added. ``picked`` itself when it holds ``n`` or
    more, or when ``paths`` has too few to add."""
    if len(picked) >= n:
        return picked
    if untouched:
        pick = most_recent(paths, n)
        return pick if len(pick) >= n else picked
    added = [p for p in _by_age(paths) if p not in picked][len(picked) - n:]
    return picked + added if len(picked) + len(added) >= n else picked


def _by_age(paths: list[Path]) -> list[Path]:
    """Oldest first (trained_at); a tie goes by name."""
    return sorted(paths, key=lambda p: (trained_at(p), p.name))


def default_data_path(checkpoints: Iterable[str | os.PathLike] = ()) -> str:
    """Where the UTKFace images are: $AGEGENDER_UTKFACE, else the first of ``checkpoints``' training data
    (trained_on) found on this machine, else empty."""
    if os.environ.get(DATA_ENV):
        return os.environ[DATA_ENV]
    for folder in checkpoints:
        for path in trained_on(folder):
            if Path(path).expanduser().exists():
                return path
    return ""


def trained_on(checkpoint: str | os.PathLike) -> list[str]:
    """The data paths a checkpoint's meta.json records (its training run's, and each souped run's), those
    recorded with the fingerprint its val predictions were scored on first; [] when meta.json cannot be read.
    A relative path is as recorded, relative to where training ran."""
    try:
        meta = read_meta(checkpoint)
    except CheckpointError:
        return []
    runs = [meta, *soup_runs(meta)]
    scored = ((meta.get("metrics") or {}).get("val") or {}).get("dataset_fingerprint")
    recorded = [(str(r["train_config"]["data"]), r.get("dataset_fingerprint")) for r in runs
                if isinstance(r.get("train_config"), dict) and r["train_config"].get("data")]
    first = sorted(recorded, key=lambda r: not (scored and r[1] == scored))  # stable: else as recorded
    return list(dict.fromkeys(path for path, _ in first))


def default_root() -> Path:
    """$AGEGENDER_CHECKPOINTS, else the checkpoints/ folder of this repository."""
    return Path(os.environ.get("AGEGENDER_CHECKPOINTS", REPO_CHECKPOINTS))


def _number(value) -> float | None:
    """A finite number, else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def health(meta: dict) -> str | None:
    """Why the validation figures say this checkpoint is untrained or diverged (each reason that
    applies, joined by "; "), or None when they do not. The rule: validation figures exist, on at
    least MIN_VAL_N images, all finite; gender accuracy and AUC above GENDER_CHANCE; age MAE below
    AGE_MAE_FACTOR x age_scale, the standard deviation of the training ages (always guessing their
    mean scores about 0.8 x that on a normal spread of ages, 0.75 x on UTKFace's)."""
    val = (meta.get("metrics") or {}).get("val")
    if not isinstance(val, dict) or not val:
        return HEALTH_NO_VAL
    figures = {"n": "image count", "age_mae": "age MAE", "gender_accuracy": "gender accuracy",
               "gender_auc": "gender AUC"}
    reasons = []
    for key, figure in figures.items():
        if _number(val.get(key)) is None:
            value = val.get(key)
            reasons.append(HEALTH_MISSING.format(figure=figure, value="missing" if value is None else value))
    n = _number(val.get("n"))
    if n is not None and n < MIN_VAL_N:
        reasons.append(HEALTH_FEW.format(n=int(n), min_n=MIN_VAL_N))
    for key in ("gender_accuracy", "gender_auc"):
        value = _number(val.get(key))
        if value is not None and value <= GENDER_CHANCE:
            reasons.append(HEALTH_CHANCE.format(figure=figures[key], value=value, limit=GENDER_CHANCE))
    scale, mae = _number(meta.get("age_scale")), _number(val.get("age_mae"))
    if scale is None or scale <= 0:
        value = meta.get("age_scale")
        reasons.append(HEALTH_SCALE.format(value="missing" if value is None else value))
    elif mae is not None and mae >= AGE_MAE_FACTOR * scale:
        reasons.append(HEALTH_AGE.format(value=mae, limit=AGE_MAE_FACTOR * scale, factor=AGE_MAE_FACTOR,
                                         scale=scale))
    return "; ".join(reasons) or None


def health_of(path: str | os.PathLike) -> str | None:
    """health() of the checkpoint folder at ``path``; a meta.json that cannot be read is a reason too."""
    try:
        return health(read_meta(path))
    except CheckpointError as e:
        return str(e)


# The summary table's figure columns and the metric each holds (agegender.fairness.tables formats them so).
SUMMARY_METRICS = {"test n": "n", "test age MAE": "age_mae", "test CS@5": "age_cs5", "test age bias": "age_bias",
                   "test gender acc": "gender_accuracy", "test gender AUC": "gender_auc"}


def summary_table(root: str | os.PathLike | None = None, paths: list[Path] | None = None):
    """One row per checkpoint folder in ``root`` (or per folder in ``paths``), as a DataFrame:
    architecture, input, training and test figures, and its health ("ok" or why it looks untrained
    or diverged). A folder that cannot be read gets a row with its problem instead of breaking the
    table."""
    import pandas as pd

    rows = []
    for path in list_checkpoints(root or default_root()) if paths is None else paths:
        try:
            meta = read_meta(path)
        except CheckpointError as e:
            rows.append({"checkpoint": path.name, "problem": str(e)})
            continue
        test = (meta.get("metrics") or {}).get("test") or {}
        cfg = meta.get("train_config", {})
        rows.append({
            "checkpoint": path.name,
            "health": health(meta) or "ok",
            "arch": meta["arch"],
            "input px": meta["preprocess"]["input_size"],
            "epochs": meta.get("epochs_run"),
            "train min": meta.get("train_minutes"),
            "test n": test.get("n"),
            "test age MAE": test.get("age_mae"),
            "test CS@5": test.get("age_cs5"),
            "test age bias": test.get("age_bias"),
            "test gender acc": test.get("gender_accuracy"),
            "test gender AUC": test.get("gender_auc"),
            "balance": cfg.get("balance"),
            "problem": None,
        })
    return pd.DataFrame(rows)
