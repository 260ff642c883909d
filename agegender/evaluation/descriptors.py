"""dlib face descriptors of a whole source (UTKFace chips, or a labelled photo set's aligned faces), cached.

The cache holds one float32 .npy (N x 128; float32 so a cached descriptor is the computed one, bit for bit,
at 0.5 KB a face: 11 MB for UTKFace) and a JSON index of the files in its row order, both written atomically
under the cache folder (data.utkface.default_cache_dir). The key is the dataset's fingerprint and the
network's sha256, so a changed dataset or a different network file never reads a stale cache.

How each source reaches the network's 150 px input:
- UTKFace: data.utkface.cached_images at 150 px (PIL bilinear from the 200 px chips, as the conversion was
  checked against dlib).
- a labelled photo set: evaluation.evalset's aligned crops (MTCNN landmarks -> the UTKFace chip template) at
  CROP_SIZE, the chips' own 200 px, then models.facerec.to_dlib_size, the same resize. A photo where no face
  was found has no descriptor: its row is NaN and ``found`` False.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.datasets import Dataset
from ..data.utkface import Scan, cached_images, default_cache_dir, remove_stale_temps
from ..faces.detect import CHIP_SIZE
from ..meta import atomic_write, atomic_write_text
from ..models import facerec
from ..models.dlibnet import DLIB_SIZE, EMBEDDING
from .evalset import alignment_key, dataset_crops

log = logging.getLogger(__name__)

CACHE_PREFIX = "desc"  # desc-FINGERPRINT-KIND-NETWORK.npy and .json
CROP_SIZE = CHIP_SIZE  # photos are aligned at the UTKFace chips' size, then resized to 150 px as chips are
CHUNK = 1024  # chips resized and described at a time: bounds the memory for the 150 px copies
WARN_DAMAGED = "ignoring a damaged descriptor cache at {stem} ({detail}); computing the descriptors again"
WARN_NOT_WRITTEN = "could not write the descriptor cache to {folder} ({detail}); continuing without it"

Progress = Callable[[int, int], None]


@dataclass
class Descriptors:
    """One row per image of a source, in the source's order."""

    files: list[str]  # UTKFace: the sample's member path; a photo set: the record's file
    vectors: np.ndarray  # N x 128 float32; NaN rows where no face was found
    found: np.ndarray  # N bool
    from_cache: bool = False


def _stem(folder: Path, fingerprint: str, kind: str) -> Path:
    return folder / f"{CACHE_PREFIX}-{fingerprint[:20]}-{kind}-{facerec.network_sha256()[:12]}"


def _read_cache(stem: Path, files: list[str] | None) -> Descriptors | None:
    """The cached descriptors, or None when there are none; a damaged cache, or one that lists other files
    than ``files`` (when given), is said once and ignored."""
    npy, index = stem.with_suffix(".npy"), stem.with_suffix(".json")
    if not (npy.is_file() and index.is_file()):
        return None
    try:
        info = json.loads(index.read_text())
        vectors = np.load(npy, allow_pickle=False)
        if vectors.shape != (len(info["files"]), EMBEDDING) or vectors.dtype != np.float32:
            raise ValueError(f"{vectors.shape} {vectors.dtype} for {len(info['files'])} files")
        if info["network"] != facerec.network_sha256():
            raise ValueError("made by another network")
        if files is not None and info["files"] != files:
            raise ValueError("it lists other files than the dataset")
        return Descriptors(info["files"], vectors, ~np.isnan(vectors[:, 0]), from_cache=True)
    except (OSError, ValueError, KeyError, TypeError) as e:
        log.warning(WARN_DAMAGED.format(stem=stem, detail=e))
        return None


def _write_cache(stem: Path, d: Descriptors) -> None:
    try:
        stem.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(stem.with_suffix(".npy")) as tmp, open(tmp, "wb") as f:
            np.save(f, d.vectors)
        atomic_write_text(stem.with_suffix(".json"),
                          json.dumps({"files": d.files, "network": facerec.network_sha256()}))
    except OSError as e:
        log.warning(WARN_NOT_WRITTEN.format(folder=stem.parent, detail=e))


def describe(pixels: np.ndarray, progress: Progress | None = None) -> np.ndarray:
    """Descriptors of N x S x S x 3 uint8 chips of any size, CHUNK at a time (brought to 150 px first)."""
    out = np.empty((len(pixels), EMBEDDING), np.float32)
    for i in range(0, len(pixels), CHUNK):
        part = facerec.to_dlib_size(np.asarray(pixels[i:i + CHUNK]))
        out[i:i + len(part)] = facerec.descriptors(part)
        if progress:
            progress(i + len(part), len(pixels))
    return out


def utkface_descriptors(scan_: Scan, cache_dir: str | os.PathLike | None = None,
                        progress: Progress | None = None) -> Descriptors:
    """Every readable chip of the scan (cached_images' rows and order), through the descriptor cache."""
    folder = Path(cache_dir) if cache_dir else default_cache_dir()
    remove_stale_temps(folder, CACHE_PREFIX)
    stem = _stem(folder, scan_.fingerprint, "utkface")
    cached = _read_cache(stem, None)
    if cached is not None and set(cached.files) <= {s.member for s in scan_.samples}:
        return cached
    images = cached_images(scan_, DLIB_SIZE, folder)
    d = Descriptors([s.member for s in images.samples], describe(images.pixels, progress),
                    np.ones(len(images.samples), bool))
    _write_cache(stem, d)
    return d


def photo_descriptors(ds: Dataset, cache_dir: str | os.PathLike | None = None,
                      progress: Progress | None = None) -> Descriptors:
    """Every kept record of a labelled set (evalset's aligned crops, their rows and order), through the cache."""
    folder = Path(cache_dir) if cache_dir else default_cache_dir()
    remove_stale_temps(folder, CACHE_PREFIX)
    stem = _stem(folder, ds.fingerprint, f"{ds.geometry}-{alignment_key()}")
    cached = _read_cache(stem, None)
    if cached is not None:
        return cached
    crops = dataset_crops(ds, CROP_SIZE, folder)
    vectors = np.full((len(crops.files), EMBEDDING), np.nan, np.float32)
    found = np.asarray(crops.found, bool)
    vectors[found] = describe(crops.pixels[found], progress)
    d = Descriptors(list(crops.files), vectors, found)
    _write_cache(stem, d)
    return d
