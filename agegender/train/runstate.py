"""A training run's resume state: where the run stands (RunState), and the files it keeps while it runs,
each written atomically so that a kill at any moment leaves the last whole version."""

from __future__ import annotations

import csv
import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, safe_open, save_file

from ..meta import atomic_write
from .balance import CellLosses
from .config import TrainConfig

STATE = "train_state.safetensors"  # weights, optimiser, augmentation stream and a RunState; gone once finished
HISTORY = "history.csv"
HISTORY_FIELDS = [
    "epoch", "step", "lr", "train_loss", "train_age_mae", "train_gender_acc",
    "val_age_mae", "val_gender_acc", "val_score", "epoch_seconds", "train_img_per_s",
]
# the external check's (agegender.train.external, --external): written when a run has one, empty on epochs not scored
EXTERNAL_FIELDS = ["ext_n_found", "ext_gender_acc", "ext_age_bin_acc", "ext_age_mae", "ext_gender_gap", "ext_seconds"]


@dataclass
class Stats:
    """An epoch's running training figures, as sums: every process's, and every session's of a resumed
    epoch, add up."""

    loss: float = 0.0  # the batch loss times its images
    age_error: float = 0.0  # |predicted - true| years
    gender_correct: float = 0.0
    images: float = 0.0

    def add(self, loss: torch.Tensor, pred_age: torch.Tensor, age: torch.Tensor, logit: torch.Tensor,
            female: torch.Tensor) -> None:
        self.loss += loss.item() * len(age)
        self.age_error += (pred_age - age).abs().sum().item()
        self.gender_correct += ((logit >= 0) == (female >= 0.5)).sum().item()
        self.images += len(age)

    def to_list(self) -> list[float]:
        return [self.loss, self.age_error, self.gender_correct, self.images]

    def means(self) -> tuple[float, float, float]:
        """Mean loss, age MAE and gender accuracy."""
        return self.loss / self.images, self.age_error / self.images, self.gender_correct / self.images


@dataclass
class RunState:
    """Where a run stands. The resume state holds it as JSON beside the tensors (the keys of
    ``to_json``, unchanged since before this class), and a resumed run reads it back."""

    cells: CellLosses  # loss balancing's per-cell sums and weights
    epoch: int = 0  # epochs finished
    step_in_epoch: int = 0  # steps done in the epoch under way
    global_step: int = 0  # optimiser steps over the run: the learning rate's clock
    best_score: float | None = None
    best_epoch: int | None = None
    best_sha256: str | None = None  # of model.safetensors, which holds the best epoch's weights
    bad_epochs: int = 0  # epochs since the best, for --patience
    stopped_early: bool = False
    elapsed: float = 0.0  # seconds trained by the sessions before this one
    history: list[dict] = field(default_factory=list)  # history.csv's rows
    train: Stats = field(default_factory=Stats)  # the epoch under way's

    def to_json(self, cfg: TrainConfig, elapsed: float) -> dict:
        """The JSON the resume state holds; ``elapsed``: all the seconds trained so far, this session's too."""
        return {"epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "global_step": self.global_step,
                "best_score": self.best_score, "best_epoch": self.best_epoch, "best_sha256": self.best_sha256,
                "bad_epochs": self.bad_epochs, "history": self.history, "elapsed": elapsed,
                "sums": self.train.to_list(), "config": dataclasses.asdict(cfg),
                "stopped_early": self.stopped_early, **self.cells.to_json()}

    @classmethod
    def from_json(cls, info: dict, cells: CellLosses) -> RunState:
        cells.load_json(info)
        names = ("epoch", "step_in_epoch", "global_step", "best_score", "best_epoch", "best_sha256",
                 "bad_epochs", "stopped_early", "elapsed", "history")
        return cls(cells=cells, train=Stats(*info["sums"]), **{k: info[k] for k in names})


def read_info(path: Path) -> dict:
    """The resume state's JSON alone (a resumed run reads its config from it before building anything)."""
    with safe_open(str(path), "pt") as f:
        return json.loads(f.metadata()["info"])


def save_state(path: Path, model, opt, aug_gen: torch.Generator, info: dict) -> None:
    """fp32 weights (BatchNorm statistics too), Adam's moments, the augmentation stream and ``info``
    (RunState.to_json): all a run needs to go on bit for bit where it stopped."""
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    for i, st in opt.state_dict()["state"].items():
        for k, v in st.items():
            tensors[f"opt.{i}.{k}"] = torch.as_tensor(v).cpu().contiguous()
    tensors["rng.aug"] = aug_gen.get_state()
    with atomic_write(path) as tmp:
        save_file(tensors, str(tmp), metadata={"info": json.dumps(info)})


def load_state(path: Path, model, opt, aug_gen: torch.Generator, cells: CellLosses) -> RunState:
    """save_state undone: fills ``model``, ``opt``, ``aug_gen`` and ``cells`` in place."""
    tensors = load_file(str(path))
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    sd = opt.state_dict()
    state: dict[int, dict] = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, i, name = k.split(".", 2)
            state.setdefault(int(i), {})[name] = v
    sd["state"] = state
    opt.load_state_dict(sd)
    aug_gen.set_state(tensors["rng.aug"])
    return RunState.from_json(read_info(path), cells)


def history_row(epoch: int, state: RunState, lr: float, train: Stats, mae: float, acc: float, score: float,
                 secs: float) -> dict:
    """history.csv's row for an epoch; the external check's cells (external.history_cells) are added to it."""
    loss, train_mae, train_acc = train.means()
    return {"epoch": epoch + 1, "step": state.global_step, "lr": f"{lr:.6g}", "train_loss": f"{loss:.5f}",
            "train_age_mae": f"{train_mae:.4f}", "train_gender_acc": f"{train_acc:.5f}",
            "val_age_mae": f"{mae:.4f}", "val_gender_acc": f"{acc:.5f}", "val_score": f"{score:.4f}",
            "epoch_seconds": f"{secs:.1f}", "train_img_per_s": f"{train.images / secs:.1f}"}


def write_history(path: Path, rows: list[dict]) -> None:
    """history.csv: HISTORY_FIELDS, then EXTERNAL_FIELDS when any row has them (a row without: empty cells)."""
    external = [k for k in EXTERNAL_FIELDS if any(k in r for r in rows)]
    with atomic_write(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=HISTORY_FIELDS + external)
        w.writeheader()
        w.writerows(rows)


def partial_writes(out: Path) -> list[Path]:
    """Temporary files a kill cut short; the files they were meant to replace are whole.

    atomic_write's are named `.NAME.tmpXXXXXXXX` (mkstemp; `.NAME.tmpPID` before it); safetensors itself writes
    through a `.tmpXXXXXX` file (Rust's tempfile crate) before it renames into place, so a kill inside
    `save_file` leaves one of those."""
    return [p for p in out.glob(".*") if p.is_file() and re.fullmatch(r"\..+\.tmp\w+|\.tmp\w{6}", p.name)]
