"""A labelled photo dataset end to end (read the labels, detect, pick, align, predict), the first time
(empty crop cache) and from the crop cache, as `python -m agegender.evaluate --labels` runs it, in this
process (the checkpoint loaded once, outside the timings).

    python -m benchmarks.evalset [--data ../shared/datasets/FairFace-sample] [--first-runs 3] [--cached-runs 5]
"""

from __future__ import annotations

import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

from agegender.data.datasets import read_dataset
from agegender.evaluation.evaluate import evaluate_dataset, format_metrics
from agegender.models.checkpoint import load_checkpoint
from agegender.models.runtime import set_threads

from .common import checkpoint_path, parser

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "FairFace-sample"


def once(ckpt, data: str, cache: str) -> tuple[float, dict]:
    t = time.perf_counter()
    _, m = evaluate_dataset(ckpt, read_dataset(data), cache_dir=cache)
    return time.perf_counter() - t, m


def main(argv: list[str] | None = None) -> int:
    p = parser("evalset", __doc__)
    p.add_argument("--data", default=str(DEFAULT_DATA), help="a labelled dataset agegender.data.datasets reads")
    p.add_argument("--first-runs", type=int, default=3, help="runs with an empty crop cache")
    p.add_argument("--cached-runs", type=int, default=5, help="runs from the crop cache")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    set_threads(args.threads)
    if not Path(args.data).exists():
        print(f"error: no dataset at {args.data}: pass --data", file=sys.stderr)
        return 2
    ckpt = load_checkpoint(checkpoint_path(args.checkpoint))
    first, cached = [], []
    for _ in range(args.first_runs):
        with tempfile.TemporaryDirectory() as cache:
            s, m = once(ckpt, args.data, cache)
            first.append(s)
            for _ in range(args.cached_runs if not cached else 0):
                cached.append(once(ckpt, args.data, cache)[0])
    print(f"{ckpt.name} on {args.data}: {format_metrics(m)}")
    print(f"first time (empty crop cache): median {statistics.median(first):.1f} s over {len(first)} "
          f"runs ({', '.join(f'{s:.1f}' for s in first)}); target <= 60 s")
    print(f"from the crop cache:           median {statistics.median(cached):.2f} s over {len(cached)} "
          f"runs ({', '.join(f'{s:.2f}' for s in cached)}); target <= 10 s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
