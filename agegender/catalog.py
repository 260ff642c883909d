"""Where checkpoints and the dataset are, and which checkpoints there are, with their headline
figures. Imports no torch, so the dashboard shell can render before the models load."""

from __future__ import annotations

import os
from pathlib import Path

REPO_CHECKPOINTS = Path(__file__).resolve().parents[1] / "checkpoints"
META = "meta.json"  # the file that makes a folder a checkpoint
WEIGHTS = "model.safetensors"
DATA_ENV = "AGEGENDER_UTKFACE"


def list_checkpoints(root: str | os.PathLike) -> list[Path]:
    """Folders under ``root`` that hold a meta.json, sorted by name."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if (p / META).is_file())


def default_pick(paths: list[Path]) -> list[Path]:
    """The checkpoint a fresh session starts on: the first trained without bias mitigation (the
    baseline a mitigated one is read against), else the first."""
    import json

    for p in paths:
        try:
            if not json.loads((p / META).read_text()).get("balance"):
                return [p]
        except (OSError, ValueError):
            continue
    return paths[:1]


def default_data_path() -> str:
    """$AGEGENDER_UTKFACE, or empty."""
    return os.environ.get(DATA_ENV, "")


def default_root() -> Path:
    """$AGEGENDER_CHECKPOINTS, else the checkpoints/ folder of this repository."""
    return Path(os.environ.get("AGEGENDER_CHECKPOINTS", REPO_CHECKPOINTS))


def summary_table(root: str | os.PathLike | None = None):
    """One row per checkpoint folder (a DataFrame): architecture, input, training and test figures.
    A folder that cannot be read gets a row with its problem instead of breaking the table."""
    import pandas as pd

    from .checkpoint import CheckpointError, read_meta

    rows = []
    for path in list_checkpoints(root or default_root()):
        try:
            meta = read_meta(path)
        except CheckpointError as e:
            rows.append({"checkpoint": path.name, "problem": str(e)})
            continue
        test = (meta.get("metrics") or {}).get("test") or {}
        cfg = meta.get("train_config", {})
        rows.append({
            "checkpoint": path.name,
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
