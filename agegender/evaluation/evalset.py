"""A labelled dataset's faces as the models take them: one aligned uint8 square per record, cached.

Chips (UTKFace) are decoded and resized. Photos (FairFace's padded crops, a user's photos) go through
the predict page's own path: MTCNN, then the 5-point alignment of ``faces.face_pixels``. A photo holds
one labelled face, chosen by one rule (``labelled_face``); a photo where no face is found is a result,
``found`` False, not an error: the report counts it per group. An image that cannot be decoded is a bad
row: counted, reported once with examples, and dropped, as the dataset reader does with bad labels.

The crops are cached on disk, keyed by the dataset's fingerprint, the crop size and ALIGNMENT (which
changes with the template, the detector settings or the pick rule), so a second evaluation of the same
dataset, by any checkpoint of that size, skips decoding and detection.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..data.datasets import Dataset
from ..data.utkface import (
    EXAMPLES,
    WHY_NO_BYTES,
    dataset_kind,
    decode,
    default_cache_dir,
    member_bytes,
    remove_stale_temps,
)
from ..faces.detect import (
    ERR_UNREADABLE,
    MIN_CONFIDENCE,
    MIN_FACE_SIZE,
    TEMPLATE_FILE,
    Face,
    FaceDetector,
    UnreadableImage,
    face_pixels,
    load_photo,
)
from ..labels import printable
from ..meta import atomic_write, atomic_write_text

log = logging.getLogger(__name__)

# The labelled face fills at least this share of a photo's short side. MTCNN then skips the pyramid
# levels for smaller faces, the bulk of its work: on FairFace's 448 px photos (faces 124-200 px) it finds
# the same faces 4x faster than at its 20 px default. A labelled photo is a portrait, not a crowd.
FACE_FRACTION = 1 / 8
BATCH = 32  # photos per MTCNN batch; photos are held in memory this many at a time
# Bump when detection or the pick rule changes; the template's own hash is added to it.
PICK_RULE = "v1: confident faces (MTCNN p >= 0.9), the box centre nearest the photo centre"
WARN_UNREADABLE = "skipped {n} unreadable image(s): {examples}"
CACHE_PREFIX = "evalset"  # the crop cache's files: evalset-FINGERPRINT-GEOMETRY-ALIGNMENT-SIZEpx.npz and .json

# An evaluation's stages, in order, as its progress callback names them: the faces of photos are found
# (detection, alignment) and chips read; then the model scores the found ones in batches.
FINDING, READING, SCORING = "Finding faces", "Reading faces", "Scoring faces"
Progress = Callable[[str, int, int], None]  # progress(stage, done, total)


def first_stage(geometry: str) -> str:
    """What the first stage does for a dataset of this geometry: detection for photos, decoding for chips."""
    return FINDING if geometry == "photos" else READING


def overall_fraction(stage: str, done: int, total: int) -> float:
    """How far an evaluation is, 0 to 1, from its progress callback's arguments: each stage is half (a stage
    with nothing to do, such as scoring where no face was found, is done)."""
    return (float(stage == SCORING) + (done / total if total else 1.0)) / 2


def alignment_key() -> str:
    """What the cached crops depend on besides the dataset and the size."""
    h = hashlib.sha256(f"{PICK_RULE}\n{FACE_FRACTION}\n{MIN_FACE_SIZE}\n{MIN_CONFIDENCE}\n".encode())
    h.update(TEMPLATE_FILE.read_bytes())
    return h.hexdigest()[:12]


@dataclass
class Crops:
    """One row per kept record of a dataset, in record order."""

    files: list[str]  # the record's file (Record.file)
    pixels: np.ndarray  # N x S x S x 3 uint8: the aligned face, zeros where none was found
    found: np.ndarray  # N bool
    confidence: np.ndarray  # N float: MTCNN's probability of the picked face, NaN for chips and misses
    box: np.ndarray  # N x 4 float: the picked face in photo pixels (x1, y1, x2, y2), NaN for chips and misses
    landmarks: np.ndarray  # N x 5 x 2 float, NaN for chips and misses
    unreadable: dict[str, str] = field(default_factory=dict)  # file -> why; not among ``files``
    from_cache: bool = False


def labelled_face(faces: list[Face], size: tuple[int, int]) -> Face | None:
    """The face a photo's label is about: among the confident faces (MIN_CONFIDENCE), the one whose box
    centre is nearest the photo's centre. FairFace centres the labelled face in its padded crops, and a
    user's portrait is framed on its subject; a bystander at the edge is not the one labelled."""
    confident = [f for f in faces if f.confidence >= MIN_CONFIDENCE]
    if not confident:
        return None
    cx, cy = size[0] / 2, size[1] / 2

    def distance(f: Face) -> float:
        x1, y1, x2, y2 = f.box
        return ((x1 + x2) / 2 - cx) ** 2 + ((y1 + y2) / 2 - cy) ** 2

    return min(confident, key=distance)


