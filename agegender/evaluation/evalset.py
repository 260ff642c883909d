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

import ctypes
import dataclasses
import hashlib
import logging
import math
import mmap
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack
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
from ..meta import atomic_write
from ..models.distributed import Dist

log = logging.getLogger(__name__)

# The labelled face fills at least this share of a photo's short side. MTCNN then skips the pyramid
# levels for smaller faces, the bulk of its work: on FairFace's 448 px photos (faces 124-200 px) it finds
# the same faces 4x faster than at its 20 px default. A labelled photo is a portrait, not a crowd.
FACE_FRACTION = 1 / 8
BATCH = 32  # photos per MTCNN batch; photos are held in memory this many at a time
# Bump when detection or the pick rule changes; the template's own hash is added to it.
PICK_RULE = "v1: confident faces (MTCNN p >= 0.9), the box centre nearest the photo centre"
WARN_UNREADABLE = "skipped {n} unreadable image(s): {examples}"
CACHE_PREFIX = "evalset"  # the crop cache's files: evalset-FINGERPRINT-GEOMETRY-ALIGNMENT-SIZEpx-FORMAT.npy, .npz
# v2: the crops alone in a .npy, read memory-mapped, the per-file arrays and names in a .npz. The v1 caches
# (one .npz holding the crops, names in a .json) are not read: they would have to be loaded whole.
CACHE_FORMAT = "v2"
CHUNK = 256  # records per part: what one process holds of the crops it makes, and sends rank 0 per round
ERR_NO_SPACE = "not enough free space for {gb:.2f} GB of crops"
WARN_NO_CACHE = "could not write the crop cache to {folder} ({error}); continuing without it"
WARN_NOT_SHARED = ("rank {rank} cannot read the crop cache rank 0 wrote in {folder} (on another machine? give "
                   "every rank the same --cache-dir on a shared filesystem); rank 0 scores the faces alone")

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
    """Every record of ``ds`` as an aligned ``size`` px face, through the on-disk cache (the crops read
    memory-mapped). ``progress(done, total)`` is called as images are processed (the dashboard's progress
    bar); the command line gets tqdm."""
    crops = _crops(ds, size, cache_dir, progress, Dist())
    assert crops is not None  # one process never waits on a cache another wrote
    return crops


def rank_crops(ds: Dataset, size: int, cache_dir: str | os.PathLike | None, dd: Dist) -> Crops | None:
    """dataset_crops under torchrun: each rank detects an interleaved share of the records (record order
    often runs folder by folder, photo size by photo size, so every rank gets the same mix and they finish
    together), rank 0 gathers them CHUNK at a time into the cache, and every rank then reads that cache.
    None on a rank that cannot read it (another machine without the same cache folder): rank 0 holds them."""
    return _crops(ds, size, cache_dir, None, dd)


def _crops(ds: Dataset, size: int, cache_dir, progress, dd: Dist) -> Crops | None:
    folder = Path(cache_dir) if cache_dir else default_cache_dir()
    if dd.main:
        remove_stale_temps(folder, CACHE_PREFIX)  # written through atomic_write: `.evalset-....npy.tmpXXXXXXXX`
    stem = folder / f"{CACHE_PREFIX}-{ds.fingerprint[:20]}-{ds.geometry}-{alignment_key()}-{size}px-{CACHE_FORMAT}"
    cached = _read_cache(stem, ds, size)
    if not dd.any(cached is None):  # every rank must take the same branch: the build below gathers
        if dd.main:
            _warn(cached.unreadable)
        if progress:
            progress(len(ds.records), len(ds.records))
        return cached
    crops = _build(ds, size, stem, dd, progress)
    dd.barrier()  # rank 0 has written the cache (or could not)
    if dd.main:
        _warn(crops.unreadable)
        return crops
    crops = _read_cache(stem, ds, size)
    if crops is None:
        log.warning(WARN_NOT_SHARED.format(rank=dd.rank, folder=folder))
    return crops


