"""The pose mix of a folder of face chips: MTCNN's five landmarks on each chip, the yaw they give
(agegender.faces.quality.yaw), and the share of each pose group. Measures quality.UTKFACE_POSE_MIX.

    python -m benchmarks.chip_pose [--data UTKFACE] [--out yaw.csv]

About 7 minutes (401 s) for UTKFace's 20,983 chips on 2 cores (chips of one size go through MTCNN in batches).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from agegender.data.utkface import list_images, read_chip
from agegender.faces import quality
from agegender.faces.detect import FaceDetector
from agegender.models.runtime import set_threads
from agegender.train import chippose

from .common import parser


def chip_yaws(folder: Path, names: list[str], detector: FaceDetector) -> np.ndarray:
    """|yaw| in degrees of each chip's most confident face; NaN where none is found or the chip is unreadable."""
    out = np.full(len(names), np.nan)
    for start in tqdm(range(0, len(names), chippose.BATCH), desc="chips", unit="batch"):
        part = names[start:start + chippose.BATCH]
        chips = [read_chip((folder / n).read_bytes()) for n in part]
        out[start:start + len(part)] = chippose.chip_yaws(chips, detector)
    return out


def main(argv: list[str] | None = None) -> int:
    p = parser("chip_pose", __doc__, checkpoint=False)
    p.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "datasets" / "UTKFace"))
    p.add_argument("--out", help="also write each chip's |yaw| here (CSV)")
    args = p.parse_args(argv)
    set_threads(args.threads or 2)
    folder = Path(args.data)
    names = sorted(m for m, _ in list_images(folder)[1])
    t = time.perf_counter()
    yaw = chip_yaws(folder, names, FaceDetector())
    took = time.perf_counter() - t
    if args.out:
        pd.DataFrame({"file": names, "abs_yaw": yaw}).to_csv(args.out, index=False)
    found = yaw[np.isfinite(yaw)]
    groups = pd.Series(quality.pose_group(found)).value_counts(normalize=True)
    print(f"{folder}: {len(names)} chips, a face on {len(found)}, {took:.0f} s")
    print("  |yaw| median {:.1f}, 95th percentile {:.1f}, 99th {:.1f} degrees; beyond 40: {:.1%}".format(
        *np.percentile(found, [50, 95, 99]), (found > 40).mean()))
    for label in quality.POSE_LABELS:
        print(f"  {label:22} {groups.get(label, 0.0):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
