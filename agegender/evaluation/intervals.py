"""Calibrated age intervals: every age prediction with an interval at a stated coverage (80% by default).

    python -m agegender.intervals --checkpoint DIR --data UTKFACE_PATH [--coverage 0.8]
        [--no-by-predicted-age] [--min-per-bucket 50]

Calibrates a checkpoint on its own validation split by split conformal prediction (CQR over a DLDL head's
age distribution, or the residual of a regression head; one shift per predicted-age bucket by default) and
writes the record into its meta.json (the record itself: agegender.meta.Calibration). Applying a record to
predicted ages: agegender.models.interval; coverage per group: agegender.fairness.coverage.
The method, its guarantee and its limits: docs/intervals.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from ..labels import AGE_BUCKET_EDGES
from ..meta import (  # noqa: F401 - re-exported: the record itself lives in meta, which the checkpoint loader parses
    BY_AGE,
    CALIBRATE,
    CQR,
    ERR_MALFORMED,
    ERR_STALE,
    FIELDS_BY_AGE,
    KEY,
    META,
    RESIDUAL,
    Calibration,
    CheckpointError,
    IntervalError,
    atomic_write_text,
    bucket_of,
    calibration_of,
    edges_ok,
    levels,
    read_meta,
)
from ..models.interval import apply

DEFAULT_COVERAGE = 0.8
MIN_PER_BUCKET = 50  # validation faces a predicted-age bucket needs, else it is merged (docs/intervals.md)
SPLIT = "val"
MANIFEST = "manifest.csv"  # training's list of the checkpoint's images and their splits

# Error messages are constants so tests can assert them word for word.
ERR_TOO_FEW = "cannot calibrate a {coverage:.0%} interval on {n} image(s): it needs at least {need}"
ERR_COVERAGE = "the coverage must lie strictly between 0 and 1, not {coverage}"
ERR_EDGES = "age bucket edges must be increasing and start at 0, not {edges}"
ERR_NO_MANIFEST = "{path} has no " + MANIFEST + ", so its validation split is unknown: retrain it, or restore the file"
ERR_MISSING = ("{data} lacks {n} of the {total} validation images of {path} (e.g. {examples}): pass the UTKFace "
               "the checkpoint was trained on")


def scores(y, lo, hi) -> np.ndarray:
    """The conformity score: how far y lies outside [lo, hi] (negative: how far inside its nearer end)."""
    y = np.asarray(y, np.float64)
    return np.maximum(np.asarray(lo, np.float64) - y, y - np.asarray(hi, np.float64))


def conformal_quantile(s, coverage: float) -> float:
    """The ceil((n + 1) c)-th smallest of n scores: the finite-sample quantile whose threshold a fresh
    exchangeable score stays under with probability >= c. Refuses n too small for one to exist."""
    if not 0 < coverage < 1:
        raise ValueError(ERR_COVERAGE.format(coverage=coverage))
    s = np.sort(np.asarray(s, np.float64))
    n = len(s)
    k = math.ceil((n + 1) * coverage - 1e-9)  # 1e-9: (4 + 1) * 0.8 is 4.000000000000001
    if k > n:
        raise ValueError(ERR_TOO_FEW.format(coverage=coverage, n=n, need=fewest(coverage)))
    return float(s[k - 1])


def fewest(coverage: float) -> int:
    """The fewest scores conformal_quantile takes at ``coverage``: ceil((n + 1) c) <= n."""
    return math.ceil(coverage / (1 - coverage) - 1e-9)


def merged_edges(age, edges: Sequence[float] = AGE_BUCKET_EDGES, min_count: int = MIN_PER_BUCKET
                 ) -> tuple[float, ...]:
    """``edges`` (lower edges, the last bucket open) with the buckets holding fewer than ``min_count`` of the
    ages merged away: the smallest (the youngest of equals) into its smaller neighbour (the younger of equals),
    until none is small or one bucket is left."""
    edges = list(edges)
    if not edges_ok(edges):
        raise ValueError(ERR_EDGES.format(edges=edges))
    counts = list(np.bincount(bucket_of(age, edges), minlength=len(edges)))
    while len(counts) > 1 and min(counts) < min_count:
        i = counts.index(min(counts))
        j = i + 1 if i == 0 or (i + 1 < len(counts) and counts[i + 1] < counts[i - 1]) else i - 1
        counts[min(i, j)] += counts.pop(max(i, j))
        del edges[max(i, j)]  # the edge between them
    return tuple(edges)


def calibrate(y, lo, hi, coverage: float = DEFAULT_COVERAGE, method: str = CQR, **provenance) -> Calibration:
    """The calibration of a base interval [lo, hi] (CQR: the distribution's quantiles at levels(coverage);
    RESIDUAL: the predicted age twice) on true ages ``y``; ``provenance``: split, data, dataset_fingerprint,
    weights_sha256, tta."""
    s = scores(y, lo, hi)
    s = s[np.isfinite(s)]
    quantiles = levels(coverage) if method == CQR else ()
    defaults = {"split": SPLIT, "data": "", "dataset_fingerprint": "", "weights_sha256": "", "tta": True}
    return Calibration(method, float(coverage), quantiles, conformal_quantile(s, coverage), len(s),
                       **{**defaults, **provenance})


def calibrate_by_age(y, lo, hi, age, coverage: float = DEFAULT_COVERAGE, method: str = CQR,
                     edges: Sequence[float] = AGE_BUCKET_EDGES, min_count: int = MIN_PER_BUCKET,
                     **provenance) -> Calibration:
    """calibrate, with one t per bucket of the predicted age ``age``: ``edges`` merged to ``min_count`` faces a
    bucket (merged_edges; never below the few a quantile needs); the single-t calibration where one bucket is
    left, which gives the same intervals."""
    s, age = scores(y, lo, hi), np.asarray(age, np.float64)
    keep = np.isfinite(s) & np.isfinite(age)
    single = calibrate(y, lo, hi, coverage, method, **provenance)  # checks the coverage, too
    edges = merged_edges(age[keep], edges, max(min_count, fewest(coverage)))
    if len(edges) == 1:
        return single
    b = bucket_of(age[keep], edges)
    ts = tuple(conformal_quantile(s[keep][b == i], coverage) for i in range(len(edges)))
    ns = tuple(int(n) for n in np.bincount(b, minlength=len(edges)))
    return replace(single, method=BY_AGE[method], t=None, n_cal=int(keep.sum()), edges=edges, t_by_bucket=ts,
                   n_by_bucket=ns)


def write_calibration(folder: str | os.PathLike, cal: Calibration) -> None:
    """Put ``cal`` into the checkpoint's meta.json, atomically; every other key stays as it was."""
    meta = read_meta(folder)
    calibration_of({**meta, KEY: cal.to_json()}, folder)  # refuses a record for other weights
    meta[KEY] = cal.to_json()
    atomic_write_text(Path(folder) / META, json.dumps(meta, indent=2) + "\n")  # write_meta's layout


