"""The external check during training (``--external``): a labelled dataset other than the training data
(e.g. the FairFace sample) scored every ``--external-every`` epochs with the weights of that moment, into
history.csv beside UTKFace val, and its last figures into meta.json under ``external``.

A development check, reported only: the figures never enter the val score, early stopping or the choice of
the best epoch, and nothing should be tuned on them (a different sample judges the result). Scoring runs in
eval mode under inference mode, so it changes no weight and no BatchNorm statistic, and the global random
generators are restored around it, so the training that follows draws the numbers it would have drawn.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..data.datasets import Dataset, read_dataset
from ..data.utkface import DatasetError
from ..evaluation.evalset import Crops, dataset_crops
from .config import TrainConfig
from .runstate import EXTERNAL_FIELDS

if TYPE_CHECKING:
    from ..models.checkpoint import Checkpoint

log = logging.getLogger(__name__)

FIELDS = tuple(EXTERNAL_FIELDS)  # history.csv's columns for it: empty on the epochs not scored
ROLE = ("development check: reported only, never used for training, early stopping or the choice of the best "
        "epoch; its figures are of the weights at their epoch, the checkpoint holds best_epoch's")

ERR_PREFIX = "--external {path}: {detail}"
ERR_EVERY = "--external-every must be at least 1 (epochs), not {every}"
ERR_IS_TRAINING = ("--external {path} is the training dataset itself: pass a separate labelled set "
                   "(e.g. ../shared/datasets/FairFace-sample)")
ERR_NO_IMAGES = "--external {path}: no image could be decoded ({n} listed); see the warning above"


@contextlib.contextmanager
def rng_untouched():
    """torch's CPU, numpy's and Python's global random states as they were on entry, whatever runs inside."""
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)


@dataclass
class ExternalCheck:
    path: str
    every: int
    dataset: Dataset
    crops: Crops | None = None  # the aligned faces; loaded on the process that scores (rank 0) only

    @classmethod
    def open(cls, path: str, every: int, training_data: str) -> ExternalCheck:
        """Read the labels (seconds: no image decoded yet); a missing or unusable set raises DatasetError."""
        if every < 1:
            raise DatasetError(ERR_EVERY.format(every=every))
        try:
            ds = read_dataset(path)
        except (DatasetError, OSError) as e:
            raise DatasetError(ERR_PREFIX.format(path=path, detail=e)) from e
        if training_data and Path(ds.root).resolve() == Path(training_data).expanduser().resolve():
            raise DatasetError(ERR_IS_TRAINING.format(path=path))
        return cls(path, every, ds)

    def load_crops(self, size: int, cache_dir: str | None) -> None:
        """Every face aligned at the run's cache size, through evalset's on-disk cache."""
        t = time.perf_counter()
        with rng_untouched():
            self.crops = dataset_crops(self.dataset, size, cache_dir or None)
        if not self.crops.files:
            raise DatasetError(ERR_NO_IMAGES.format(path=self.path, n=len(self.dataset.records)))
        log.info("external check %s: %d images, %d faces found (%.1f s); scored every %d epochs and at the last",
                 self.path, len(self.crops.files), int(self.crops.found.sum()), time.perf_counter() - t, self.every)

    def due(self, epoch: int, last: bool) -> bool:
        """Whether epoch ``epoch`` (1-based) is scored: every ``every``-th, and the run's last."""
        return last or epoch % self.every == 0

    def score(self, ckpt: Checkpoint, tta: bool) -> dict:
        """The figures of the weights training's checkpoint ``ckpt`` holds now, predicted as evaluation predicts
        (its preprocessing, flip TTA when ``tta``), with the seconds it took."""
        from ..evaluation.evaluate import dataset_frame

        t = time.perf_counter()
        was_training = ckpt.model.training
        ckpt.model.eval()
        try:
            with rng_untouched():
                df = dataset_frame(ckpt, self.dataset, self.crops, tta)
        finally:
            ckpt.model.train(was_training)
        return {**figures(df, self.dataset.group_columns), "seconds": time.perf_counter() - t}

    def meta(self, history: list[dict], tta: bool) -> dict:
        """meta.json's ``external``: the set, and the figures of the last epoch scored (None if none was)."""
        last = next((r for r in reversed(history) if r.get("ext_n_found") not in (None, "")), None)
        return {
            "role": ROLE,
            "path": self.path,
            "format": self.dataset.format,
            "fingerprint": self.dataset.fingerprint,
            "n": len(self.crops.files) if self.crops is not None else None,
            "group_column": self.dataset.group_columns[0] if self.dataset.group_columns else None,
            "every": self.every,
            "tta": tta,
            "last": None if last is None else {"epoch": int(last["epoch"]), **from_cells(last)},
        }