def dataset_crops(ds: Dataset, size: int, cache_dir: str | os.PathLike | None = None,
                  progress: Callable[[int, int], None] | None = None) -> Crops:
    """Every record of ``ds`` as an aligned ``size`` px face, through the on-disk cache. ``progress(done,
    total)`` is called as images are processed (the dashboard's progress bar); the command line gets tqdm."""
    folder = Path(cache_dir) if cache_dir else default_cache_dir()
    remove_stale_temps(folder, CACHE_PREFIX)  # written through atomic_write: `.evalset-....npz.tmpXXXXXXXX`
    stem = folder / f"{CACHE_PREFIX}-{ds.fingerprint[:20]}-{ds.geometry}-{alignment_key()}-{size}px"
    cached = _read_cache(stem, ds)
    if cached is not None:
        _warn(cached.unreadable)
        if progress:
            progress(len(ds.records), len(ds.records))
        return cached
    crops = _make_crops(ds, size, progress)
    _warn(crops.unreadable)
    _write_cache(stem, crops)
    return crops


def _make_crops(ds: Dataset, size: int, progress) -> Crops:
    n = len(ds.records)
    files = [r.file for r in ds.records]
    pixels = np.zeros((n, size, size, 3), np.uint8)
    found = np.zeros(n, bool)
    conf, box, marks = np.full(n, np.nan), np.full((n, 4), np.nan), np.full((n, 5, 2), np.nan)
    unreadable: dict[str, str] = {}
    kind = dataset_kind(ds.root)  # listed when the dataset was read; listing again would repeat its warnings
    position = {f: i for i, f in enumerate(files)}
    detector = None
    pending: list[tuple[int, object]] = []  # photos waiting for a batched detection

    def flush() -> None:
        nonlocal detector
        if not pending:
            return
        photos = [p for _, p in pending]
        if detector is None or detector.min_face_size != min_face_size(photos[0]):
            detector = FaceDetector(min_face_size=min_face_size(photos[0]))
        for (i, photo), faces in zip(pending, detector.detect_many(photos, batch_size=BATCH), strict=True):
            face = labelled_face(faces, photo.size)
            if face is None:
                continue
            try:
                pixels[i] = face_pixels(photo, face, size)
            except ValueError as e:  # degenerate landmarks: the face cannot be aligned, so it is not found
                log.debug("cannot align %s: %s", files[i], e)
                continue
            found[i], conf[i], box[i], marks[i] = True, face.confidence, face.box, face.landmarks
        pending.clear()

    bar = tqdm(total=n, desc="faces" if ds.geometry == "photos" else f"decode {size}px", unit="img", leave=False)
    done = 0
    for file, data in member_bytes(ds.root, kind, files):
        i, shown = position[file], printable(file)  # a file name goes into one log line
        try:
            if ds.geometry == "chips":
                pixels[i], found[i] = decode(data, size, shown), True
            else:
                if data is None:
                    raise UnreadableImage(ERR_UNREADABLE.format(name=shown, detail=WHY_NO_BYTES))
                photo = load_photo(data, shown)
                if pending and (photo.size != pending[0][1].size or len(pending) >= BATCH):
                    flush()
                pending.append((i, photo))
        except UnreadableImage as e:  # one bad file costs that file, never the run
            unreadable[file] = str(e)
        done += 1
        bar.update(1)
        if progress and done % 16 == 0 and done < n:
            progress(done, n)
    flush()
    if progress:  # after the last batch's detection, not before it
        progress(n, n)
    bar.close()
    keep = np.array([f not in unreadable for f in files], bool)
    return Crops([f for f, k in zip(files, keep, strict=True) if k], pixels[keep], found[keep], conf[keep],
                 box[keep], marks[keep], dict(sorted(unreadable.items())))


def min_face_size(photo) -> int:
    """The smallest face detection looks for in a labelled photo (FACE_FRACTION of its short side)."""
    return max(MIN_FACE_SIZE, int(min(photo.size) * FACE_FRACTION))


def _warn(unreadable: dict[str, str]) -> None:
    if unreadable:
        log.warning(WARN_UNREADABLE.format(n=len(unreadable), examples="; ".join(list(unreadable.values())[:EXAMPLES])))


def _read_cache(stem: Path, ds: Dataset) -> Crops | None:
    npz, index = stem.with_suffix(".npz"), stem.with_suffix(".json")
    if not (npz.exists() and index.exists()):
        return None
    try:
        info = json.loads(index.read_text())
        with np.load(npz) as z:
            crops = Crops(info["files"], z["pixels"], z["found"], z["confidence"], z["box"], z["landmarks"],
                          info["unreadable"], from_cache=True)
        if len(crops.files) != len(crops.pixels) or set(crops.files) | set(crops.unreadable) != \
                {r.file for r in ds.records}:
            raise ValueError("it lists other files than the dataset")
        return crops
    except (OSError, ValueError, KeyError) as e:
        log.warning("ignoring a damaged crop cache at %s (%s); rebuilding it", stem, e)
        return None


def _write_cache(stem: Path, crops: Crops) -> None:
    try:
        stem.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(stem.with_suffix(".npz")) as tmp, open(tmp, "wb") as f:
            np.savez(f, pixels=crops.pixels, found=crops.found, confidence=crops.confidence, box=crops.box,
                     landmarks=crops.landmarks)
        atomic_write_text(stem.with_suffix(".json"), json.dumps({"files": crops.files, "unreadable": crops.unreadable}))
    except OSError as e:
        log.warning("could not write the crop cache to %s (%s); continuing without it", stem.parent, e)
