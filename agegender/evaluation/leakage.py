"""For each query face descriptor, its nearest reference descriptor: the search behind the look-alike check.

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

from dataclasses import dataclass

import numpy as np

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