def open_for_run(cfg: TrainConfig, dd) -> ExternalCheck | None:
    """--external read at the start, before any epoch: every rank reads the labels (seconds) and fails alike on
    a missing or unusable set; rank 0 alone aligns the faces and scores them, as it alone writes the history.
    Scoring on every rank would repeat the same seconds for figures no rank trains on; the others wait for
    rank 0 at the next collective (the time counts in every rank's budget alike)."""
    if not cfg.external:
        return None
    external = ExternalCheck.open(cfg.external, cfg.external_every, cfg.data)
    error = None
    if dd.main:
        try:
            external.load_crops(cfg.cache_size, cfg.cache_dir)
        except DatasetError as e:
            error = e
    if dd.any(error is not None):
        raise error or DatasetError(f"--external {cfg.external}: rank 0 could not read it (see its message)")
    return external


def figures(df, group_columns: tuple[str, ...]) -> dict:
    """A predictions table's figures for the check: faces found, gender and age-bin accuracy, age MAE (None
    without exact ages) and the best-to-worst gap in gender accuracy between the groups of the first group
    column with at least fairness.MIN_COUNT faces (None with fewer than two such groups)."""
    from ..fairness.groups import GroupReport
    from ..fairness.metrics import summary_of

    s = summary_of(df)
    gap = None
    if group_columns and s["n_found"]:
        d = GroupReport(df, group_columns[0], n_boot=0, metrics=["gender_accuracy"]).disparity()
        d = d[d["metric"] == "gender_accuracy"]
        gap = float(d["gap"].iloc[0]) if len(d) else None
    return {"n_found": s["n_found"], "gender_accuracy": s["gender_accuracy"],
            "age_bin_accuracy": s["age_bin_accuracy"], "age_mae": s["age_mae"], "gender_gap": gap}


def _cell(v, spec: str) -> str:
    return "" if v is None or not np.isfinite(v) else format(v, spec)


def history_cells(f: dict | None) -> dict:
    """history.csv's ext_ cells of ``figures`` (with ``seconds``); all empty for an epoch not scored."""
    if f is None:
        return dict.fromkeys(FIELDS, "")
    return {"ext_n_found": str(f["n_found"]), "ext_gender_acc": _cell(f["gender_accuracy"], ".5f"),
            "ext_age_bin_acc": _cell(f["age_bin_accuracy"], ".5f"), "ext_age_mae": _cell(f["age_mae"], ".4f"),
            "ext_gender_gap": _cell(f["gender_gap"], ".5f"), "ext_seconds": f"{f['seconds']:.1f}"}


def from_cells(row: dict) -> dict:
    """``history_cells`` read back (from a history row, kept across resumes): numbers, None where empty."""
    def num(key):
        v = row.get(key)
        return None if v in (None, "") else float(v)

    return {"n_found": int(num("ext_n_found")), "gender_accuracy": num("ext_gender_acc"),
            "age_bin_accuracy": num("ext_age_bin_acc"), "age_mae": num("ext_age_mae"),
            "gender_gap": num("ext_gender_gap"), "seconds": num("ext_seconds")}


def describe(f: dict) -> str:
    """One log line's worth of ``figures``."""
    def pct(v):
        return "n/a" if v is None else f"{v:.1%}"

    mae = "" if f["age_mae"] is None else f", age MAE {f['age_mae']:.2f}"
    return (f"{f['n_found']} faces, gender acc {pct(f['gender_accuracy'])}, age-bin acc "
            f"{pct(f['age_bin_accuracy'])}{mae}, group gender gap {pct(f['gender_gap'])} ({f['seconds']:.1f} s)")
