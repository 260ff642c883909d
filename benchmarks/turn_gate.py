"""The gate before training on depth-aware head turns (issue 37): do synthetic turns of held-out UTKFace adults
make the shipped model call women men, as real turns do on FairFace-sample?

    python -m benchmarks.turn_gate [--checkpoint DIR] [--data UTKFACE] [--n 2000] [--grid /tmp/turn_grid.png]

The faces: the shipped checkpoint's val split (predictions-val.csv), adults (age >= 20), evenly spaced up to
``--n`` (val holds 1,714). Each is turned by 0, 30, 45 and 60 degrees (agegender.models.turn on the 200 px chip), one
random direction per face (seeded, the same for its three angles; the model's mirror TTA sees both anyway),
and scored two ways:

- chip: the turned chip as it is, through the checkpoint's preprocessing (the frame stays the chip's);
- photo: the turned chip through the photo path, MTCNN's five landmarks, the labelled face, the 5-point
  alignment (agegender.faces.detect.face_pixels), as FairFace's photos are; the chip sits in a blurred margin
  (as_photo) so that the alignment's zoom and slide find soft surroundings. Faces MTCNN does not find are counted
  and left out. The landmarks give each face's measured yaw (agegender.faces.quality.yaw).

Printed per angle: gender accuracy, women right, men right, women called men, age MAE, each with n and a 95%
interval (Wilson for shares, normal for the mean error); the measured |yaw|; and on the photo path women right
by measured |yaw| bucket beside FairFace-sample's real figures. The grid of turned faces goes to /tmp (these
are UTKFace crops: never into the repository). 520 s for 700 faces on 2 cores shared with other work (load 4-6).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from agegender.data.utkface import evenly_spaced, read_chip
from agegender.evaluation.evalset import labelled_face
from agegender.faces import quality
from agegender.faces.detect import CHIP_SIZE, FaceDetector, face_pixels, resize_image
from agegender.fairness.groups import Z95, wilson
from agegender.models import turn
from agegender.models.checkpoint import load_checkpoint
from agegender.models.inference import predict_checkpoint
from agegender.models.runtime import set_threads

from .common import checkpoint_path, parser

ANGLES = (0, 30, 45, 60)
ADULT = 20
# FairFace-sample, shipped pair: women right by measured |yaw| (docs/experiments.md, "Where the FairFace drop
# comes from"): bucket -> (share right, n)
FAIRFACE_WOMEN = {"30-40": (0.74, 27), "40-50": (0.50, 28), "over 50": (0.32, 25)}
YAW_BUCKETS = ((0, 30, "under 30"), (30, 40, "30-40"), (40, 50, "40-50"), (50, 91, "over 50"))
GRID_FACES = 12
PAD, PAD_BLUR = 64, 6.0  # the photo canvas's margin around a 200 px chip, and its blur (sigma, px)


def val_adults(ckpt_dir: Path, n: int) -> pd.DataFrame:
    df = pd.read_csv(ckpt_dir / "predictions-val.csv")
    adults = df[(df["split"] == "val") & (df["age"] >= ADULT)].reset_index(drop=True)
    return adults.iloc[evenly_spaced(list(range(len(adults))), n)].reset_index(drop=True)


def read_chips(folder: Path, files: list[str]) -> np.ndarray:
    out = np.zeros((len(files), CHIP_SIZE, CHIP_SIZE, 3), np.uint8)
    for i, f in enumerate(files):
        chip = read_chip((folder / f).read_bytes())
        out[i] = resize_image(chip, CHIP_SIZE)
    return out


def turned(chips: np.ndarray, degrees: np.ndarray, batch: int = 64) -> np.ndarray:
    """uint8 chips turned by ``degrees`` each (agegender.models.turn, not realigned)."""
    out = np.empty_like(chips)
    for i in range(0, len(chips), batch):
        x = torch.from_numpy(chips[i:i + batch]).permute(0, 3, 1, 2).float() / 255
        y = turn.turn(x, torch.from_numpy(degrees[i:i + batch]).float())
        out[i:i + batch] = y.clamp(0, 1).mul(255).round().byte().permute(0, 2, 3, 1).numpy()
    return out


def as_photo(chip: np.ndarray) -> Image.Image:
    """A chip in the middle of a PAD px wider canvas, as FairFace's padded crops hold their faces: the margin
    its edge pixels stretched out and blurred (a defocused background), so that the 5-point alignment of a
    turned face, which zooms in and slides sideways, finds soft surroundings rather than streaks."""
    import cv2

    wide = cv2.copyMakeBorder(chip, PAD, PAD, PAD, PAD, cv2.BORDER_REPLICATE)
    wide = cv2.GaussianBlur(wide, (0, 0), PAD_BLUR)
    wide[PAD:PAD + chip.shape[0], PAD:PAD + chip.shape[1]] = chip
    return Image.fromarray(wide)


def photo_path(chips: np.ndarray, detector: FaceDetector, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each chip as a photo: (aligned faces at ``size``, found, signed yaw in degrees; NaN where not found)."""
    photos = [as_photo(c) for c in chips]
    faces = detector.detect_many(photos)
    pixels = np.zeros((len(chips), size, size, 3), np.uint8)
    found = np.zeros(len(chips), bool)
    yaw = np.full(len(chips), np.nan)
    for i, (photo, fs) in enumerate(zip(photos, faces, strict=True)):
        face = labelled_face(fs, photo.size)
        if face is None:
            continue
        pixels[i], found[i], yaw[i] = face_pixels(photo, face, size), True, float(quality.yaw(face.landmarks))
    return pixels, found, yaw


