"""What python -m agegender.faithfulness costs per face: ROADCombined (20/40/60/80%) of both heads for each CAM
method, and for the RandomCAM baseline every face also gets, on one aligned face of the shipped checkpoint.

    python -m benchmarks.faithfulness [--checkpoint DIR] [--runs 3] [--methods GradCAM,...]

The command's time is about --sample x the "every method" line (plus reading the faces).
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from agegender.explain.faithfulness import SAMPLE, face_road
from agegender.explain.gradcam import METHODS
from agegender.explain.predict import analyse
from agegender.faces.detect import FaceDetector
from agegender.models.checkpoint import load_checkpoint
from agegender.models.inference import model_input
from agegender.models.runtime import set_threads

from .common import checkpoint_path, median_s, parser
from .predict import one_face_photo


def main(argv: list[str] | None = None) -> int:
    p = parser("faithfulness", __doc__)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--methods", default=",".join(METHODS))
    args = p.parse_args(argv)
    set_threads(args.threads)
    ckpt = load_checkpoint(checkpoint_path(args.checkpoint))
    photo = one_face_photo()
    x = model_input(ckpt, analyse(photo, "bench", ckpt, FaceDetector().detect(photo)).faces[0].pixels)
    methods = [m for m in args.methods.split(",") if m]
    np.random.seed(0)
    torch.manual_seed(0)

    def road(names):
        return lambda: face_road(ckpt.model, x, {m: METHODS[m] for m in names}, age_scale=ckpt.scaling.scale)

    t_random = median_s(road([]), args.runs, warmup=1)
    per = {m: median_s(road([m]), args.runs, warmup=1) - t_random for m in methods}
    total = t_random + sum(per.values())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {ckpt.name}, one face, "
          f"median over {args.runs} runs, both heads, ROAD at 20/40/60/80%")
    print(f"  RandomCAM baseline               {t_random:7.2f} s")
    for m, t in per.items():
        print(f"  {m:32s} {t:7.2f} s")
    minutes = total * SAMPLE / 60
    print(f"  every method + baseline, a face  {total:7.2f} s   (--sample {SAMPLE}: about {minutes:.0f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
