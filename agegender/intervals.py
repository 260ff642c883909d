"""Calibrated age intervals: every age prediction with an interval at a stated coverage (80% by default).

    python -m agegender.intervals --checkpoint DIR --data UTKFACE_PATH [--coverage 0.8]
        [--no-by-predicted-age] [--min-per-bucket 50]

The method is split conformal prediction on the checkpoint's validation split, over a base interval:

- a DLDL age head (a softmax over whole years): conformalised quantile regression (CQR; Romano, Patterson
  & Candes, NeurIPS 2019). The base interval is the age distribution's (1 - c) / 2 and (1 + c) / 2 quantiles
  (c the coverage; year k's mass spread evenly over k +- 0.5, see distribution_quantiles), the conformity
  score of a face of true age y is max(lo - y, y - hi), and t, the ceil((n + 1) c)-th smallest of the n
  validation scores, moves both ends out (t > 0: the distribution was too narrow) or in (t < 0: too wide).
- a regression head (no distribution): the same with lo = hi = the predicted age, which is the plain
  split-conformal interval of the absolute error, pred +- t.

By default t is not one number but one per bucket of the predicted age (Mondrian, or group-conditional, split
conformal; Vovk et al., "Algorithmic learning in a random world", 2005): the validation faces are grouped by the
bucket their predicted age falls in, each bucket gets its own t, the ceil((n_b + 1) c)-th smallest of its n_b
scores, and a new face gets its predicted age's bucket's t. The groups are of the predicted age because it is
known for every uploaded photo, as neither the true age nor the ethnicity is. Why: one t covers babies nearly
always and teenagers and the over-40s less than c (the distribution is too wide for the first, too narrow for
the others), and groups whose age mixes differ inherit that (UTKFace's Asian faces, many of them children, were
covered 90% of the time at c = 80%); per bucket it evens out. The buckets are the report's age buckets
(agegender.labels.AGE_BUCKET_EDGES: 0-2, 3-9, ..., 70+) of the predicted age, merged where a bucket has fewer
than 50 validation faces (--min-per-bucket; at 50 the bucket's coverage varies by about 6 points from one
validation draw to another, sqrt(c (1 - c) / n_b)): the smallest such bucket (the youngest of equals) joins its
smaller neighbour (the younger of equals), until none is left. The lower edges used are recorded. Where that
leaves one bucket (a small validation split), the record is the single-t one, which gives the same intervals.
``--no-by-predicted-age`` makes the single-t calibration on purpose.

The interval [lo - t, hi + t] is clipped to the checkpoint's age range (which holds every label, so clipping
costs no coverage) and stored rounded outward to 0.01 y. One whose ends cross (t narrowed it past its own
width) is its middle: an empty set would cover nothing either, so this costs no coverage.

Guarantee: for a face exchangeable with the validation faces (same population, same checkpoint, same TTA),
P(lo <= y <= hi) >= c, averaged over the draw of the validation split and the face; by predicted age, the same
holds within each bucket (so also overall). Neither says anything of a group the buckets are not (an ethnicity,
a true age: a bucket of predicted 20-29 holds 15-year-olds and 35-year-olds), and a model can over-cover one
and under-cover another; coverage_by_group measures that on a test split, because intervals honest for one
group and not for another are a bias too. It is only approximate where training picked its best epoch on the
same validation split (the shipped checkpoints kept their last), and it does not carry to another dataset
(FairFace photos) at all: there coverage is whatever a test of it says.

Coverage is measured on exact ages only. Where only an age bin is known (FairFace), "the interval holds the
whole bin" bounds it from below and "the interval meets the bin" from above, and with ten-year bins and
intervals of about fifteen years the two are far apart: neither is the coverage, and comparing either with
80% would mislead, so bins are not reported.

The calibration is stored in the checkpoint's meta.json under ``age_interval`` (Calibration.to_json): the
weights' checksum it was made for, the data and split, TTA; by predicted age, method cqr-by-predicted-age (or
residual-by-predicted-age), with "edges", "t_by_bucket" and "n_by_bucket" in place of "t". A record for other
weights, or a malformed one, is refused with IntervalError; a checkpoint without one predicts no interval
(empty pred_age_lo / hi).
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
from dataclasses import asdict, dataclass, replace
from itertools import pairwise
from pathlib import Path

import numpy as np
import pandas as pd

from .fairness import group_positions, prepare, wilson
from .inference import predict_distribution, predict_quantiles, quantiles_in_range
from .labels import AGE_BUCKET_EDGES
from .meta import META, CheckpointError, atomic_write_text, read_meta
from .predictions import DERIVED_GROUP, INTERVAL

log = logging.getLogger(__name__)

KEY = "age_interval"  # meta.json's key
DEFAULT_COVERAGE = 0.8
CQR, RESIDUAL = "cqr", "residual"  # a distribution's quantiles conformalised; a regression head's |error|
BY_AGE = {CQR: "cqr-by-predicted-age", RESIDUAL: "residual-by-predicted-age"}  # the same, one t per bucket
MIN_PER_BUCKET = 50  # validation faces a predicted-age bucket needs, else it is merged (see the module's note)
SPLIT = "val"
MANIFEST = "manifest.csv"  # training's list of the checkpoint's images and their splits
FIELDS = ("method", "coverage", "quantiles", "t", "n_cal", "split", "data", "dataset_fingerprint",
          "weights_sha256", "tta")
BUCKET_FIELDS = ("edges", "t_by_bucket", "n_by_bucket")
FIELDS_BY_AGE = (*FIELDS[:3], *BUCKET_FIELDS, *FIELDS[4:])  # "t" replaced by one per bucket
COVERAGE_COLUMNS = ("n", "covered", "coverage", "coverage_lo", "coverage_hi", "median_width")

# Error messages are constants so tests can assert them word for word.
CALIBRATE = "python -m agegender.intervals --checkpoint {path} --data UTKFACE_PATH"
NO_INTERVAL = "no calibrated interval: run " + CALIBRATE
ERR_MALFORMED = "{path}/" + META + " has a malformed " + KEY + " record ({detail}): recalibrate with " + CALIBRATE
ERR_STALE = ("{path}/" + META + "'s " + KEY + " was calibrated for other weights (sha256 {theirs:.12}, these are "
             "{ours:.12}): recalibrate with " + CALIBRATE)
ERR_TOO_FEW = "cannot calibrate a {coverage:.0%} interval on {n} image(s): it needs at least {need}"
ERR_COVERAGE = "the coverage must lie strictly between 0 and 1, not {coverage}"
ERR_EDGES = "age bucket edges must be increasing and start at 0, not {edges}"
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
        raise ValueError(ERR_TOO_FEW.format(coverage=coverage, n=n, need=fewest(coverage)))
    return float(s[k - 1])


def fewest(coverage: float) -> int:
    """The fewest scores conformal_quantile takes at ``coverage``: ceil((n + 1) c) <= n."""
    return math.ceil(coverage / (1 - coverage) - 1e-9)


def levels(coverage: float) -> tuple[float, float]:
    """The base interval's quantile levels: the central ``coverage`` of the distribution."""
    return round((1 - coverage) / 2, 12), round((1 + coverage) / 2, 12)  # 0.1, not 0.09999999999999998