# ---- the command: calibrate a checkpoint on its own validation split --------------------------------------

def validation_members(folder: Path) -> list[str]:
    """The files the checkpoint's manifest puts in the validation split."""
    manifest = folder / MANIFEST
    if not manifest.is_file():
        raise CheckpointError(ERR_NO_MANIFEST.format(path=folder))
    m = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    return list(m.loc[m["split"] == SPLIT, "file"])


def calibrate_checkpoint(folder: str | os.PathLike, data: str | os.PathLike, coverage: float = DEFAULT_COVERAGE,
                         tta: bool = True, cache_dir=None, by_age: bool = True, min_count: int = MIN_PER_BUCKET
                         ) -> tuple[Calibration, dict]:
    """Run the checkpoint on its validation images in ``data`` (UTKFace) and calibrate its interval (one t per
    predicted-age bucket with ``by_age``: calibrate_by_age); returns the calibration (not yet written) and what
    it measured on those images (median width, coverage, and the coverage per bucket)."""
    from ..data.utkface import DatasetError, cached_images, scan
    from ..models.checkpoint import load_checkpoint
    from ..models.inference import predict_quantiles

    folder = Path(folder)
    ckpt = load_checkpoint(folder)
    wanted = validation_members(folder)
    sc = scan(data)
    have = {s.member for s in sc.samples}
    missing = [m for m in wanted if m not in have]
    if missing:
        raise DatasetError(ERR_MISSING.format(data=data, n=len(missing), total=len(wanted), path=folder,
                                              examples=", ".join(missing[:3])))
    images = cached_images(sc, ckpt.preprocess.cache_size, cache_dir)
    wanted_set = set(wanted)
    idx = np.array([i for i, s in enumerate(images.samples) if s.member in wanted_set], np.int64)
    y = np.array([images.samples[i].age for i in idx], np.float64)
    method = CQR if int(ckpt.meta.get("age_bins", 0)) else RESIDUAL
    base = levels(coverage) if method == CQR else ()
    age, _, q = predict_quantiles(ckpt, images.pixels[idx], base, tta)
    lo, hi = (q[:, 0], q[:, 1]) if method == CQR else (age, age)
    provenance = dict(split=SPLIT, data=Path(data).name, dataset_fingerprint=sc.fingerprint,
                      weights_sha256=ckpt.meta["weights_sha256"], tta=tta)
    cal = (calibrate_by_age(y, lo, hi, age, coverage, method, min_count=min_count, **provenance) if by_age
           else calibrate(y, lo, hi, coverage, method, **provenance))
    a, b = apply(cal, age, q, ckpt.age_range)
    hit = (a <= y) & (y <= b)
    by_bucket = [float(hit[bucket_of(age, cal.edges) == i].mean()) for i in range(len(cal.edges))]
    return cal, {"median_width": float(np.median(b - a)), "coverage": float(hit.mean()), "by_bucket": by_bucket}


