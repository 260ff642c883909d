"""Evaluate a checkpoint: predictions CSV, summary table, metrics JSON.

    python -m agegender.evaluate --checkpoint DIR --data PATH [--split val|test|all]
        [--out PREDICTIONS.csv] [--json METRICS.json] [--no-tta] [--limit N]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from .checkpoint import CheckpointError, load_checkpoint, read_meta, write_meta
from .data import DatasetError, Images, cached_images, evenly_spaced, load_images, scan, split_of
from .distributed import setup as setup_distributed
from .inference import predict_checkpoint
from .labels import GENDERS, RACES
from .metrics import summary_of
from .predictions import COLUMNS, file_name, predictions_path, write_predictions
from .runtime import set_threads

log = logging.getLogger(__name__)


def predictions_frame(ckpt, images: Images, idx: np.ndarray, tta: bool = True) -> pd.DataFrame:
    ages, pf = predict_checkpoint(ckpt, images.pixels[idx], tta)
    ss = [images.samples[i] for i in idx]
    return pd.DataFrame({
        "file": [s.member for s in ss],
        "split": [s.split for s in ss],
        "age": [s.age for s in ss],
        "gender": [GENDERS[s.gender] for s in ss],
        "race": [RACES[s.race] for s in ss],
        "pred_age": np.round(ages, 2),
        "p_female": np.round(pf, 4),
    }, columns=COLUMNS)


def evaluate_into_checkpoint(folder: Path, images: Images, tta: bool = True) -> dict:
    """Write predictions-val.csv and predictions-test.csv and record their metrics in meta.json."""
    ckpt = load_checkpoint(folder)
    results = {}
    for split in ("val", "test"):
        t = time.perf_counter()
        df = predictions_frame(ckpt, images, images.indices(split), tta)
        write_predictions(df, predictions_path(folder, split))
        results[split] = {**summary_of(df), "tta": tta, "seconds": round(time.perf_counter() - t, 1)}
        log.info("%s: %s", split, format_metrics(results[split]))
    meta = read_meta(folder)
    meta["metrics"] = results
    meta.pop("format", None)
    write_meta(folder, meta)
    return results


def format_metrics(m: dict) -> str:
    def f(v, spec):
        return "n/a" if v is None else format(v, spec)

    return (f"n={m['n']}  MAE {f(m['age_mae'], '.2f')} y  CS@5 {f(m['age_cs5'], '.1%')}  "
            f"bias {f(m['age_bias'], '+.2f')} y  gender acc {f(m['gender_accuracy'], '.2%')}  "
            f"AUC {f(m['gender_auc'], '.4f')}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m agegender.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True, help="checkpoint folder")
    p.add_argument("--data", required=True, help="UTKFace-named images: folder, .zip or .tar.gz")
    p.add_argument("--split", default="test", choices=["val", "test", "all"],
                   help="all = every parseable image, whatever its split (external test sets)")
    p.add_argument("--out", help=f"predictions CSV (default: CHECKPOINT/{file_name('SPLIT')})")
    p.add_argument("--json", help="write the metrics to this file")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=True,
                   help="average with the mirrored image (default on)")
    p.add_argument("--limit", type=int, default=0,
                   help="an evenly spaced sample of N images of the split, decoded without the cache")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    set_threads(args.threads)
    t0 = time.perf_counter()
    dd, device = setup_distributed()  # under torchrun each rank scores its share of the images
    try:
        return _evaluate(args, dd, device, t0)
    finally:
        dd.close()


def _evaluate(args, dd, device, t0: float) -> int:
    try:
        ckpt = load_checkpoint(args.checkpoint, device)
        sc = scan(args.data)
        size = ckpt.preprocess.cache_size
        if args.limit:
            picked = [s for s in sc.samples if args.split == "all" or s.split == args.split]
            picked = evenly_spaced(picked, args.limit)  # spread over all ages
            images = load_images(sc, picked, size)
        else:
            images = cached_images(sc, size, args.cache_dir)
        idx = images.indices(args.split)
        if len(idx) == 0:
            raise DatasetError(f"no images of split {args.split!r} at {args.data}; try --split all")
        parts = dd.gather(predictions_frame(ckpt, images, idx[dd.rank::dd.world], args.tta))
    except (CheckpointError, DatasetError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not dd.main:
        return 0
    position = np.concatenate([np.arange(len(idx))[r::dd.world] for r in range(dd.world)])
    df = pd.concat(parts, ignore_index=True).iloc[np.argsort(position, kind="stable")].reset_index(drop=True)
    out = Path(args.out) if args.out else predictions_path(args.checkpoint, args.split)
    write_predictions(df, out)
    # the data module has logged them once with examples; the JSON keeps the count with the metrics
    skipped = [u for u in images.unreadable if args.split == "all" or split_of(u) == args.split]
    m = {**summary_of(df), "split": args.split, "tta": args.tta, "checkpoint": str(args.checkpoint),
         "unreadable": len(skipped), "seconds": round(time.perf_counter() - t0, 2)}
    print(format_metrics(m))
    print(f"predictions: {out}   time: {m['seconds']:.1f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(m, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