def _edges_ok(edges) -> bool:
    return len(edges) > 0 and edges[0] == 0 and all(b > a for a, b in pairwise(edges))


def bucket_of(age, edges: Sequence[float]) -> np.ndarray:
    """Each age's bucket: the index of the last lower edge at or below it (below the first: the first)."""
    return np.clip(np.searchsorted(np.asarray(edges, np.float64), np.asarray(age, np.float64), "right") - 1, 0, None)


def merged_edges(age, edges: Sequence[float] = AGE_BUCKET_EDGES, min_count: int = MIN_PER_BUCKET
                 ) -> tuple[float, ...]:
    """``edges`` (lower edges, the last bucket open) with the buckets holding fewer than ``min_count`` of the
    ages merged away: the smallest (the youngest of equals) into its smaller neighbour (the younger of equals),
    until none is small or one bucket is left."""
    edges = list(edges)
    if not _edges_ok(edges):
        raise ValueError(ERR_EDGES.format(edges=edges))
    counts = list(np.bincount(bucket_of(age, edges), minlength=len(edges)))
    while len(counts) > 1 and min(counts) < min_count:
        i = counts.index(min(counts))
        j = i + 1 if i == 0 or (i + 1 < len(counts) and counts[i + 1] < counts[i - 1]) else i - 1
        counts[min(i, j)] += counts.pop(max(i, j))
        del edges[max(i, j)]  # the edge between them
    return tuple(edges)


