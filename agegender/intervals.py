"""Calibrated age intervals: every age prediction with an interval at a stated coverage (80% by default).

    python -m agegender.intervals --checkpoint DIR --data UTKFACE_PATH [--coverage 0.8]

The method is split conformal prediction on the checkpoint's validation split, over a base interval:

- a DLDL age head (a softmax over whole years): conformalised quantile regression (CQR; Romano, Patterson
  & Candes, NeurIPS 2019). The base interval is the age distribution's (1 - c) / 2 and (1 + c) / 2 quantiles
  (c the coverage; year k's mass spread evenly over k +- 0.5, see distribution_quantiles), the conformity
  score of a face of true age y is max(lo - y, y - hi), and t, the ceil((n + 1) c)-th smallest of the n
  validation scores, moves both ends out (t > 0: the distribution was too narrow) or in (t < 0: too wide).
- a regression head (no distribution): the same with lo = hi = the predicted age, which is the plain
  split-conformal interval of the absolute error, pred +- t.

The interval [lo - t, hi + t] is clipped to the checkpoint's age range (which holds every label, so clipping
costs no coverage) and stored rounded outward to 0.01 y. One whose ends cross (t narrowed it past its own
width) is its middle: an empty set would cover nothing either, so this costs no coverage.

Guarantee: for a face exchangeable with the validation faces (same population, same checkpoint, same TTA),
P(lo <= y <= hi) >= c, averaged over the draw of the validation split and the face. It is marginal: it says
nothing of any one group, and a model can over-cover one and under-cover another; coverage_by_group measures
that on a test split, because intervals honest for one group and not for another are a bias too. It is
only approximate where training picked its best epoch on the same validation split (the shipped checkpoints
kept their last), and it does not carry to another dataset (FairFace photos) at all: there coverage is
whatever a test of it says.

Coverage is measured on exact ages only. Where only an age bin is known (FairFace), "the interval holds the
whole bin" bounds it from below and "the interval meets the bin" from above, and with ten-year bins and
intervals of about fifteen years the two are far apart: neither is the coverage, and comparing either with
80% would mislead, so bins are not reported.

The calibration is stored in the checkpoint's meta.json under ``age_interval`` (Calibration.to_json): the
weights' checksum it was made for, the data and split, TTA. A record for other weights, or a malformed one,
is refused with IntervalError; a checkpoint without one predicts no interval (empty pred_age_lo / hi).
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
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .fairness import group_positions, prepare, wilson
from .inference import predict_checkpoint, predict_quantiles
from .meta import META, CheckpointError, atomic_write_text, read_meta
from .predictions import DERIVED_GROUP, INTERVAL

log = logging.getLogger(__name__)

KEY = "age_interval"  # meta.json's key
DEFAULT_COVERAGE = 0.8
CQR, RESIDUAL = "cqr", "residual"  # a distribution's quantiles conformalised; a regression head's |error|
SPLIT = "val"
MANIFEST = "manifest.csv"  # training's list of the checkpoint's images and their splits
FIELDS = ("method", "coverage", "quantiles", "t", "n_cal", "split", "data", "dataset_fingerprint",
          "weights_sha256", "tta")
COVERAGE_COLUMNS = ("n", "covered", "coverage", "coverage_lo", "coverage_hi", "median_width")

# Error messages are constants so tests can assert them word for word.
CALIBRATE = "python -m agegender.intervals --checkpoint {path} --data UTKFACE_PATH"
NO_INTERVAL = "no calibrated interval: run " + CALIBRATE
ERR_MALFORMED = "{path}/" + META + " has a malformed " + KEY + " record ({detail}): recalibrate with " + CALIBRATE
ERR_STALE = ("{path}/" + META + "'s " + KEY + " was calibrated for other weights (sha256 {theirs:.12}, these are "
             "{ours:.12}): recalibrate with " + CALIBRATE)
ERR_TOO_FEW = "cannot calibrate a {coverage:.0%} interval on {n} image(s): it needs at least {need}"
ERR_COVERAGE = "the coverage must lie strictly between 0 and 1, not {coverage}"
ERR_NO_MANIFEST = "{path} has no " + MANIFEST + ", so its validation split is unknown: retrain it, or restore the file"
ERR_MISSING = ("{data} lacks {n} of the {total} validation images of {path} (e.g. {examples}): pass the UTKFace "
               "the checkpoint was trained on")
WARN_TTA = "%s/" + META + "'s age interval was calibrated with TTA %s, not %s: predicting no interval"


class IntervalError(CheckpointError):
    """A checkpoint's age_interval record that cannot be used; the message says why and how to recalibrate."""


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
        raise ValueError(ERR_TOO_FEW.format(coverage=coverage, n=n, need=math.ceil(coverage / (1 - coverage) - 1e-9)))
    return float(s[k - 1])


