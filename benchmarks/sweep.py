"""What the counterfactual sweep costs: the default sample (500 chips, as python -m agegender.sweep takes them)
x 7 perturbations x 4 strengths, plus the faces as they are, through the shipped checkpoint; median seconds of
the whole sweep (perturbing, predicting, the per-group statistics). Target: <= 3 minutes on 2 CPU cores.

    python -m benchmarks.sweep [--data UTKFACE] [--sample 500] [--runs 1] [--threads 2] [--checkpoint DIR]

Without UTKFace ($AGEGENDER_UTKFACE or ../shared/datasets/UTKFace) the chips are random pixels: the cost is
the same, the figures are not.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from agegender.evaluation import sweep as sw
from agegender.models.checkpoint import load_checkpoint
from agegender.models.inference import predict_checkpoint
from agegender.models.runtime import set_threads

from .common import checkpoint_path, median_s, parser

SHARED_UTKFACE = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "UTKFace"


def faces(data: str | None, size: int, n: int, checkpoint: Path) -> tuple[pd.DataFrame, np.ndarray]:
    where = data or os.environ.get("AGEGENDER_UTKFACE") or (str(SHARED_UTKFACE) if SHARED_UTKFACE.is_dir() else None)
    if where:
        return sw.utkface_faces(where, "test", size, n, str(checkpoint))
    rng = np.random.default_rng(0)
    table = pd.DataFrame({"race": rng.choice(["White", "Black", "Asian"], n),
                          "gender": rng.choice(["male", "female"], n)})
    return table, rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def main(argv: list[str] | None = None) -> int:
    p = parser("sweep", __doc__)
    p.add_argument("--data", help="UTKFace folder, .zip or .tar.gz (default: $AGEGENDER_UTKFACE, the shared copy)")
    p.add_argument("--sample", type=int, default=sw.SAMPLE)
    p.add_argument("--runs", type=int, default=1, help="timed sweeps (each is minutes)")
    args = p.parse_args(argv)
    set_threads(args.threads or 2)
    folder = checkpoint_path(args.checkpoint)
    ckpt = load_checkpoint(folder)
    table, pixels = faces(args.data, ckpt.preprocess.cache_size, args.sample, folder)
    groupings = [c for c in table.columns if c != "file"]
    names = list(sw.PERTURBATIONS)

    def run():
        return sw.sweep(pixels, table, groupings, lambda px: predict_checkpoint(ckpt, px, tta=False), names)

    s = median_s(run, args.runs, warmup=0)
    passes = len(pixels) * (1 + sum(len(sw.PERTURBATIONS[n].levels) for n in names))
    print(f"{folder.name}: {len(pixels)} faces x {len(names)} perturbations x 4 strengths (+ as they are), "
          f"{torch.get_num_threads()} threads, median of {args.runs}: {s:.1f} s ({passes / s:.0f} faces/s); "
          f"target <= 180 s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
