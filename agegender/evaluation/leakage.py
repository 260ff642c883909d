"""For each query face descriptor, its nearest reference descriptor: the search behind the look-alike check;
then what each match is (duplicate, look-alike), the flagged share by group, and figures with and without them.

Plain numpy matrix products, blockwise: |q - r|^2 = |q|^2 + |r|^2 - 2 q.r for a block of queries against a
block of references at a time, so memory stays at one QUERY_BLOCK x REFERENCE_BLOCK float32 matrix (32 MB)
whatever the sizes, and the BLAS product does the work (21,000 x 21,000 in seconds on 2 cores). An exact
search, no index: at these sizes building a nearest-neighbour library's index would cost more than the
products, and an approximate index could miss the very pairs the check is for.

float32 products lose about 1e-6 of |q|^2 (~0.25 for dlib's descriptors) to cancellation, so the chosen
pair's distance is recomputed exactly in float64; a reference closer than the chosen one by less than that
can be passed over, which moves no distance by more than 1e-3. Torch-free.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..fairness.groups import N_BOOT, SEED, wilson
from ..fairness.stats import draws, interval

QUERY_BLOCK = 1024
REFERENCE_BLOCK = 8192


@dataclass
class Nearest:
    """One row per query: the nearest reference's row and the distance to it (-1 and NaN for a query with no
    descriptor, a face not found, or when there is no reference)."""

    index: np.ndarray  # int64
    distance: np.ndarray  # float64


def _finite_rows(x: np.ndarray) -> np.ndarray:
    return np.isfinite(x).all(axis=1)


def nearest(query: np.ndarray, reference: np.ndarray, query_block: int = QUERY_BLOCK,
            reference_block: int = REFERENCE_BLOCK) -> Nearest:
    """The nearest row of ``reference`` to each row of ``query`` (both N x D; NaN rows are left out)."""
    query, reference = np.asarray(query, np.float32), np.asarray(reference, np.float32)
    index = np.full(len(query), -1, np.int64)
    distance = np.full(len(query), np.nan)
    ok_q, ok_r = _finite_rows(query), np.flatnonzero(_finite_rows(reference))
    if not len(ok_r) or not ok_q.any():
        return Nearest(index, distance)
    ref = np.ascontiguousarray(reference[ok_r])
    ref_sq = np.einsum("ij,ij->i", ref, ref)
    rows = np.flatnonzero(ok_q)
    for start in range(0, len(rows), query_block):
        part = rows[start:start + query_block]
        index[part] = ok_r[_block_argmin(query[part], ref, ref_sq, reference_block)]
    diff = query[rows].astype(np.float64) - reference[index[rows]].astype(np.float64)
    distance[rows] = np.sqrt(np.einsum("ij,ij->i", diff, diff))
    return Nearest(index, distance)


def _block_argmin(q: np.ndarray, ref: np.ndarray, ref_sq: np.ndarray, reference_block: int) -> np.ndarray:
    """Row of ``ref`` nearest to each row of ``q``, a reference block at a time. |q|^2 is the same for every
    reference of a query, so it is left out of the comparison."""
    best = np.full(len(q), np.inf, np.float32)
    arg = np.zeros(len(q), np.int64)
    for start in range(0, len(ref), reference_block):
        block = ref[start:start + reference_block]
        block_sq = ref_sq[start:start + reference_block]
        d = q @ block.T
        d *= -2
        d += block_sq
        j = d.argmin(axis=1)
        value = d[np.arange(len(q)), j]
        better = value < best
        best[better], arg[better] = value[better], j[better] + start
    return arg


def pairs_within(vectors: np.ndarray, limits: np.ndarray, block: int = QUERY_BLOCK) -> tuple[np.ndarray, ...]:
    """Every pair (i < j) of rows of ``vectors`` closer than the smaller of their two ``limits``: the rows i,
    the rows j and the distances (float64, recomputed exactly). NaN rows pair with nothing. One block of rows
    against all at a time: memory is one block x N float32 matrix."""
    v = np.asarray(vectors, np.float32)
    limits = np.asarray(limits, np.float64)
    ok = np.flatnonzero(_finite_rows(v) & (limits > 0))
    x, lim = np.ascontiguousarray(v[ok]), limits[ok]
    sq = np.einsum("ij,ij->i", x, x)
    found_i, found_j = [], []
    for start in range(0, len(x), block):
        d2 = x[start:start + block] @ x.T
        d2 *= -2
        d2 += sq[start:start + block, None]
        d2 += sq[None, :]
        bound = np.minimum(lim[start:start + block, None], lim[None, :]) + 1e-3  # float32 slack, re-checked below
        i, j = np.nonzero(d2 < bound * bound)
        keep = i + start < j
        found_i.append(i[keep] + start)
        found_j.append(j[keep])
    i = np.concatenate(found_i) if found_i else np.zeros(0, np.int64)
    j = np.concatenate(found_j) if found_j else np.zeros(0, np.int64)
    diff = x[i].astype(np.float64) - x[j].astype(np.float64)
    dist = np.sqrt(np.einsum("ij,ij->i", diff, diff))
    keep = dist < np.minimum(lim[i], lim[j])
    return ok[i[keep]], ok[j[keep]], dist[keep]


# ---- what a match is, and how much of a set has one ---------------------------------------------------------
# Chosen from measurement on UTKFace (docs/leakage.md has the numbers and how they were taken):
# - a duplicate is the same picture: descriptors within DUPLICATE (every planted copy of a train chip, JPEG
#   60-95, mirrored, 5% crops, +-15% brightness, lay within 0.31) and small grayscale thumbnails that
#   correlate by CORRELATION or more, as they are or one mirrored (99% of planted copies do; two photos of one
#   person at that distance mostly do not), so a look-alike is never called the same picture;
# - a look-alike is a match within LOOK_ALIKE: the distance below which under 3% of flagged adult pairs carry
#   different gender labels (known different people). Younger faces sit closer whoever they are, so the
#   younger face of a pair sets a stricter limit (YOUNG): teens 0.32; under 10 no descriptor distance separates
#   children (a third of the closest pairs differ in gender), so only duplicates are called there.
DUPLICATE = "duplicate"
LOOK_ALIKE = "look-alike"
THRESHOLD_DUPLICATE = 0.32
THRESHOLD_CORRELATION = 0.85
THRESHOLD_LOOK_ALIKE = 0.42
YOUNG = ((10.0, 0.0), (20.0, 0.32))  # (under this age, the look-alike limit), youngest first
THUMB = 32  # px of the grayscale thumbnails compared


@dataclass(frozen=True)
class Thresholds:
    duplicate: float = THRESHOLD_DUPLICATE
    correlation: float = THRESHOLD_CORRELATION
    look_alike: float = THRESHOLD_LOOK_ALIKE
    young: tuple[tuple[float, float], ...] = YOUNG


DEFAULT = Thresholds()


def look_alike_limits(age: np.ndarray, t: Thresholds = DEFAULT) -> np.ndarray:
    """Each pair's look-alike limit from its younger face's age (NaN, unknown: the adult limit)."""
    age = np.asarray(age, np.float64)
    limit = np.full(len(age), t.look_alike)
    for bound, value in reversed(t.young):
        limit[age < bound] = value
    return limit


def classify(distance: np.ndarray, age: np.ndarray | None = None, correlation: np.ndarray | None = None,
             t: Thresholds = DEFAULT) -> np.ndarray:
    """Each match's kind: DUPLICATE within t.duplicate where the thumbnails correlate by t.correlation (without
    ``correlation``, the distance alone decides), LOOK_ALIKE within the pair's look-alike limit (``age``: the
    younger face's), else "" (also for a NaN distance: no match)."""
    d = np.asarray(distance, np.float64)
    limit = look_alike_limits(np.full(len(d), np.nan) if age is None else age, t)
    kind = np.full(len(d), "", dtype=object)
    with np.errstate(invalid="ignore"):
        same = d < t.duplicate
        if correlation is not None:
            same &= np.asarray(correlation, np.float64) >= t.correlation
        kind[d < limit] = LOOK_ALIKE
        kind[same] = DUPLICATE
    return kind