@dataclass(frozen=True)
class Calibration:
    method: str  # CQR or RESIDUAL; by predicted age, BY_AGE[CQR] or BY_AGE[RESIDUAL]
    coverage: float  # the target, 1 - alpha
    quantiles: tuple[float, ...]  # CQR: the base interval's levels (levels(coverage)); RESIDUAL: none
    t: float | None  # years each end moves out (negative: in); None by predicted age (t_by_bucket)
    n_cal: int  # validation faces it was computed on
    split: str  # which split of the checkpoint's manifest
    data: str  # the dataset's folder name, as captions say it: "UTKFace"
    dataset_fingerprint: str  # agegender.data.Scan.fingerprint of the data calibrated on
    weights_sha256: str  # the weights it holds for
    tta: bool  # whether the predictions were averaged with the mirror image
    edges: tuple[float, ...] = ()  # by predicted age: each bucket's lower edge in years, from 0, the last open
    t_by_bucket: tuple[float, ...] = ()  # by predicted age: each bucket's t
    n_by_bucket: tuple[int, ...] = ()  # by predicted age: each bucket's validation faces

    @property
    def base(self) -> str:
        """The base interval's kind, CQR or RESIDUAL, whether or not t is per bucket."""
        return next((m for m, b in BY_AGE.items() if b == self.method), self.method)

    def shifts(self, age) -> np.ndarray:
        """Each face's t, from its predicted age ``age`` (by predicted age) or not."""
        if not self.edges:
            return np.float64(self.t)
        return np.asarray(self.t_by_bucket, np.float64)[bucket_of(age, self.edges)]

    def to_json(self) -> dict:
        d = {**asdict(self), **{k: list(getattr(self, k)) for k in ("quantiles", *BUCKET_FIELDS)}}
        return {k: d[k] for k in (FIELDS_BY_AGE if self.edges else FIELDS)}

    @classmethod
    def from_json(cls, rec, path) -> Calibration:
        """A record read back, every field checked; IntervalError (ERR_MALFORMED) saying what is wrong."""
        problem = _problem(rec)
        if problem:
            raise IntervalError(ERR_MALFORMED.format(path=path, detail=problem))
        by_age = {"t": None, "edges": tuple(rec["edges"]), "n_by_bucket": tuple(rec["n_by_bucket"]),
                  "t_by_bucket": tuple(map(float, rec["t_by_bucket"]))} if "edges" in rec else {"t": float(rec["t"])}
        return cls(**{**rec, "coverage": float(rec["coverage"]), "quantiles": tuple(rec["quantiles"]), **by_age})

    def buckets(self) -> list[str]:
        """The predicted-age buckets' names, "0-2" ... "70+"; none for a single t."""
        e = self.edges
        return [f"{a:g}-{b - 1:g}" for a, b in pairwise(e)] + [f"{e[-1]:g}+"] if e else []

    def caption(self) -> str:
        """Where the interval comes from, in a few words: "80% interval, calibrated on UTKFace val"."""
        return f"{self.coverage:.0%} interval, calibrated on {self.data} {self.split}"


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _count(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x > 0


def _bucket_problem(rec) -> str | None:
    """What is wrong with a by-predicted-age record's buckets, or None."""
    edges, ts, ns = rec["edges"], rec["t_by_bucket"], rec["n_by_bucket"]
    if not (isinstance(edges, list) and all(map(_number, edges)) and _edges_ok(edges)):
        return "edges must be a list of increasing ages in years, from 0"
    if not (isinstance(ts, list) and len(ts) == len(edges) and all(map(_number, ts))):
        return "t_by_bucket must hold a finite number of years for each of the edges"
    if not (isinstance(ns, list) and len(ns) == len(edges) and all(map(_count, ns)) and sum(ns) == rec["n_cal"]):
        return "n_by_bucket must hold a positive count for each of the edges, adding up to n_cal"
    return None


def _problem(rec) -> str | None:
    """What is wrong with an age_interval record read from meta.json, or None."""
    if not isinstance(rec, dict):
        return "not a JSON object"
    by_age = rec.get("method") in BY_AGE.values() or any(k in rec for k in BUCKET_FIELDS)
    fields = FIELDS_BY_AGE if by_age else FIELDS
    missing, unknown = [k for k in fields if k not in rec], [k for k in rec if k not in fields]
    if missing or unknown:
        return "; ".join(([f"missing {', '.join(missing)}"] if missing else [])
                         + ([f"unknown {', '.join(unknown)}"] if unknown else []))
    methods = tuple(BY_AGE.values()) if by_age else (CQR, RESIDUAL)
    checks = [
        (rec["method"] in methods, f"method must be {methods[0]} or {methods[1]}"),
        (_number(rec["coverage"]) and 0 < rec["coverage"] < 1, "coverage must be a number between 0 and 1"),
        (by_age or _number(rec["t"]), "t must be a finite number of years"),
        (_count(rec["n_cal"]), "n_cal must be a positive integer"),
        (isinstance(rec["tta"], bool), "tta must be true or false"),
        (all(isinstance(rec[k], str) for k in ("split", "data", "dataset_fingerprint", "weights_sha256")),
         "split, data, dataset_fingerprint and weights_sha256 must be strings"),
    ]
    for ok, detail in checks:
        if not ok:
            return detail
    if by_age and _bucket_problem(rec):
        return _bucket_problem(rec)
    want = list(levels(rec["coverage"])) if rec["method"] in (CQR, BY_AGE[CQR]) else []
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


def apply(cal: Calibration, age, quantiles: np.ndarray | None, limits: tuple[float, float]
          ) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) in years: the base interval (CQR: ``quantiles``, N x 2 at cal.quantiles; RESIDUAL: the predicted
    ``age``) moved by t (by predicted age: the bucket of ``age``'s), clipped to the age range ``limits`` and
    rounded outward to 0.01 y (see the module's note)."""
    t = cal.shifts(age)
    if cal.base == CQR:
        q = np.asarray(quantiles, np.float64)
        lo, hi = q[:, 0] - t, q[:, 1] + t
    else:
        a = np.asarray(age, np.float64)
        lo, hi = a - t, a + t
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
    if cal.base != head:
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
    age, pf, dist = predict_distribution(ckpt, pixels, tta, **kw)
    return age, pf, *interval_of(ckpt, age, dist, tta)


def interval_of(ckpt, age: np.ndarray, dist: np.ndarray | None, tta: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) of predicted ``age`` and its distribution ``dist`` (inference.predict_distribution; None for a
    regression head); NaN when the checkpoint has no calibration, or one made with the other TTA setting."""
    from .model import age_range

    cal = calibration_of(ckpt.meta, ckpt.path)
    if cal is not None and cal.tta != tta:
        log.warning(WARN_TTA, ckpt.path, "on" if cal.tta else "off", "on" if tta else "off")
        cal = None
    if cal is None:
        return np.full(len(age), np.nan), np.full(len(age), np.nan)
    q = None if dist is None else quantiles_in_range(ckpt, dist, cal.quantiles)
    return apply(cal, age, q, age_range(ckpt.meta))


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
                         tta: bool = True, cache_dir=None, by_age: bool = True, min_count: int = MIN_PER_BUCKET
                         ) -> tuple[Calibration, dict]:
    """Run the checkpoint on its validation images in ``data`` (UTKFace) and calibrate its interval (one t per
    predicted-age bucket with ``by_age``: calibrate_by_age); returns the calibration (not yet written) and what
    it measured on those images (median width, coverage, and the coverage per bucket)."""
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
    provenance = dict(split=SPLIT, data=Path(data).name, dataset_fingerprint=sc.fingerprint,
                      weights_sha256=ckpt.meta["weights_sha256"], tta=tta)
    cal = (calibrate_by_age(y, lo, hi, age, coverage, method, min_count=min_count, **provenance) if by_age
           else calibrate(y, lo, hi, coverage, method, **provenance))
    a, b = apply(cal, age, q, age_range(ckpt.meta))
    hit = (a <= y) & (y <= b)
    by_bucket = [float(hit[bucket_of(age, cal.edges) == i].mean()) for i in range(len(cal.edges))]
    return cal, {"median_width": float(np.median(b - a)), "coverage": float(hit.mean()), "by_bucket": by_bucket}


def main(argv: list[str] | None = None) -> int:
    from .data import DatasetError
    from .runtime import set_threads

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
