"""Bias mitigation in training: group-balanced sampling, or loss reweighting by each group's error.

Groups are cells of any of ethnicity, gender, age bucket and pose (``--balance-by``; pose is the chip's
|yaw| in faces.quality's groups, measured by agegender.train.chippose into ``labels["abs_yaw"]``). Sampling draws rare
cells more often. Loss reweighting instead weights each cell by how badly the model did on it in
the previous epoch, separately per head: the groups the age head fails (the old, mostly White) are
not the ones the gender head fails (babies, mostly Asian), so one weight cannot serve both.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ..faces.quality import POSE_EDGES, POSE_LABELS
from ..labels import AGE_BUCKET_EDGES, GENDERS, RACES, age_bucket, gender_name

FACTORS = {"race": "ethnicity", "gender": "gender", "age_bucket": "age bucket", "pose": "pose"}


def parse_by(by: str) -> tuple[str, ...]:
    keys = tuple(k.strip() for k in by.split(",") if k.strip())
    bad = [k for k in keys if k not in FACTORS]
    if not keys or bad or len(set(keys)) != len(keys):
        raise ValueError(f"--balance-by takes a comma list of distinct {', '.join(FACTORS)}, not {by!r}")
    return keys


def groups(labels: dict[str, np.ndarray], by: tuple[str, ...]) -> tuple[np.ndarray, list[str]]:
    """Each image's cell id, and the names of all possible cells ("White / female / 20-29"). The pose factor
    reads labels["abs_yaw"]; a chip without a measured yaw (NaN) counts as frontal."""
    codes = {
        "race": (labels["race"].astype(np.int64), RACES),
        "gender": (labels["gender"].astype(np.int64), [gender_name(g) for g in range(len(GENDERS))]),
        "age_bucket": (np.searchsorted(np.array(AGE_BUCKET_EDGES), labels["age"], side="right") - 1,
                       [age_bucket(e) for e in AGE_BUCKET_EDGES]),
    }
    if "pose" in by:
        yaw = np.nan_to_num(np.asarray(labels["abs_yaw"], np.float64), nan=0.0)
        codes["pose"] = (np.searchsorted(np.array(POSE_EDGES), yaw, side="right"), list(POSE_LABELS))
    cell = np.zeros(len(labels["age"]), dtype=np.int64)
    names = [""]
    for k in by:
        c, n = codes[k]
        cell = cell * len(n) + c
        names = [f"{a} / {b}" if a else b for a in names for b in n]
    return cell, names


def sampling_weights(cell: np.ndarray, names: list[str], by: tuple[str, ...], power: float) -> tuple[np.ndarray, dict]:
    """Per-image draw probabilities, count(cell) ** -power, and a description for meta.json."""
    counts = np.bincount(cell, minlength=len(names))
    w = counts[cell].astype(np.float64) ** -power
    share = np.bincount(cell, weights=w, minlength=len(names)) / w.sum()
    by_cell = {names[c]: {"count": int(counts[c]), "share_of_data": round(counts[c] / len(cell), 5),
                          "share_of_draws": round(float(share[c]), 5)} for c in np.flatnonzero(counts)}
    return w / w.sum(), {"method": "sampling", "power": power, "cells": " x ".join(FACTORS[k] for k in by),
                         "by_cell": by_cell}


def loss_weights(stats: np.ndarray, power: float, min_count: int = 20, strata: np.ndarray | None = None) -> np.ndarray:
    """Per-cell loss weights for the next epoch from this epoch's per-cell sums.

    ``stats`` is (cells, 3): summed age error, summed gender loss, image count. A cell's weight for a
    head is (its mean loss / the overall mean loss) ** power, so power 0 is plain training and a cell
    twice as hard as average counts 2 ** power times as much. With ``strata`` (each cell's stratum
    id, see ``strata_of_cells``), a cell is measured against the mean of its own stratum instead, so
    that "White / 70+" is compared with other 70+ cells, not with babies. Cells seen fewer than
    ``min_count`` times keep weight 1: their mean is too noisy to act on. Returns (cells, 2): age, gender."""
    n = stats[:, 2]
    w = np.ones((len(stats), 2))
    strata = np.zeros(len(stats), dtype=np.int64) if strata is None else strata
    for s in np.unique(strata):
        seen = (n >= min_count) & (strata == s)
        for head in (0, 1):
            overall = stats[strata == s, head].sum() / max(n[strata == s].sum(), 1)
            if overall > 0:
                w[seen, head] = (stats[seen, head] / n[seen] / overall) ** power
    return w


class CellLosses:
    """Loss balancing over a run: each cell's summed age error (years), summed gender loss and image
    count over the epoch under way, and the per-head weights the last finished epoch's sums gave
    (1 before the first). The resume state saves both and reads them back."""

    def __init__(self, cells: int):
        self.sums = torch.zeros(cells, 3, dtype=torch.float64)  # float64: a whole epoch's sums, exact enough
        self.weights = np.ones((cells, 2))  # age, gender

    def start_epoch(self) -> None:
        self.sums.zero_()

    def add(self, cells: torch.Tensor, age_error: torch.Tensor, gender_loss: torch.Tensor) -> None:
        """One batch: each image's cell, absolute age error and gender loss."""
        per = torch.stack([age_error, gender_loss, torch.ones_like(age_error)], 1).cpu().double()
        self.sums.index_add_(0, cells, per)

    def image_weights(self, cells: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Each image's (age, gender) loss weight, by its cell."""
        w = torch.as_tensor(self.weights, dtype=torch.float32)[cells].to(device)
        return w[:, 0], w[:, 1]

    def end_epoch(self, power: float, strata: np.ndarray | None,
                  total: Callable[[list[float]], list[float]] = lambda v: v) -> None:
        """The next epoch's weights from this epoch's sums; ``total`` adds up every process's sums
        (Dist.sum under torchrun), so all of them weight alike."""
        stats = np.array(total(self.sums.flatten().tolist())).reshape(-1, 3)
        self.weights = loss_weights(stats, power, strata=strata)

    def to_json(self) -> dict:
        return {"cell_stats": self.sums.tolist(), "cell_weights": self.weights.tolist()}

    def load_json(self, d: dict) -> None:
        self.sums = torch.tensor(d["cell_stats"], dtype=torch.float64).reshape(-1, 3)
        self.weights = np.array(d["cell_weights"], dtype=np.float64).reshape(-1, 2)


def check_within(method: str, by: tuple[str, ...], within: str) -> None:
    if method != "loss" or within not in by or len(by) < 2:
        raise ValueError(f"--balance-within needs --balance loss and one of at least two --balance-by factors "
                         f"({', '.join(by)}), not {within!r}")


def strata_of_cells(labels: dict[str, np.ndarray], by: tuple[str, ...], within: str) -> np.ndarray:
    """For ``--balance-within``: each cell's stratum (its value of the ``within`` factor, one of ``by``)."""
    check_within("loss", by, within)
    cell, names = groups(labels, by)
    stratum, _ = groups(labels, (within,))
    out = np.zeros(len(names), dtype=np.int64)
    out[cell] = stratum  # each cell holds one value of the within factor
    return out


def describe_loss_weights(weights: np.ndarray, counts: np.ndarray, names: list[str], by: tuple[str, ...],
                          power: float, within: str = "") -> dict:
    by_cell = {names[c]: {"count": int(counts[c]), "age_weight": round(float(weights[c, 0]), 4),
                          "gender_weight": round(float(weights[c, 1]), 4)} for c in np.flatnonzero(counts)}
    against = f"mean of its {FACTORS[within]}" if within else "overall mean"
    out = {"method": "loss", "power": power, "cells": " x ".join(FACTORS[k] for k in by),
           "rule": f"weight = (cell's mean training loss last epoch / {against}) ** power, per head",
           "by_cell": by_cell}
    return {**out, "within": FACTORS[within]} if within else out
