"""Photo-to-explanation latency: a 640x480 photo with one face through detection, alignment +
prediction and both heads' Grad-CAMs, against one plain forward pass of the model.

    python -m benchmarks.predict [--checkpoint DIR] [--runs 15]
"""

from __future__ import annotations

import sys

import matplotlib.cbook
import torch
from PIL import Image

from agegender.explain.gradcam import explain
from agegender.explain.predict import analyse
from agegender.faces.detect import FaceDetector, load_photo
from agegender.models.checkpoint import load_checkpoint
from agegender.models.inference import model_input
from agegender.models.runtime import set_threads

from .common import checkpoint_path, median_s, parser


def one_face_photo() -> Image.Image:
    """matplotlib's Grace Hopper, scaled to 480 px high and centred on a 640x480 background."""
    hopper = load_photo(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    face = hopper.resize((round(hopper.width * 480 / hopper.height), 480), Image.Resampling.BILINEAR)
    photo = Image.new("RGB", (640, 480), (90, 110, 130))
    photo.paste(face, ((640 - face.width) // 2, 0))
    return photo


def main(argv: list[str] | None = None) -> int:
    p = parser("predict", __doc__)
    p.add_argument("--runs", type=int, default=15)
    args = p.parse_args(argv)
    set_threads(args.threads)
    ckpt = load_checkpoint(checkpoint_path(args.checkpoint))
    photo = one_face_photo()
    det = FaceDetector()
    faces = det.detect(photo)
    if len(faces) != 1:
        raise SystemExit(f"expected one face in the benchmark photo, found {len(faces)}")
    result = analyse(photo, "bench", ckpt, faces)
    x = model_input(ckpt, result.faces[0].pixels)
    maps = ("older", "younger", "female" if result.faces[0].p_female >= 0.5 else "male")

    def forward():
        with torch.no_grad():
            ckpt.model(x)

    t_fwd = median_s(forward, args.runs)
    t_det = median_s(lambda: det.detect(photo), args.runs)
    t_pred = median_s(lambda: analyse(photo, "bench", ckpt, faces), args.runs)
    t_cam = median_s(lambda: explain(ckpt.model, x, maps=maps), args.runs)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {ckpt.name}, 640x480 photo, one face")
    print(f"median over {args.runs} runs:")
    print(f"  detection (MTCNN)                         {t_det * 1000:7.1f} ms")
    print(f"  alignment + prediction (with flip TTA)    {t_pred * 1000:7.1f} ms")
    print(f"  Grad-CAM, both heads ({', '.join(maps)})  {t_cam * 1000:7.1f} ms")
    print(f"  full explanation                          {(t_det + t_pred + t_cam) * 1000:7.1f} ms   (goal <= 600)")
    print(f"  one plain forward pass (batch 1)          {t_fwd * 1000:7.1f} ms")
    print(f"  CAMs / forward pass = {t_cam / t_fwd:.2f}   (goal <= 3)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
