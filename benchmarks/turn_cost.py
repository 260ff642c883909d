"""What the depth-aware head turn costs: one batch of 128 chips at 128 px turned by angles drawn in
[-60, 60] degrees (agegender.models.turn), as chips and realigned by their landmarks, median seconds per batch.

    python -m benchmarks.turn_cost [--batch 128] [--size 128] [--runs 15] [--threads 2]
"""

from __future__ import annotations

import sys

import torch

from agegender.models import turn
from agegender.models.runtime import set_threads

from .common import median_s, parser


def main(argv: list[str] | None = None) -> int:
    p = parser("turn_cost", __doc__, checkpoint=False)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--runs", type=int, default=15)
    args = p.parse_args(argv)
    set_threads(args.threads or 2)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(args.batch, 3, args.size, args.size, generator=g)
    deg = (torch.rand(args.batch, generator=g) * 2 - 1) * turn.MAX_DEGREES
    print(f"{args.batch} chips at {args.size} px, {torch.get_num_threads()} threads, median of {args.runs}:")
    for realign in (False, True):
        s = median_s(lambda r=realign: turn.turn(x, deg, r), args.runs)
        print(f"  turn{' + realign' if realign else ''}: {s * 1000:.0f} ms per batch, "
              f"{s / args.batch * 1e6:.0f} us per chip")
    return 0


if __name__ == "__main__":
    sys.exit(main())