def share(hit: np.ndarray) -> str:
    k, n = int(hit.sum()), len(hit)
    if n == 0:
        return "n 0"
    lo, hi = wilson(k, n)
    return f"{k / n:6.1%} [{lo:.1%}, {hi:.1%}] n {n}"


def mae(err: np.ndarray) -> str:
    if len(err) < 2:
        return "n 0"
    half = Z95 * err.std(ddof=1) / np.sqrt(len(err))
    return f"{err.mean():.2f} [{err.mean() - half:.2f}, {err.mean() + half:.2f}] y n {len(err)}"


def report(label: str, df: pd.DataFrame, pf: np.ndarray, age: np.ndarray, keep: np.ndarray) -> dict:
    d = df[keep]
    woman = (d["gender"] == "female").to_numpy()
    said_woman = pf[keep] >= 0.5
    right = said_woman == woman
    print(f"  {label}")
    print(f"    gender accuracy   {share(right)}")
    print(f"    women right       {share(right[woman])}")
    print(f"    men right         {share(right[~woman])}")
    print(f"    women called men  {share(~said_woman[woman])}")
    print(f"    age MAE           {mae(np.abs(age[keep] - d['age'].to_numpy()))}")
    return {"accuracy": right.mean(), "women_right": right[woman].mean(), "men_right": right[~woman].mean()}


def by_yaw(df: pd.DataFrame, pf: np.ndarray, found: np.ndarray, yaw: np.ndarray) -> None:
    """Women right by measured |yaw| over every photo-path face of every angle, beside FairFace-sample."""
    woman = (df["gender"] == "female").to_numpy() & found
    a = np.abs(yaw)
    print("\nwomen right by measured |yaw| (photo path, all angles pooled) | FairFace-sample, shipped pair")
    for lo, hi, name in YAW_BUCKETS:
        sel = woman & (a >= lo) & (a < hi)
        ff = FAIRFACE_WOMEN.get(name)
        print(f"  {name:9} {share(pf[sel] >= 0.5):38} | " + (f"{ff[0]:.0%} (n {ff[1]})" if ff else ""))


