"""The checkpoints a dashboard or a report can offer, with their headline figures."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from .checkpoint import CheckpointError, list_checkpoints, read_meta

REPO_CHECKPOINTS = Path(__file__).resolve().parents[1] / "checkpoints"


def default_root() -> Path:
    """$AGEGENDER_CHECKPOINTS, else the checkpoints/ folder of this repository."""
    return Path(os.environ.get("AGEGENDER_CHECKPOINTS", REPO_CHECKPOINTS))


def summary_table(root: str | os.PathLike | None = None) -> pd.DataFrame:
    """One row per checkpoint folder: architecture, input, training and test figures.
    A folder that cannot be read gets a row with its problem instead of breaking the table."""
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