@dataclass
class _Part:
    """CHUNK records' crops as one process made them, in the order it read them (a tar's order)."""

    rows: list[int]  # the records' indices in the dataset
    pixels: np.ndarray
    found: np.ndarray
    confidence: np.ndarray
    box: np.ndarray
    landmarks: np.ndarray
    unreadable: dict[str, str] = field(default_factory=dict)

    @classmethod
    def empty(cls, size: int) -> _Part:
        return cls([], np.zeros((CHUNK, size, size, 3), np.uint8), np.zeros(CHUNK, bool), np.full(CHUNK, np.nan),
                   np.full((CHUNK, 4), np.nan), np.full((CHUNK, 5, 2), np.nan))

    def trimmed(self) -> _Part:
        k = len(self.rows)
        return _Part(self.rows, self.pixels[:k], self.found[:k], self.confidence[:k], self.box[:k],
                     self.landmarks[:k], self.unreadable)


def _parts(ds: Dataset, size: int, rows: list[int], tick: Callable[[], None]) -> Iterator[_Part]:
    """The crops of the records ``rows``, read in one pass over the dataset (a tar is read once), handed on
    CHUNK records at a time, so that memory holds one part and one detection batch, whatever the set's size."""
    kind = dataset_kind(ds.root)  # listed when the dataset was read; listing again would repeat its warnings
    position = {ds.records[i].file: i for i in rows}
    detector = None
    part, pending = _Part.empty(size), []  # pending: (slot, photo) waiting for a batched detection

    def flush() -> None:
        nonlocal detector
        if not pending:
            return
        photos = [p for _, p in pending]
        if detector is None or detector.min_face_size != min_face_size(photos[0]):
            detector = FaceDetector(min_face_size=min_face_size(photos[0]))
        for (j, photo), faces in zip(pending, detector.detect_many(photos, batch_size=BATCH), strict=True):
            face = labelled_face(faces, photo.size)
            if face is None:
                continue
            try:
                part.pixels[j] = face_pixels(photo, face, size)
            except ValueError as e:  # degenerate landmarks: the face cannot be aligned, so it is not found
                log.debug("cannot align %s: %s", ds.records[part.rows[j]].file, e)
                continue
            part.found[j], part.confidence[j], part.box[j], part.landmarks[j] = (
                True, face.confidence, face.box, face.landmarks)
        pending.clear()

    for file, data in member_bytes(ds.root, kind, list(position)):
        j, shown = len(part.rows), printable(file)  # a file name goes into one log line
        part.rows.append(position[file])
        try:
            if ds.geometry == "chips":
                part.pixels[j], part.found[j] = decode(data, size, shown), True
            else:
                if data is None:
                    raise UnreadableImage(ERR_UNREADABLE.format(name=shown, detail=WHY_NO_BYTES))
                photo = load_photo(data, shown)
                if pending and (photo.size != pending[0][1].size or len(pending) >= BATCH):
                    flush()
                pending.append((j, photo))
        except UnreadableImage as e:  # one bad file costs that file, never the run
            part.unreadable[file] = str(e)
        tick()
        if len(part.rows) == CHUNK:
            flush()
            yield part
            part = _Part.empty(size)
            trim_heap()
    flush()
    if part.rows:
        yield part.trimmed()


def _gathered(ds: Dataset, size: int, dd: Dist, tick: Callable[[], None]) -> Iterator[_Part]:
    """Every rank's parts, on rank 0, round by round (nothing elsewhere): each rank makes at most ``rounds``
    parts of its share, and one that has run out sends None."""
    share = list(range(dd.rank, len(ds.records), dd.world))
    mine = _parts(ds, size, share, tick)
    rounds = math.ceil(len(range(0, len(ds.records), dd.world)) / CHUNK)  # rank 0's share is the largest
    for _ in range(rounds):
        got = dd.gather(next(mine, None))
        if dd.main:
            yield from (p for p in got if p is not None)


