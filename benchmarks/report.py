"""Bias report timings: the report on a checkpoint's ~2,100 test rows (N_BOOT resamples), the worst-slice
search over three factors on those rows and on --slice-rows generated ones, a rerun of the bias page after a
filter change, and the bias page on a generated 200,000-row predictions file.

    python -m benchmarks.report [--checkpoint DIR] [--runs 5] [--slice-rows 20000] [--big-rows 200000]
"""

from __future__ import annotations

import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from agegender.fairness.groups import DEFAULT_GROUPINGS, N_BOOT
from agegender.fairness.slices import find_slices
from agegender.models.runtime import set_threads
from agegender.predictions import load_predictions, predictions_path, write_predictions
from agegender.report.bias import build

from .common import APP, checkpoint_path, median_s, parser

# a copy of the checkpoint without a writer's leftover temporary files
COPY_IGNORE = shutil.ignore_patterns("*.tmp*")


def bias_page(root: Path, runs: int) -> tuple[float, float]:
    """(first render, median rerun after a filter change) of the bias page on the first checkpoint
    under ``root``, in seconds (AppTest, in this process)."""
    from streamlit.testing.v1 import AppTest

    os.environ["AGEGENDER_CHECKPOINTS"] = str(root)
    at = AppTest.from_file(str(APP), default_timeout=300)
    at.session_state["picker_names"] = [p.name for p in root.iterdir()][:1]
    at.run()
    t = time.perf_counter()
    at.switch_page("pages/bias.py").run()
    first = time.perf_counter() - t
    if at.exception:
        raise RuntimeError(at.exception[0].value)
    reruns = []
    for i in range(runs):
        t = time.perf_counter()
        at.checkbox(key="bias_hide_small").set_value(i % 2 == 0).run()
        reruns.append(time.perf_counter() - t)
    return first, statistics.median(reruns)


def generated_rows(val, n: int):
    """n rows drawn from a real validation table, with new file names and jittered ages."""
    rng = np.random.default_rng(0)
    rows = val.sample(n, replace=True, random_state=0).reset_index(drop=True)
    rows["file"] = [f"gen{i}.jpg" for i in range(len(rows))]
    rows["pred_age"] = (rows["pred_age"] + rng.normal(0, 1, len(rows))).clip(0).round(2)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = parser("report", __doc__)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--slice-rows", type=int, default=20_000, help="rows of the generated table the slice search gets")
    p.add_argument("--big-rows", type=int, default=200_000, help="rows of the generated file (0: skip it)")
    args = p.parse_args(argv)
    logging.getLogger("streamlit").setLevel(logging.ERROR)
    set_threads(args.threads)
    ckpt = checkpoint_path(args.checkpoint)
    df = load_predictions(ckpt, "test")
    one = median_s(lambda: build(df, ["age_bucket"]), args.runs, 1)
    full = median_s(lambda: build(df, list(DEFAULT_GROUPINGS)), args.runs, 1)
    print(f"{ckpt.name} test split, {len(df)} rows, {N_BOOT:,} bootstrap resamples, median of {args.runs}:")
    print(f"  report, overall + age_bucket                 {one:6.2f} s   (goal <= 2)")
    print(f"  report, overall + {len(DEFAULT_GROUPINGS)} groupings ({', '.join(DEFAULT_GROUPINGS)}) {full:6.2f} s")
    small = median_s(lambda: find_slices(df), args.runs, 1)
    many = generated_rows(df, args.slice_rows)
    big = median_s(lambda: find_slices(many), args.runs, 1)
    tried = sum(find_slices(many).tried.values())
    print(f"  worst slices, 3 factors, {len(df)} rows          {small:6.2f} s")
    print(f"  worst slices, 3 factors, {len(many):,} generated rows ({tried} slices tested) {big:6.2f} s   (goal <= 5)")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "ck"
        shutil.copytree(ckpt, root / ckpt.name, ignore=COPY_IGNORE)
        first, rerun = bias_page(root, args.runs)
        print(f"  bias page, first render (val split)          {first:6.2f} s")
        print(f"  bias page, rerun after a filter change       {rerun:6.2f} s   (goal <= 1)")
        if args.big_rows:
            big = Path(tmp) / "big"
            shutil.copytree(ckpt, big / "big", ignore=COPY_IGNORE)
            write_predictions(generated_rows(load_predictions(ckpt, "val"), args.big_rows),
                              predictions_path(big / "big", "val"))
            first_big, _ = bias_page(big, 1)
            print(f"  bias page on {args.big_rows:,} generated rows, first render {first_big:6.2f} s   (goal <= 10)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
