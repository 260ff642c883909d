"""Crop consistency: a UTKFace chip pasted into a larger photo (other background, scaled, shifted)
and sent through detection and alignment should be predicted like the chip itself.

    python -m agegender.consistency --checkpoint DIR --data PATH [--n 300] [--split test]
"""

from __future__ import annotations

import argparse
import io
import sys

import numpy as np
from PIL import Image, ImageFilter

from .checkpoint import Checkpoint, load_checkpoint
from .data import evenly_spaced, iter_bytes, scan
from .faces import DECODE_ERRORS, FaceDetector
from .inference import predict_checkpoint
from .labels import called_female
from .predict import analyse
from .preprocess import resize_image

CANVAS = (640, 480)


def paste_into_photo(chip: Image.Image, rng: np.random.Generator) -> Image.Image:
    """The chip scaled 1.2-2x at a random place on a blurred random-colour background."""
    noise = rng.integers(0, 256, (CANVAS[1] // 16, CANVAS[0] // 16, 3), dtype=np.uint8)
    canvas = Image.fromarray(noise).resize(CANVAS, Image.Resampling.BICUBIC).filter(ImageFilter.GaussianBlur(4))
    side = int(chip.width * rng.uniform(1.2, 2.0))
    side = min(side, CANVAS[1] - 10)
    face = chip.resize((side, side), Image.Resampling.BICUBIC)
    x = int(rng.integers(0, CANVAS[0] - side))
    y = int(rng.integers(0, CANVAS[1] - side))
    canvas.paste(face, (x, y))
    return canvas


def _read_chip(raw: bytes | None) -> Image.Image | None:
    """Read as the training cache reads chips (no EXIF turn), so the chip's prediction is what
    evaluation gives it; None when the bytes are missing or not a readable image."""
    if raw is None:
        return None
    try:
        with Image.open(io.BytesIO(raw)) as im:
            return im.convert("RGB")
    except DECODE_ERRORS:
        return None


def measure(ckpt: Checkpoint, data: str, n: int = 300, split: str = "test", seed: int = 0,
            detector: FaceDetector | None = None) -> dict:
    sc = scan(data)
    picked = [s for s in sc.samples if s.split == split]
    picked = evenly_spaced(picked, n)
    detector = detector or FaceDetector()
    rng = np.random.default_rng(seed)
    size = ckpt.preprocess.cache_size
    age_diff, agree, missed, unreadable = [], [], 0, 0
    for s, raw in iter_bytes(sc, picked):
        chip = _read_chip(raw)
        if chip is None:  # a damaged chip costs that chip, not the run
            unreadable += 1
            continue
        a0, p0 = predict_checkpoint(ckpt, resize_image(chip, size)[None])
        photo = paste_into_photo(chip, rng)
        r = analyse(photo, s.name, ckpt, detector.detect(photo))
        if r.error:
            missed += 1
            continue
        f = next(f for f in r.faces if f.predicted)  # the most confident face
        age_diff.append(abs(f.age - float(a0[0])))
        agree.append(called_female(f.p_female) == called_female(float(p0[0])))
    d = np.array(age_diff)
    return {
        "chips": len(picked), "unreadable": unreadable, "detected": len(d), "missed": missed,
        "median_abs_age_diff": float(np.median(d)) if len(d) else None,
        "mean_abs_age_diff": float(d.mean()) if len(d) else None,
        "p90_abs_age_diff": float(np.percentile(d, 90)) if len(d) else None,
        "gender_agreement": float(np.mean(agree)) if agree else None,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m agegender.consistency", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--n", type=int, default=300)
    p.add_argument("--split", default="test")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    m = measure(load_checkpoint(args.checkpoint), args.data, args.n, args.split, args.seed)
    print(f"{m['detected']}/{m['chips']} pasted chips detected; chip vs photo: median |age diff| "
          f"{m['median_abs_age_diff']:.2f} y (mean {m['mean_abs_age_diff']:.2f}, p90 {m['p90_abs_age_diff']:.2f}), "
          f"gender agreement {m['gender_agreement']:.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
