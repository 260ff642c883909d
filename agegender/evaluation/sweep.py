"""Counterfactual faces per group: the same faces re-predicted when turned, blurred, shrunk, re-compressed,
darkened, greyed or covered, at a few strengths each, and per group how far the predictions move
(agegender.fairness.sensitivity counts; this module perturbs and predicts).

    python -m agegender.sweep --checkpoint DIR --data UTKFACE [--split val|test|all] [--sample 500] [--json OUT]
    python -m agegender.sweep --checkpoint DIR --data PATH --labels FILE [--format fairface|csv] --json OUT
        [--perturb yaw,blur,downscale,jpeg,brightness,grayscale,occlusion] [--tta]

The faces are a source's aligned chips as evaluation reads them (UTKFace's own split, or a labelled set's cached
crops), an evenly spread sample of them (data.utkface.evenly_spaced). Each perturbation is a pure function of
the chips' pixels at the checkpoint's cache size; the perturbed chips go back to uint8 and through
models.inference.predict_checkpoint, the one preprocessing and inference path, so strength 0 is exactly the
evaluation's prediction. Without --tta: the mirror would average a turn to the left with one to the right, and
it doubles the time.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..data.datasets import add_data_arguments, read_dataset, resolve
from ..data.utkface import DatasetError, evenly_spaced, manifest_splits, with_splits
from ..fairness.groups import MIN_COUNT, N_BOOT, SEED, age_buckets
from ..fairness.sensitivity import SweepError, group_rows, sweep_path, to_json, with_q
from ..fairness.slices import ALPHA
from ..labels import GENDERS, RACES, bin_label
from ..meta import atomic_write_text
from ..models import degrade, turn
from ..models.checkpoint import CheckpointError, load_checkpoint
from ..models.inference import predict_checkpoint
from ..models.runtime import set_threads
from ..predictions import DERIVED_GROUP
from .evalset import dataset_crops
from .sources import Faces, set_faces

log = logging.getLogger(__name__)

SAMPLE = 500  # faces by default: intervals of a few tenths of a year per group, 7 x 4 passes in about 3 minutes
BATCH = 128  # faces perturbed and predicted at once (the float copies of a batch stay small)
# up to the turn lever's largest (models.turn.MAX_DEGREES): beyond it the far eye is hidden
YAW_DEGREES = tuple(turn.MAX_DEGREES * k / 4 for k in (1, 2, 3, 4))
GREY = 0.5  # the occluder's colour: a plain mid-grey, neither skin nor background
Predict = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]  # uint8 chips -> (years, P(female))

ERR_UNKNOWN = "unknown perturbation(s) {names}: use some of {known}"
ERR_NEEDS_JSON = "a labelled dataset's sweep goes where --json says (never into the checkpoint folder): add --json OUT"
ERR_NO_FACES = "no faces to sweep in {data} ({what}): check --data, --split or --labels"


@dataclass(frozen=True)
class Perturbation:
    """What a perturbation does at each of its levels (``apply(x, level)`` on float N x 3 x H x W in [0, 1]),
    and each level's strength: 0 none, 1 the strongest applied, in even steps of the damage where the level's
    own scale allows (a blur's sigma, a JPEG's 100 - quality, the share of colour or of the face covered)."""

    name: str
    parameter: str  # what ``levels`` measure, for a reader
    levels: tuple[float, ...]  # mildest first
    strengths: tuple[float, ...]
    apply: Callable[[torch.Tensor, float], torch.Tensor]


def yaw(x: torch.Tensor, degrees: float) -> torch.Tensor:
    """The head turned by ``degrees`` with the mean face's depth (models.turn, the nose to the image's right)
    and aligned again by its five landmarks, as a photo of the turned head is before the model sees it."""
    return turn.turn(x, degrees, realign_=True).clamp_(0, 1)


def brightness(x: torch.Tensor, gain: float) -> torch.Tensor:
    """Every pixel times ``gain`` (< 1: the face in dim light, exposed for the background)."""
    return x * gain


def grey_share(x: torch.Tensor, share: float) -> torch.Tensor:
    """A share of the colour taken away: the image blended with its luma (degrade.grayscale) by ``share``."""
    return torch.lerp(x, degrade.grayscale(x), share)


def occlusion(x: torch.Tensor, share: float) -> torch.Tensor:
    """The bottom ``share`` of the chip's height covered with plain grey: a mask over chin, mouth and then
    nose (aligned chips put the mouth about 3/4 of the way down)."""
    out = x.clone()
    rows = round(x.shape[-2] * share)
    if rows:
        out[..., -rows:, :] = GREY
    return out


PERTURBATIONS = {p.name: p for p in (
    Perturbation("yaw", "degrees of head turn", YAW_DEGREES, tuple(d / max(YAW_DEGREES) for d in YAW_DEGREES), yaw),
    Perturbation("blur", "Gaussian sigma (px of the chip)", degrade.BLUR_SIGMAS,
                 tuple(s / max(degrade.BLUR_SIGMAS) for s in degrade.BLUR_SIGMAS), degrade.blur),
    Perturbation("downscale", "size kept (then enlarged back)", tuple(sorted(degrade.DOWNSCALE_FACTORS, reverse=True)),
                 tuple((1 - f) / (1 - min(degrade.DOWNSCALE_FACTORS))
                       for f in sorted(degrade.DOWNSCALE_FACTORS, reverse=True)), degrade.downscale),
    Perturbation("jpeg", "JPEG quality", (60, 45, 30, 15), tuple((100 - q) / 85 for q in (60, 45, 30, 15)),
                 degrade.jpeg),
    Perturbation("brightness", "gain on every pixel", (0.825, 0.65, 0.475, 0.3), (0.25, 0.5, 0.75, 1.0), brightness),
    Perturbation("grayscale", "share of the colour removed", (0.25, 0.5, 0.75, 1.0), (0.25, 0.5, 0.75, 1.0),
                 grey_share),
    Perturbation("occlusion", "share of the height covered from the bottom", (0.1, 0.2, 0.3, 0.4),
                 (0.25, 0.5, 0.75, 1.0), occlusion),
)}


def perturbed(pixels: np.ndarray, p: Perturbation, level: float) -> np.ndarray:
    """Chips (N x S x S x 3 uint8) under one level of a perturbation, back in uint8 as a photo would be."""
    x = torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2).float().div_(255)
    y = p.apply(x, level)
    return y.mul(255).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def parse_names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in PERTURBATIONS]
    if unknown or not names:
        raise SweepError(ERR_UNKNOWN.format(names=unknown, known=",".join(PERTURBATIONS)))
    return list(dict.fromkeys(names))


def _predict_batched(predict: Predict, pixels: np.ndarray, change=None) -> tuple[np.ndarray, np.ndarray]:
    ages, pf = [], []
    for start in range(0, max(len(pixels), 1), BATCH):
        chunk = pixels[start:start + BATCH]
        a, f = predict(change(chunk) if change else chunk)
        ages.append(np.asarray(a, np.float64))
        pf.append(np.asarray(f, np.float64))
    return np.concatenate(ages), np.concatenate(pf)


def sweep(pixels: np.ndarray, table: pd.DataFrame, groupings: list[str], predict: Predict, names: list[str],
          min_count: int = MIN_COUNT, n_boot: int = N_BOOT, seed: int = SEED,
          progress: Callable[[str], None] | None = None) -> dict[str, dict]:
    """Per perturbation of ``names``: its levels, strengths and group rows (fairness.sensitivity.group_rows),
    q-values over them all. ``table`` has a row per face of ``pixels`` and the ``groupings`` columns."""
    base_age, base_pf = _predict_batched(predict, pixels)
    out = {}
    for name in names:
        p = PERTURBATIONS[name]
        moved = [_predict_batched(predict, pixels, lambda c, p=p, lv=level: perturbed(c, p, lv)) for level in p.levels]
        age, pf = (np.stack([m[i] for m in moved], axis=1) for i in (0, 1))
        out[name] = {"parameter": p.parameter, "levels": list(p.levels), "strengths": list(p.strengths),
                     "by_group": group_rows(table, groupings, p.strengths, base_age, base_pf, age, pf,
                                            min_count, n_boot, seed)}
        if progress:
            progress(name)
    return with_q(out)


def group_table(files: list[str], ages, age_bins, genders, groups: dict[str, list]) -> pd.DataFrame:
    """A row per face: its file, the dataset's groups, gender and age bucket (fairness.groups.age_buckets)."""
    bins = [None] * len(files) if age_bins is None else age_bins
    return pd.DataFrame({"file": files, **groups, "gender": [GENDERS[g] for g in genders],
                         DERIVED_GROUP: age_buckets(np.asarray(ages, np.float64), bins)})