def main(argv: list[str] | None = None) -> int:
    from ..data.utkface import DatasetError
    from ..models.runtime import set_threads

    p = argparse.ArgumentParser(prog="python -m agegender.intervals", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True, help="checkpoint folder (its meta.json gets the calibration)")
    p.add_argument("--data", required=True, help="the UTKFace the checkpoint was trained on: folder, .zip or .tar.gz")
    p.add_argument("--coverage", type=float, default=DEFAULT_COVERAGE, help="target coverage (default 0.8)")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=True,
                   help="calibrate predictions averaged with the mirrored image (default on, as evaluate and predict)")
    p.add_argument("--by-predicted-age", action=argparse.BooleanOptionalAction, default=True,
                   help="one t per bucket of the predicted age (default on; off: one t for every face)")
    p.add_argument("--min-per-bucket", type=int, default=MIN_PER_BUCKET,
                   help=f"validation faces a predicted-age bucket needs, else merged (default {MIN_PER_BUCKET})")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    set_threads(args.threads)
    t0 = time.perf_counter()
    try:
        cal, val = calibrate_checkpoint(args.checkpoint, args.data, args.coverage, args.tta, args.cache_dir,
                                        args.by_predicted_age, args.min_per_bucket)
        write_calibration(args.checkpoint, cal)
    except (CheckpointError, DatasetError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    ts = (f"t = {cal.t:+.2f} y" if cal.t is not None else "t by predicted age: " + ", ".join(
        f"{b} {t:+.2f} y (n={n}, {c:.0%})" for b, t, n, c in zip(cal.buckets(), cal.t_by_bucket, cal.n_by_bucket,
                                                                  val["by_bucket"], strict=True)))
    print(f"{cal.caption()} (n={cal.n_cal}, {cal.method}, TTA {'on' if cal.tta else 'off'}): {ts}; "
          f"on {cal.split}: median width {val['median_width']:.1f} y, coverage {val['coverage']:.1%}")
    print(f"written to {Path(args.checkpoint) / META} ({KEY})   time: {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
