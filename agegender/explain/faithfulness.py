"""Are the heat maps faithful, for every group? ROAD per head and CAM method against a random map.

For each face, head and method: the grad-cam package's ROADCombined over 20/40/60/80% of the pixels
(``PERCENTILES``), the same for the package's RandomCAM on the same face, and their paired difference. Per group
(race, gender, age bucket, and overall) the mean difference gets a bootstrap interval from the statistics core;
a method "beats random" for a group when that interval lies above 0.

Sign: ROADCombined returns (LeRF - MoRF) / 2, each the mean over the percentiles of the target's change when
those pixels are imputed (least relevant first, most relevant first). A map that marks what the model uses
loses little when its least relevant pixels go and much when its most relevant do: higher is better, in the
target's units (years for age, by the checkpoint's age scaling; logit of P(female) for gender). So is the
difference method - random.

The targets are gradcam.MAPS' (``HEAD_MAPS``): age is the regression output itself ("older"), gender the logit
of P(female). The CAMs are drawn the way gradcam.explain draws them, on a private copy of the network's tail.
The command (reading a source's faces) is agegender.evaluation.faithfulness_command; the predict page reads
the JSON it writes through read_report and method_label / method_note.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from pytorch_grad_cam import RandomCAM
from pytorch_grad_cam.metrics.road import ROADCombined

from ..fairness import stats
from ..fairness.faithful import (
    HEAD_MAPS,
    OVERALL,
    SIGN,
)
from ..fairness.groups import MIN_COUNT
from .gradcam import MAPS, HeadTarget, _Suffix

PERCENTILES = (20, 40, 60, 80)  # shares of the pixels imputed, most and least relevant first
UNITS = {"age": "years", "gender": "logit"}
RANDOM = "RandomCAM"
SAMPLE = 200  # faces of a source, evenly spread: benchmarks/faithfulness.py times one
GROUPINGS = ("race", "gender", "age_bucket")
N_BOOT = 1000
SEED = 0


@dataclass
class FaceScores:
    """Per face ROAD scores: ``road[(head, method)]`` one value per face, ``RANDOM`` among the methods."""

    road: dict[tuple[str, str], list[float]]

    def add(self, scores: dict[tuple[str, str], float]) -> None:
        for k, v in scores.items():
            self.road.setdefault(k, []).append(v)


def _cams(suffix: _Suffix, xs: torch.Tensor, cam_class, targets) -> np.ndarray:
    with torch.enable_grad(), cam_class(model=suffix, target_layers=[suffix.target_layer]) as cam:
        return cam(input_tensor=xs, targets=targets)


def face_road(model, x: torch.Tensor, methods: Mapping[str, type], layer: str | None = None, age_scale: float = 1.0,
              percentiles: Sequence[int] = PERCENTILES) -> dict[tuple[str, str], float]:
    """ROADCombined of one preprocessed face (1 x 3 x H x W) for each head and each of ``methods`` (name -> CAM
    class, gradcam.METHODS' or any class the package's way) plus RANDOM: {(head, method): score}, age in years
    (``age_scale``), gender in logit."""
    layer = next(iter(model.cam_layers)) if layer is None else layer
    suffix = _Suffix(model, layer).to(x.device)
    heads = list(HEAD_MAPS)
    xs = x.detach().repeat(len(heads), 1, 1, 1)  # one view per head, one CAM call explains both
    suffix.cached = (xs, suffix.features(x).expand(len(heads), -1, -1, -1))
    targets = [HeadTarget(*MAPS[HEAD_MAPS[h]]) for h in heads]
    road = ROADCombined(percentiles=list(percentiles))
    out = {}
    for method, cam_class in [*methods.items(), (RANDOM, RandomCAM)]:
        heats = _cams(suffix, xs, cam_class, targets)
        scores = road(xs, heats, targets, suffix)
        for i, h in enumerate(heads):
            out[(h, method)] = float(scores[i]) * (age_scale if h == "age" else 1.0)
    return out


def score_faces(model, inputs: Callable[[int], torch.Tensor], n: int, methods: Mapping[str, type],
                layer: str | None = None, age_scale: float = 1.0, seed: int = SEED,
                progress: Callable[[int, int], None] | None = None) -> FaceScores:
    """face_road of ``n`` faces (``inputs(i)``: face i preprocessed). RandomCAM's weights and ROAD's imputation
    noise come from numpy's and torch's global generators: both are seeded here, so a run repeats."""
    np.random.seed(seed)
    torch.manual_seed(seed)
    out = FaceScores({})
    for i in range(n):
        out.add(face_road(model, inputs(i), methods, layer, age_scale))
        if progress:
            progress(i + 1, n)
    return out


def _num(v: float) -> float | None:
    return None if v is None or not math.isfinite(v) else round(float(v), 4)


def group_row(grouping: str, group: str, score: np.ndarray, random: np.ndarray, rng: np.random.Generator,
              n_boot: int = N_BOOT) -> dict:
    """One group's figures: mean score, mean random score, their paired mean difference with its bootstrap
    interval (the same faces drawn for both), whether the interval lies above 0, and whether the group is under
    fairness.groups' MIN_COUNT (its interval then too wide, or too rough, to judge by)."""
    d = score - random
    n = len(d)
    lo, hi = stats.interval(d[stats.draws(n, n_boot, rng)].mean(1)) if n > 1 else (np.nan, np.nan)
    return {"grouping": grouping, "group": str(group), "n": n, "score": _num(score.mean()),
            "random": _num(random.mean()), "difference": _num(d.mean()), "difference_lo": _num(lo),
            "difference_hi": _num(hi), "beats_random": bool(np.isfinite(lo) and lo > 0), "too_small": n < MIN_COUNT}


def aggregate(groups: pd.DataFrame, score: np.ndarray, random: np.ndarray, groupings: Sequence[str] = GROUPINGS,
              n_boot: int = N_BOOT, seed: int = SEED) -> dict:
    """One head and method over the faces of ``groups`` (a row per face, a column per grouping; missing values
    left out of that grouping): {"overall": row, "by_group": [rows], "beats_random": overall's verdict}."""
    rng = np.random.default_rng(seed)
    score, random = np.asarray(score, np.float64), np.asarray(random, np.float64)
    overall = group_row(OVERALL, OVERALL, score, random, rng, n_boot)
    rows = []
    for g in (g for g in groupings if g in groups):
        col = groups[g].reset_index(drop=True)
        values = col.cat.categories if isinstance(col.dtype, pd.CategoricalDtype) else sorted(col.dropna().unique())
        for v in values:
            at = (col == v).to_numpy()
            if at.any():
                rows.append(group_row(g, v, score[at], random[at], rng, n_boot))
    return {"overall": overall, "by_group": rows, "beats_random": overall["beats_random"]}


def build_report(groups: pd.DataFrame, scores: FaceScores, meta: dict, n_boot: int = N_BOOT) -> dict:
    """The JSON the command writes: ``meta`` (checkpoint, source, layer...) and, per head and method, aggregate()."""
    heads = {}
    for head in HEAD_MAPS:
        random = np.asarray(scores.road[(head, RANDOM)])
        methods = {m: aggregate(groups, np.asarray(v), random, n_boot=n_boot)
                   for (h, m), v in scores.road.items() if h == head and m != RANDOM}
        heads[head] = {"target": HEAD_MAPS[head], "unit": UNITS[head], "methods": methods}
    return {**meta, "n": len(groups), "percentiles": list(PERCENTILES), "sign": SIGN, "heads": heads}