def utkface_faces(data: str, split: str, size: int, n: int, checkpoint: str | None = None
                  ) -> tuple[pd.DataFrame, np.ndarray]:
    """An evenly spread sample of ``n`` (0: all) chips of a UTKFace split, through the sources' reader; the split
    by ``checkpoint``'s own rule (its manifest), as evaluation takes it."""
    faces = Faces(str(data), utkface=True)
    scan = with_splits(faces.load(size), manifest_splits(checkpoint) if checkpoint else None)
    picked = [s for s in scan.samples if split == "all" or s.split == split]
    picked = evenly_spaced(picked, n) if n else picked
    files, pixels = faces.pixels(scan, [s.member for s in picked], size)
    if not files:
        raise DatasetError(ERR_NO_FACES.format(data=data, what=f"split {split}"))
    by = {s.member: s for s in picked}
    ss = [by[f] for f in files]
    return group_table(files, [s.age for s in ss], None, [s.gender for s in ss],
                       {"race": [RACES[s.race] for s in ss]}), pixels


def labelled_faces(args, size: int, n: int) -> tuple[pd.DataFrame, np.ndarray]:
    """An evenly spread sample of a labelled set's faces found, from its crop cache (made as evaluation makes it)."""
    ds = read_dataset(args.data, args.labels, args.format, args.columns)
    crops = dataset_crops(ds, size, args.cache_dir)
    found = [f for f, ok in zip(crops.files, crops.found, strict=True) if ok]
    files, pixels = set_faces(crops, evenly_spaced(found, n) if n else found)
    if not files:
        raise DatasetError(ERR_NO_FACES.format(data=args.data, what="no face found"))
    by = {r.file: r for r in ds.records}
    rs = [by[f] for f in files]
    return group_table(files, [np.nan if r.age is None else r.age for r in rs],
                       [None if r.age_bin is None else bin_label(r.age_bin) for r in rs], [r.gender for r in rs],
                       {c: [r.groups[c] for r in rs] for c in ds.group_columns}), pixels


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m agegender.sweep", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True, help="checkpoint folder")
    add_data_arguments(p)
    p.add_argument("--split", default="test", choices=["val", "test", "all"], help="UTKFace only")
    p.add_argument("--perturb", default=",".join(PERTURBATIONS), help="comma-separated, of: " + ",".join(PERTURBATIONS))
    p.add_argument("--sample", type=int, default=SAMPLE, help="an evenly spread sample of N faces (0: every face)")
    p.add_argument("--json", help="where the sweep goes (UTKFace default: CHECKPOINT/sweep-SPLIT.json, which the "
                                  "dashboard's Robustness page reads)")
    p.add_argument("--min-count", type=int, default=MIN_COUNT, help="groups smaller are shown, not tested")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=False,
                   help="average with the mirrored image (default off: it would average left and right turns)")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--threads", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    set_threads(args.threads)
    t0 = time.perf_counter()
    try:
        names = parse_names(args.perturb)
        utkface = resolve(args.data, args.labels, args.format, args.columns)[2] == "utkface"
        if not utkface and not args.json:
            raise SweepError(ERR_NEEDS_JSON)
        out = Path(args.json) if args.json else sweep_path(args.checkpoint, args.split)
        ckpt = load_checkpoint(args.checkpoint)
        size = ckpt.preprocess.cache_size
        table, pixels = (utkface_faces(args.data, args.split, size, args.sample, args.checkpoint) if utkface
                         else labelled_faces(args, size, args.sample))
        groupings = [c for c in table.columns if c != "file"]
        result = sweep(pixels, table, groupings, lambda px: predict_checkpoint(ckpt, px, args.tta), names,
                       args.min_count, progress=lambda name: log.info("%s done (%.0f s)", name,
                                                                      time.perf_counter() - t0))
    except (CheckpointError, DatasetError, SweepError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    record = {"checkpoint": str(args.checkpoint), "data": str(args.data),
              "labels": args.labels and str(args.labels), "split": args.split if utkface else None,
              "n_faces": len(table), "sample": args.sample, "tta": args.tta, "groupings": groupings,
              "min_count": args.min_count, "n_boot": N_BOOT, "seed": SEED,
              "q_family": "every sensitivity test of this file", "seconds": round(time.perf_counter() - t0, 1),
              "perturbations": result}
    atomic_write_text(out, to_json(record))
    n_flag = sum(len(r["flagged"]) for p in result.values() for r in p["by_group"])
    print(f"{len(table)} faces x {len(names)} perturbations: {n_flag} group sensitivities differ (q < {ALPHA:g}); "
          f"sweep: {out}   time: {record['seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