def save_grid(path: Path, rows: list[np.ndarray], cell: int = 100) -> None:
    """rows: per angle and path, faces x S x S x 3; one row per face, one column per (path, angle)."""
    cols = [np.stack([resize_image(Image.fromarray(f), cell) for f in col]) for col in rows]
    grid = np.concatenate([np.concatenate(list(c), 0) for c in cols], 1)
    Image.fromarray(grid).save(path)


def main(argv: list[str] | None = None) -> int:
    p = parser("turn_gate", __doc__)
    p.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "datasets" / "UTKFace"))
    p.add_argument("--n", type=int, default=2000, help="faces at most (val has 1,714 adults)")
    p.add_argument("--seed", type=int, default=0, help="draws each face's direction of turn")
    p.add_argument("--grid", type=Path, default=Path("/tmp/turn_grid.png"))
    args = p.parse_args(argv)
    set_threads(args.threads or 2)
    ckpt_dir = checkpoint_path(args.checkpoint)
    ckpt = load_checkpoint(ckpt_dir)
    size = ckpt.preprocess.cache_size
    df = val_adults(ckpt_dir, args.n)
    chips = read_chips(Path(args.data), df["file"].tolist())
    sign = np.where(np.random.default_rng(args.seed).random(len(df)) < 0.5, -1.0, 1.0)
    print(f"{ckpt_dir.name}: {len(df)} val adults ({(df['gender'] == 'female').sum()} women), turned one random "
          f"way each (seed {args.seed}: {(sign > 0).sum()} nose to the right, {(sign < 0).sum()} to the left)")
    detector = FaceDetector()
    grid_rows, pooled = [], []
    pick = np.unique(np.linspace(0, len(df) - 1, GRID_FACES).astype(int))
    t0 = time.perf_counter()
    for angle in ANGLES:
        t = time.perf_counter()
        deg = sign * angle
        chip = turned(chips, deg)
        small = np.stack([resize_image(Image.fromarray(c), size) for c in chip])
        age_c, pf_c = predict_checkpoint(ckpt, small)
        aligned, found, yaw = photo_path(chip, detector, size)
        age_p, pf_p = predict_checkpoint(ckpt, aligned[found])
        age_ph, pf_ph = np.full(len(df), np.nan), np.full(len(df), np.nan)
        age_ph[found], pf_ph[found] = age_p, pf_p
        model_yaw = quality.yaw(turn.turned_landmarks(torch.from_numpy(deg).float()).numpy())
        q1, q2, q3 = np.nanpercentile(np.abs(yaw), [25, 50, 75])
        same_way = np.mean(np.sign(yaw[found]) == sign[found])
        print(f"\n{angle} degrees ({time.perf_counter() - t:.0f} s): MTCNN finds {found.mean():.1%}; measured |yaw| "
              f"median {q2:.1f}, quartiles {q1:.1f}-{q3:.1f}; sign as turned {same_way:.0%}; "
              f"the mean face's turned landmarks read {np.abs(model_yaw).mean():.1f}")
        report("chip (turned, not realigned)", df, pf_c, age_c, np.ones(len(df), bool))
        report("photo path (MTCNN + 5-point alignment; found faces)", df, pf_ph, age_ph, found)
        pooled.append((pf_ph, found, yaw))
        grid_rows += [chip[pick], np.where(found[pick, None, None, None], aligned[pick], 0)]
    pf_all, found_all, yaw_all = (np.concatenate(v) for v in zip(*pooled, strict=True))
    by_yaw(pd.concat([df] * len(ANGLES), ignore_index=True), pf_all, found_all, yaw_all)
    order = [i for k in (0, 1) for i in range(k, len(grid_rows), 2)]  # chips' four angles, then the photos'
    save_grid(args.grid, [grid_rows[i] for i in order])
    print(f"\n{time.perf_counter() - t0:.0f} s; grid ({GRID_FACES} faces; columns: chip at {ANGLES}, then photo "
          f"path at {ANGLES}) -> {args.grid}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