def levels(coverage: float) -> tuple[float, float]:
    """The base interval's quantile levels: the central ``coverage`` of the distribution."""
    return round((1 - coverage) / 2, 12), round((1 + coverage) / 2, 12)  # 0.1, not 0.09999999999999998


@dataclass(frozen=True)
class Calibration:
    method: str  # CQR or RESIDUAL
    coverage: float  # the target, 1 - alpha
    quantiles: tuple[float, ...]  # CQR: the base interval's levels (levels(coverage)); RESIDUAL: none
    t: float  # years each end moves out (negative: in)
    n_cal: int  # validation faces it was computed on
    split: str  # which split of the checkpoint's manifest
    data: str  # the dataset's folder name, as captions say it: "UTKFace"
    dataset_fingerprint: str  # agegender.data.Scan.fingerprint of the data calibrated on
    weights_sha256: str  # the weights it holds for
    tta: bool  # whether the predictions were averaged with the mirror image

    def to_json(self) -> dict:
        return {**asdict(self), "quantiles": list(self.quantiles)}

    @classmethod
    def from_json(cls, rec, path) -> Calibration:
        """A record read back, every field checked; IntervalError (ERR_MALFORMED) saying what is wrong."""
        problem = _problem(rec)
        if problem:
            raise IntervalError(ERR_MALFORMED.format(path=path, detail=problem))
        return cls(**{**rec, "coverage": float(rec["coverage"]), "t": float(rec["t"]),
                      "quantiles": tuple(rec["quantiles"])})

    def caption(self) -> str:
        """Where the interval comes from, in a few words: "80% interval, calibrated on UTKFace val"."""
        return f"{self.coverage:.0%} interval, calibrated on {self.data} {self.split}"


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _problem(rec) -> str | None:
    """What is wrong with an age_interval record read from meta.json, or None."""
    if not isinstance(rec, dict):
        return "not a JSON object"
    missing, unknown = [k for k in FIELDS if k not in rec], [k for k in rec if k not in FIELDS]
    if missing or unknown:
        return "; ".join(([f"missing {', '.join(missing)}"] if missing else [])
                         + ([f"unknown {', '.join(unknown)}"] if unknown else []))
    checks = [
        (rec["method"] in (CQR, RESIDUAL), f"method must be {CQR} or {RESIDUAL}"),
        (_number(rec["coverage"]) and 0 < rec["coverage"] < 1, "coverage must be a number between 0 and 1"),
        (_number(rec["t"]), "t must be a finite number of years"),
        (isinstance(rec["n_cal"], int) and not isinstance(rec["n_cal"], bool) and rec["n_cal"] > 0,
         "n_cal must be a positive integer"),
        (isinstance(rec["tta"], bool), "tta must be true or false"),
        (all(isinstance(rec[k], str) for k in ("split", "data", "dataset_fingerprint", "weights_sha256")),
         "split, data, dataset_fingerprint and weights_sha256 must be strings"),
    ]
    for ok, detail in checks:
        if not ok:
            return detail
    want = list(levels(rec["coverage"])) if rec["method"] == CQR else []
    q = rec["quantiles"]
    if not (isinstance(q, list) and len(q) == len(want) and all(map(_number, q))
            and np.allclose(q, want, rtol=0, atol=1e-9)):
        return f"quantiles {q} do not match a {rec['method']} interval of coverage {rec['coverage']}: expected {want}"
    return None


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