def _build(ds: Dataset, size: int, stem: Path, dd: Dist, progress) -> Crops | None:
    """The crops made (and, on rank 0, written to the cache as they come, then read back memory-mapped)."""
    n = len(ds.records)
    files = [r.file for r in ds.records]
    found, conf, box, marks = np.zeros(n, bool), np.full(n, np.nan), np.full((n, 4), np.nan), np.full((n, 5, 2), np.nan)
    unreadable: dict[str, str] = {}
    bar = tqdm(total=len(range(dd.rank, n, dd.world)), desc="faces" if ds.geometry == "photos" else f"decode {size}px",
               unit="img", leave=False, disable=not dd.main)
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        bar.update(1)
        if progress and done % 16 == 0 and done < n:
            progress(done, n)

    with ExitStack() as stack:
        pixels = _pixels_out(stack, stem, (n, size, size, 3)) if dd.main else None
        for p in _gathered(ds, size, dd, tick):
            pixels[p.rows], found[p.rows], conf[p.rows], box[p.rows], marks[p.rows] = (
                p.pixels, p.found, p.confidence, p.box, p.landmarks)
            unreadable.update(p.unreadable)
        if progress:  # after the last batch's detection, not before it
            progress(n, n)
        bar.close()
        if not dd.main:
            return None
        keep = np.array([f not in unreadable for f in files], bool)
        kept = ([f for f, k in zip(files, keep, strict=True) if k], found[keep], conf[keep], box[keep], marks[keep],
                dict(sorted(unreadable.items())))
        if isinstance(pixels, np.ndarray):  # the cache could not be written: the crops stay in memory, as before
            return Crops(kept[0], pixels[keep], *kept[1:])
        pixels.close()
        if not keep.all():
            _compact(pixels.path, keep)
    crops = Crops(kept[0], np.load(stem.with_suffix(".npy"), mmap_mode="r"), *kept[1:])
    written = _write_index(stem, crops) and _read_cache(stem, ds, size)
    return dataclasses.replace(written, from_cache=False) if written else crops


class _NpyRows:
    """A uint8 .npy of a known shape, its rows written at any position through the file rather than a mapping:
    a mapping's written pages count as the process's memory until the kernel writes them back, so a large set's
    build would look, and with little memory be, as large as the set."""

    def __init__(self, path: Path, shape: tuple[int, ...]):
        np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)  # the header; the rest sparse zeros
        self.path, self.offset, self.row = path, np.load(path, mmap_mode="r").offset, int(np.prod(shape[1:]))
        self.fd = os.open(path, os.O_WRONLY)

    def __setitem__(self, rows: list[int] | slice, values: np.ndarray) -> None:
        if isinstance(rows, slice):  # consecutive rows from rows.start: one write
            os.pwrite(self.fd, np.ascontiguousarray(values).tobytes(), self.offset + rows.start * self.row)
            return
        for r, v in zip(rows, values, strict=True):
            os.pwrite(self.fd, np.ascontiguousarray(v).tobytes(), self.offset + r * self.row)

    def close(self) -> None:
        os.close(self.fd)


def _pixels_out(stack: ExitStack, stem: Path, shape: tuple[int, ...]) -> _NpyRows | np.ndarray:
    """Where the crops are written as they come: a .npy on a temporary file that becomes the cache's when the
    stack closes without an error; memory (as before the cache) where it cannot be written or would not fit."""
    try:
        stem.parent.mkdir(parents=True, exist_ok=True)
        if shutil.disk_usage(stem.parent).free < math.prod(shape) * 1.05:
            raise OSError(ERR_NO_SPACE.format(gb=math.prod(shape) / 1e9))
        tmp = stack.enter_context(atomic_write(stem.with_suffix(".npy")))
        return _NpyRows(tmp, shape)
    except OSError as e:
        log.warning(WARN_NO_CACHE.format(folder=stem.parent, error=e))
        return np.zeros(shape, np.uint8)


