"""Derive the alignment template: mean MTCNN landmarks over UTKFace chips.

    python -m agegender.template --data PATH [--n 2000] [--out agegender/face_template.json]

Uploaded photos are aligned onto this template, so a face from a photo reaches the model in
the geometry the model was trained on.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..faces.detect import CHIP_SIZE, MIN_CONFIDENCE, TEMPLATE_FILE, FaceDetector
from .utkface import evenly_spaced, iter_bytes, scan


def derive(data: str, n: int) -> dict:
    sc = scan(data)
    train = [s for s in sc.samples if s.split == "train"]
    picked = evenly_spaced(train, n)
    detector = FaceDetector()
    points, misses = [], 0
    for _s, raw in tqdm(iter_bytes(sc, picked), total=len(picked), desc="landmarks", unit="chip"):
        if raw is None:
            misses += 1
            continue
        with Image.open(io.BytesIO(raw)) as im:
            chip = im.convert("RGB")
        if chip.size != (CHIP_SIZE, CHIP_SIZE):
            chip = chip.resize((CHIP_SIZE, CHIP_SIZE), Image.Resampling.BILINEAR)
        faces = detector.detect(chip)
        # the chip's own face is the one nearest its centre
        faces = sorted(faces, key=lambda f: np.hypot((f.box[0] + f.box[2]) / 2 - 100, (f.box[1] + f.box[3]) / 2 - 100))
        if not faces or faces[0].confidence < MIN_CONFIDENCE:
            misses += 1
            continue
        points.append(faces[0].landmarks)
    pts = np.stack(points)
    return {
        "size": CHIP_SIZE,
        "landmarks": np.round(pts.mean(0), 3).tolist(),
        "std": np.round(pts.std(0), 3).tolist(),
        "order": ["left eye", "right eye", "nose", "left mouth corner", "right mouth corner"],
        "chips_used": len(points),
        "chips_without_a_face": misses,
        "dataset_fingerprint": sc.fingerprint,
        "how": "mean MTCNN (facenet-pytorch) landmarks over an evenly spaced sample of train-split chips",
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m agegender.template", description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--out", default=str(TEMPLATE_FILE))
    args = p.parse_args(argv)
    t = derive(args.data, args.n)
    Path(args.out).write_text(json.dumps(t, indent=2) + "\n")
    print(f"{t['chips_used']} chips ({t['chips_without_a_face']} without a face) -> {args.out}")
    print("mean landmarks:", t["landmarks"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
