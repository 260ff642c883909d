"""Serving: eight threads predicting and explaining at once through one shared model, against the
same requests one after another (equal results?), then resident memory over a soak of explanations.

    python -m benchmarks.serve [--checkpoint DIR] [--soak 200]
"""

from __future__ import annotations

import sys
import threading
import time

import matplotlib.cbook
import numpy as np
from PIL import Image

from agegender.explain.predict import analyse, explain_face
from agegender.faces.detect import FaceDetector, load_photo
from agegender.models.checkpoint import load_checkpoint
from agegender.models.runtime import set_threads

from .common import checkpoint_path, parser, rss_mb

N = 8  # concurrent requests: more sessions than the 2 cores, as a busy dashboard would see
METHODS = ["GradCAM", "GradCAM++", "LayerCAM", "XGradCAM"]


def photos() -> list[Image.Image]:
    """N different requests: Grace Hopper scaled, shifted and mirrored on 640x640 backgrounds."""
    hopper = load_photo(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    out = []
    for i in range(N):
        side = 360 + 30 * i
        im = hopper.resize((side * hopper.width // hopper.height, side), Image.Resampling.BILINEAR)
        im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if i % 2 else im
        canvas = Image.new("RGB", (640, 640), (40 + 20 * i, 90, 120))
        canvas.paste(im, (10 * i, 640 - side))
        out.append(canvas)
    return out


def main(argv: list[str] | None = None) -> int:
    p = parser("serve", __doc__)
    p.add_argument("--soak", type=int, default=200, help="explanations in a row for the memory figure")
    args = p.parse_args(argv)
    set_threads(args.threads)
    ckpt = load_checkpoint(checkpoint_path(args.checkpoint))
    det = FaceDetector()
    requests = photos()

    def request(i: int):
        r = analyse(requests[i], f"p{i}", ckpt, det.detect(requests[i]))
        f = next(f for f in r.faces if f.predicted)
        maps = explain_face(ckpt, f, method=METHODS[i % len(METHODS)])
        return f.age, f.p_female, [m.heat for m in maps]

    sequential = [request(i) for i in range(N)]
    concurrent: list = [None] * N
    barrier = threading.Barrier(N)

    def worker(i: int) -> None:
        barrier.wait()
        concurrent[i] = request(i)

    t = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(N)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t
    worst = max(max(abs(a[0] - b[0]), abs(a[1] - b[1]), *(float(np.abs(x - y).max()) for x, y in zip(a[2], b[2],
                strict=True))) for a, b in zip(sequential, concurrent, strict=True))
    print(f"{N} concurrent predict+explain requests in {wall:.2f} s; largest difference from the same requests "
          f"run one after another: {worst:.2e} (ages in years, P(female), heat maps in [0, 1])")

    for i in range(20):  # warm-up: allocator pools, lazy imports
        request(i % N)
    before = rss_mb()
    marks = []
    for i in range(args.soak):
        request(i % N)
        if (i + 1) % 50 == 0:
            marks.append(f"{i + 1}: {rss_mb():.0f}")
    after = rss_mb()
    print(f"resident memory over {args.soak} explanations after 20 warm-up ones: {before:.0f} MiB -> "
          f"{after:.0f} MiB ({after - before:+.0f} MiB); at " + ", ".join(marks))
    return 0


if __name__ == "__main__":
    sys.exit(main())