def _compact(path: Path, keep: np.ndarray) -> None:
    """The .npy at ``path`` rewritten with its kept rows only, CHUNK rows at a time. The new file is named as
    atomic_write names its own, so a kill leaves one that remove_stale_temps finds."""
    pixels = np.load(path, mmap_mode="r")
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f"{path.name}.tmp")
    os.close(fd)
    rows = np.flatnonzero(keep)
    try:
        out = _NpyRows(Path(name), (len(rows), *pixels.shape[1:]))
        try:
            for start in range(0, len(rows), CHUNK):
                out[slice(start, None)] = pixels[rows[start:start + CHUNK]]
        finally:
            out.close()
        os.replace(name, path)
    finally:
        Path(name).unlink(missing_ok=True)


def min_face_size(photo) -> int:
    """The smallest face detection looks for in a labelled photo (FACE_FRACTION of its short side)."""
    return max(MIN_FACE_SIZE, int(min(photo.size) * FACE_FRACTION))


def _warn(unreadable: dict[str, str]) -> None:
    if unreadable:
        log.warning(WARN_UNREADABLE.format(n=len(unreadable), examples="; ".join(list(unreadable.values())[:EXAMPLES])))


def release(pixels: np.ndarray) -> None:
    """Drop the pages of a memory-mapped cache that this process has read from its resident memory (the kernel
    keeps them in its page cache, and a read brings them back). Read a batch at a time, a mapping otherwise ends
    counted in the process's memory as whole as the file. An array in memory is left as it is. Then trim_heap."""
    mm = getattr(pixels, "_mmap", None)  # np.memmap's own mapping, shared by its slices
    if mm is not None and hasattr(mmap, "MADV_DONTNEED"):
        mm.madvise(mmap.MADV_DONTNEED)
    trim_heap()


def _libc():
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (macOS, musl): nothing to trim this way
        return None
    return libc if hasattr(libc, "malloc_trim") else None


_LIBC = _libc()


def trim_heap() -> None:
    """Hand the C heap's free memory back to the system (glibc's malloc_trim). Detection and scoring allocate and
    free tensors batch after batch, and glibc keeps what is freed in its arenas: a photo evaluation's memory grew
    with the number of photos (by 0.6 GB over 4,000 photos here) although nothing it kept did."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _read_cache(stem: Path, ds: Dataset, size: int) -> Crops | None:
    npy, index = stem.with_suffix(".npy"), stem.with_suffix(".npz")
    if not (npy.is_file() and index.is_file()):  # a FIFO put there would block the read: rebuilt, renamed over
        return None
    try:
        with np.load(index) as z:  # no pickles: names are unicode arrays
            files = [str(f) for f in z["files"]]
            unreadable = dict(zip(map(str, z["unreadable_files"]), map(str, z["unreadable_why"]), strict=True))
            found, conf, box, marks = z["found"], z["confidence"], z["box"], z["landmarks"]
        pixels = np.load(npy, mmap_mode="r")
        n = len(files)
        if pixels.dtype != np.uint8 or pixels.shape != (n, size, size, 3) or found.shape != (n,) or \
                conf.shape != (n,) or box.shape != (n, 4) or marks.shape != (n, 5, 2):
            raise ValueError("its arrays do not have the shapes of its file list")
        if set(files) | set(unreadable) != {r.file for r in ds.records}:
            raise ValueError("it lists other files than the dataset")
        return Crops(files, pixels, found.astype(bool), conf, box, marks, unreadable, from_cache=True)
    except (OSError, ValueError, KeyError) as e:
        log.warning("ignoring a damaged crop cache at %s (%s); rebuilding it", stem, e)
        return None


def _write_index(stem: Path, crops: Crops) -> bool:
    """The per-file arrays and names beside the crops' .npy; False where they could not be written."""
    try:
        with atomic_write(stem.with_suffix(".npz")) as tmp, open(tmp, "wb") as f:
            np.savez(f, files=np.array(crops.files, str), found=crops.found, confidence=crops.confidence,
                     box=crops.box, landmarks=crops.landmarks, unreadable_files=np.array(list(crops.unreadable), str),
                     unreadable_why=np.array(list(crops.unreadable.values()), str))
        return True
    except OSError as e:
        log.warning(WARN_NO_CACHE.format(folder=stem.parent, error=e))
        return False
