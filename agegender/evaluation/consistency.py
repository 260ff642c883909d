"""Crop consistency: a UTKFace chip pasted into a larger photo (other background, scaled, shifted)
and sent through detection and alignment should be predicted like the chip itself; and a labelled photo
(FairFace's, a user's) mirrored, re-framed or shrunk should be predicted like the photo itself.

    python -m agegender.consistency --checkpoint DIR --data PATH [--n 300] [--split test]
    python -m agegender.consistency --checkpoint DIR --photos PATH [--labels FILE] [--n 300]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from PIL import Image, ImageFilter

from ..data.utkface import evenly_spaced, iter_bytes, read_chip, scan
from ..explain.predict import analyse
from ..faces.detect import FaceDetector, resize_image
from ..labels import called_female
from ..models.checkpoint import Checkpoint, load_checkpoint
from ..models.inference import predict_checkpoint

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
        chip = read_chip(raw)
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


# What a photo can do to the same face, as measure_photos applies it.
def _mirrored(photo: Image.Image, rng: np.random.Generator) -> Image.Image:
    return photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT)


def _reframed(photo: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A tenth of the photo cut from one random side: the face sits elsewhere in the frame."""
    w, h = photo.size
    cut = [0, 0, w, h]
    side = int(rng.integers(4))
    cut[side] += (1 if side < 2 else -1) * (w if side % 2 == 0 else h) // 10
    return photo.crop(tuple(cut))


def _shrunk(photo: Image.Image, rng: np.random.Generator) -> Image.Image:
    return photo.resize((photo.width // 2, photo.height // 2), Image.Resampling.BILINEAR)


VARIANTS = {"mirrored": _mirrored, "reframed (a tenth cut off one side)": _reframed, "shrunk to half": _shrunk}


def _photo_prediction(ckpt: Checkpoint, photo: Image.Image, detectors: dict) -> tuple[float, float] | None:
    """The labelled face of a photo through evaluation's own path (agegender.evaluation.evalset): None without one."""
    from ..faces.detect import face_pixels
    from .evalset import labelled_face, min_face_size

    size = min_face_size(photo)
    detector = detectors.setdefault(size, FaceDetector(min_face_size=size))
    face = labelled_face(detector.detect(photo), photo.size)
    if face is None:
        return None
    a, p = predict_checkpoint(ckpt, face_pixels(photo, face, ckpt.preprocess.cache_size)[None])
    return float(a[0]), float(p[0])


def measure_photos(ckpt: Checkpoint, data: str, labels: str | None = None, n: int = 300, seed: int = 0) -> dict:
    """For an evenly spaced ``n`` of a labelled photo dataset's images with a face found: how far each
    VARIANT of the photo moves the prediction (median, mean and 90th percentile of |age change|, the share
    of gender calls kept, faces still found)."""
    from ..data.datasets import read_dataset
    from ..data.utkface import dataset_kind, member_bytes
    from ..faces.detect import UnreadableImage, load_photo

    ds = read_dataset(data, labels)
    records = evenly_spaced(list(ds.records), n)
    kind = dataset_kind(ds.root)
    rng = np.random.default_rng(seed)
    detectors: dict = {}
    moved: dict[str, list] = {v: [] for v in VARIANTS}
    kept: dict[str, list] = {v: [] for v in VARIANTS}
    lost = dict.fromkeys(VARIANTS, 0)
    base_found = 0
    for file, raw in member_bytes(ds.root, kind, [r.file for r in records]):
        try:
            photo = load_photo(raw, file) if raw is not None else None
        except UnreadableImage:
            photo = None
        base = _photo_prediction(ckpt, photo, detectors) if photo is not None else None
        if base is None:
            continue
        base_found += 1
        for name, change in VARIANTS.items():
            other = _photo_prediction(ckpt, change(photo, rng), detectors)
            if other is None:
                lost[name] += 1
                continue
            moved[name].append(abs(other[0] - base[0]))
            kept[name].append(called_female(other[1]) == called_female(base[1]))
    out = {"photos": len(records), "found": base_found, "variants": {}}
    for name in VARIANTS:
        d = np.array(moved[name])
        out["variants"][name] = {
            "found": len(d), "lost": lost[name],
            "median_abs_age_change": float(np.median(d)) if len(d) else None,
            "mean_abs_age_change": float(d.mean()) if len(d) else None,
            "p90_abs_age_change": float(np.percentile(d, 90)) if len(d) else None,
            "gender_kept": float(np.mean(kept[name])) if kept[name] else None,
        }
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m agegender.consistency", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="UTKFace chips, pasted into generated photos")
    src.add_argument("--photos", help="a labelled photo dataset (agegender.data.datasets), each photo changed")
    p.add_argument("--labels", help="with --photos: its labels file, where --photos does not find it")
    p.add_argument("--n", type=int, default=300)
    p.add_argument("--split", default="test")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.photos:
        m = measure_photos(load_checkpoint(args.checkpoint), args.photos, args.labels, args.n, args.seed)
        print(f"{m['found']}/{m['photos']} photos with a face found; against each photo's own prediction:")
        for name, v in m["variants"].items():
            if v["found"]:
                print(f"  {name}: face found {v['found']}/{m['found']}; median |age change| "
                      f"{v['median_abs_age_change']:.2f} y (mean {v['mean_abs_age_change']:.2f}, p90 "
                      f"{v['p90_abs_age_change']:.2f}), gender call kept {v['gender_kept']:.1%}")
            else:
                print(f"  {name}: no face found in any")
        return 0
    m = measure(load_checkpoint(args.checkpoint), args.data, args.n, args.split, args.seed)
    print(f"{m['detected']}/{m['chips']} pasted chips detected; chip vs photo: median |age diff| "
          f"{m['median_abs_age_diff']:.2f} y (mean {m['mean_abs_age_diff']:.2f}, p90 {m['p90_abs_age_diff']:.2f}), "
          f"gender agreement {m['gender_agreement']:.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