def apply(cal: Calibration, age, quantiles: np.ndarray | None, limits: tuple[float, float]
          ) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) in years: the base interval (CQR: ``quantiles``, N x 2 at cal.quantiles; RESIDUAL: ``age``)
    moved by t, clipped to the age range ``limits`` and rounded outward to 0.01 y (see the module's note)."""
    if cal.method == CQR:
        q = np.asarray(quantiles, np.float64)
        lo, hi = q[:, 0] - cal.t, q[:, 1] + cal.t
    else:
        a = np.asarray(age, np.float64)
        lo, hi = a - cal.t, a + cal.t
    mid = (lo + hi) / 2
    lo, hi = np.where(lo > hi, mid, lo), np.where(lo > hi, mid, hi)
    return (np.clip(np.floor(lo * 100) / 100, *limits), np.clip(np.ceil(hi * 100) / 100, *limits))


def calibration_of(meta: dict, path) -> Calibration | None:
    """A checkpoint's calibration (meta its meta.json, ``path`` its folder), None when it has none;
    IntervalError for a malformed record, or one made for other weights or another kind of age head."""
    if KEY not in meta:
        return None
    cal = Calibration.from_json(meta[KEY], path)
    ours = str(meta.get("weights_sha256"))
    if cal.weights_sha256 != ours:
        raise IntervalError(ERR_STALE.format(path=path, theirs=cal.weights_sha256, ours=ours))
    head = CQR if int(meta.get("age_bins", 0)) else RESIDUAL
    if cal.method != head:
        raise IntervalError(ERR_MALFORMED.format(path=path, detail=f"method {cal.method}, but the age head "
                                                 f"calls for {head}"))
    return cal


def write_calibration(folder: str | os.PathLike, cal: Calibration) -> None:
    """Put ``cal`` into the checkpoint's meta.json, atomically; every other key stays as it was."""
    meta = read_meta(folder)
    calibration_of({**meta, KEY: cal.to_json()}, folder)  # refuses a record for other weights
    meta[KEY] = cal.to_json()
    atomic_write_text(Path(folder) / META, json.dumps(meta, indent=2) + "\n")  # write_meta's layout


def predict_with_interval(ckpt, pixels: np.ndarray, tta: bool = True, **kw
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(age, P(female), lo, hi) of aligned faces through a checkpoint (agegender.checkpoint.Checkpoint); lo
    and hi are NaN when it has no calibration, or one made with the other TTA setting. ``kw``: batch_size,
    precision."""
    from .model import age_range

    cal = calibration_of(ckpt.meta, ckpt.path)
    if cal is not None and cal.tta != tta:
        log.warning(WARN_TTA, ckpt.path, "on" if cal.tta else "off", "on" if tta else "off")
        cal = None
    if cal is None:
        age, pf = predict_checkpoint(ckpt, pixels, tta, **kw)
        return age, pf, np.full(len(age), np.nan), np.full(len(age), np.nan)
    age, pf, q = predict_quantiles(ckpt, pixels, cal.quantiles, tta, **kw)
    return age, pf, *apply(cal, age, q, age_range(ckpt.meta))


def age_text(age: float, lo: float | None = None, hi: float | None = None) -> str:
    """A predicted age and its interval as a person reads them: "62 y (55-70)", the whole years the interval
    holds (the labels are whole years); "62 y" without one."""
    if lo is None or hi is None or not (np.isfinite(lo) and np.isfinite(hi)):
        return f"{age:.0f} y"
    a, b = math.ceil(lo), math.floor(hi)
    return f"{age:.0f} y ({a}-{b})" if a <= b else f"{age:.0f} y ({lo:.1f}-{hi:.1f})"


def coverage_by_group(df: pd.DataFrame, columns: Sequence[str] | str = ()) -> pd.DataFrame:
    """Per group of ``columns`` (a column name, "a:b", or a list; none: the whole table), over the rows with
    a face found, an exact age and an interval: n, how many intervals hold the age, that share with its
    Wilson 95% interval, and the median width. Groups are listed as agegender.fairness lists them; a table
    without such rows (no interval, or age bins only: see the module's note) gives no rows."""
    cols = columns.split(":") if isinstance(columns, str) else list(columns)
    cols = [c for c in cols if c]
    t = prepare(df) if DERIVED_GROUP in cols and DERIVED_GROUP not in df else df
    lo, hi = (np.asarray(t[c], np.float64) if c in t else np.full(len(t), np.nan) for c in INTERVAL)
    age = np.asarray(t["age"], np.float64) if "age" in t else np.full(len(t), np.nan)
    found = t["found"].to_numpy(bool) if "found" in t else np.ones(len(t), bool)
    keep = found & np.isfinite(age) & np.isfinite(lo) & np.isfinite(hi)
    t, age, lo, hi = t[keep].reset_index(drop=True), age[keep], lo[keep], hi[keep]
    covered = (lo <= age) & (age <= hi)
    rows = []
    for key, where in (group_positions(t, cols) if len(t) else []):
        k, n = int(covered[where].sum()), len(where)
        rows.append({**dict(zip(cols, key, strict=True)), "n": n, "covered": k, "coverage": k / n,
                     **dict(zip(("coverage_lo", "coverage_hi"), wilson(k, n), strict=True)),
                     "median_width": float(np.median(hi[where] - lo[where]))})
    return pd.DataFrame(rows, columns=[*cols, *COVERAGE_COLUMNS])


# ---- the command: calibrate a checkpoint on its own validation split --------------------------------------

def validation_members(folder: Path) -> list[str]:
    """The files the checkpoint's manifest puts in the validation split."""
    manifest = folder / MANIFEST
    if not manifest.is_file():
        raise CheckpointError(ERR_NO_MANIFEST.format(path=folder))
    m = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    return list(m.loc[m["split"] == SPLIT, "file"])


def calibrate_checkpoint(folder: str | os.PathLike, data: str | os.PathLike, coverage: float = DEFAULT_COVERAGE,
                         tta: bool = True, cache_dir=None) -> tuple[Calibration, dict]:
    """Run the checkpoint on its validation images in ``data`` (UTKFace) and calibrate its interval; returns
    the calibration (not yet written) and what it measured on those images (median width, coverage)."""
    from .checkpoint import load_checkpoint
    from .data import DatasetError, cached_images, scan

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
    from .model import age_range

    age, _, q = predict_quantiles(ckpt, images.pixels[idx], base, tta)
    lo, hi = (q[:, 0], q[:, 1]) if method == CQR else (age, age)
    cal = calibrate(y, lo, hi, coverage, method, split=SPLIT, data=Path(data).name,
                    dataset_fingerprint=sc.fingerprint, weights_sha256=ckpt.meta["weights_sha256"], tta=tta)
    a, b = apply(cal, age, q, age_range(ckpt.meta))
    return cal, {"median_width": float(np.median(b - a)), "coverage": float(np.mean((a <= y) & (y <= b)))}


def main(argv: list[str] | None = None) -> int:
    from .data import DatasetError
    from .runtime import set_threads

    p = argparse.ArgumentParser(prog="python -m agegender.intervals", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True, help="checkpoint folder (its meta.json gets the calibration)")
    p.add_argument("--data", required=True, help="the UTKFace the checkpoint was trained on: folder, .zip or .tar.gz")
    p.add_argument("--coverage", type=float, default=DEFAULT_COVERAGE, help="target coverage (default 0.8)")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=True,
                   help="calibrate predictions averaged with the mirrored image (default on, as evaluate and predict)")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    set_threads(args.threads)
    t0 = time.perf_counter()
    try:
        cal, val = calibrate_checkpoint(args.checkpoint, args.data, args.coverage, args.tta, args.cache_dir)
        write_calibration(args.checkpoint, cal)
    except (CheckpointError, DatasetError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{cal.caption()} (n={cal.n_cal}, {cal.method}, TTA {'on' if cal.tta else 'off'}): t = {cal.t:+.2f} y; "
          f"on {cal.split}: median width {val['median_width']:.1f} y, coverage {val['coverage']:.1%}")
    print(f"written to {Path(args.checkpoint) / META} ({KEY})   time: {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