def thumbnail(pixels: np.ndarray) -> np.ndarray:
    """A face's THUMB x THUMB grayscale thumbnail and its mirror image, flattened: 2 x THUMB**2."""
    g = np.asarray(Image.fromarray(np.asarray(pixels, np.uint8)).convert("L").resize((THUMB, THUMB),
                                                                                      Image.BILINEAR), np.float64)
    return np.stack([g, g[:, ::-1]]).reshape(2, -1)


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """The Pearson correlation of two faces' thumbnails, the larger of b as it is and b mirrored (a picture
    flipped is the same picture); NaN for a flat image."""
    ta, tb = thumbnail(a)[0], thumbnail(b)
    ta = ta - ta.mean()
    tb = tb - tb.mean(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = tb @ ta / (np.linalg.norm(tb, axis=1) * np.linalg.norm(ta))
    return float(np.nanmax(r)) if np.isfinite(r).any() else np.nan


def _by_number(value) -> tuple[float, str]:
    """Age buckets in age order ("3-9" before "10-19"), other values by name."""
    head = re.match(r"\d+", str(value))
    return (float(head.group()) if head else np.inf, str(value))


def shares_by_group(groups: dict[str, np.ndarray], flagged: np.ndarray, duplicate: np.ndarray) -> dict:
    """Per column (race, gender, age bucket) and value: faces, flagged ones (a duplicate or a look-alike),
    duplicates, and the flagged share with its Wilson 95% interval. Rows whose value is missing are left out."""
    flagged, duplicate = np.asarray(flagged, bool), np.asarray(duplicate, bool)
    out = {}
    for column, values in groups.items():
        values = np.asarray(values, dtype=object)
        rows = []
        for value in sorted({v for v in values if v is not None and v == v and v != ""}, key=_by_number):
            mask = values == value
            n, k = int(mask.sum()), int(flagged[mask].sum())
            lo, hi = wilson(k, n)
            rows.append({"group": str(value), "n": n, "n_flagged": k, "n_duplicate": int(duplicate[mask].sum()),
                         "share": k / n, "lo": lo, "hi": hi})
        out[column] = rows
    return out


def with_without(err: np.ndarray, correct: np.ndarray, drop: np.ndarray, n_boot: int = N_BOOT,
                 seed: int = SEED) -> dict:
    """Age MAE and gender accuracy on every face ("with") and without the ``drop`` ones, and the difference
    with - without on the same resampled faces: a paired bootstrap (stats.draws, one index matrix for both
    sides and both metrics; stats.interval its percentile interval)."""
    err, correct, drop = np.abs(np.asarray(err, np.float64)), np.asarray(correct, np.float64), np.asarray(drop, bool)
    n, kept = len(err), int((~drop).sum())
    out = {"n": n, "n_without": kept}
    idx = draws(n, n_boot, np.random.default_rng(seed)) if n and n_boot else None
    for name, x in (("age_mae", err), ("gender_accuracy", correct)):
        with_ = float(x.mean()) if n else np.nan
        without = float(x[~drop].mean()) if kept else np.nan
        lo = hi = np.nan
        if idx is not None and kept:
            keep = ~drop[idx]
            with np.errstate(invalid="ignore", divide="ignore"):
                diff = x[idx].mean(axis=1) - (x[idx] * keep).sum(axis=1) / keep.sum(axis=1)
            lo, hi = interval(diff, with_ - without)
        out[name] = {"with": with_, "without": without, "difference": with_ - without, "lo": lo, "hi": hi}
    return out
