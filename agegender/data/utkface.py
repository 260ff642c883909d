"""UTKFace on disk: read a folder, .zip or .tar.gz; parse names; split; decode to a cache."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
import re
import shutil
import stat
import tarfile
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from ..faces.detect import (
    DECODE_ERRORS,
    ERR_TOO_LARGE,
    ERR_UNREADABLE,
    WHY_EMPTY,
    UnreadableImage,
    resize_image,
    too_large_detail,
    why_unreadable,
)
from ..labels import MalformedName, image_key, parse_name
from ..meta import atomic_write, atomic_write_text, read_meta
from .members import EXAMPLES, list_members, read_members

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
SPLITS = ("train", "val", "test")
SPLIT_RULE = "sha1(image_key) -> first 8 hex digits / 2**32: < 0.8 train, < 0.9 val, else test"
# the next 8 hex digits: bits split_of never reads, so every fold holds train, val and test images alike
FOLD_RULE = "sha1(image_key) -> hex digits 9 to 16 as an integer, modulo the number of folds"
WHY_NO_BYTES = "its bytes could not be read from the dataset"


class DatasetError(Exception):
    """The dataset path cannot be used; the message says why and what to do."""


@dataclass(frozen=True)
class Sample:
    name: str  # file name without folders
    member: str  # path inside the folder or archive
    size: int  # bytes, for the fingerprint
    age: int
    gender: int
    race: int
    assigned: str = ""  # a split set by another rule (train.identity, a checkpoint's manifest); "" = split_of

    @property
    def split(self) -> str:
        return self.assigned or split_of(self.name)


@dataclass
class Scan:
    path: Path
    kind: str  # folder | zip | tar
    samples: list[Sample]
    malformed: list[str] = field(default_factory=list)

    @property
    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for s in sorted(self.samples, key=lambda s: s.member):
            h.update(f"{s.member}\t{s.size}\n".encode())
        return h.hexdigest()


def split_of(name: str) -> str:
    """train/val/test from a hash of the name alone: stable across subsets and copies."""
    u = int(hashlib.sha1(image_key(name).encode()).hexdigest()[:8], 16) / 2**32
    return "train" if u < 0.8 else "val" if u < 0.9 else "test"


def fold_of(name: str, k: int) -> int:
    """Which of ``k`` folds an image falls in (FOLD_RULE): like split_of, a hash of the name alone, stable
    across subsets and copies, and independent of the split (a train-only hold-out needs every fold there)."""
    if k < 1:
        raise ValueError(f"the number of folds must be at least 1, not {k}")
    return int(hashlib.sha1(image_key(name).encode()).hexdigest()[8:16], 16) % k


def evenly_spaced(items, n: int):
    """At most n of ``items`` (a list, or a DataFrame's rows), every (len // n)-th from the first: a
    sample that is the same on every run and spread over the whole list (UTKFace names, and so
    scans, are sorted by age first)."""
    rows = getattr(items, "iloc", items)  # a DataFrame by position
    if n <= 0:
        return rows[:0]
    picked = rows[:: max(1, len(items) // n)]
    return getattr(picked, "iloc", picked)[:n]


ERR_NOT_IMAGES = "{path} is not a folder, .zip or .tar.gz of images: pass where the labelled images are"
ERR_ARCHIVE = "cannot read {path} as a {kind} ({detail}): download it again or unpack it into a folder"


def _is_image(member: str) -> bool:
    base = member.rsplit("/", 1)[-1]
    return (
        base.lower().endswith(IMAGE_SUFFIXES)
        and not base.startswith("._")
        and "__MACOSX" not in member
    )


def dataset_kind(path: Path) -> str:
    """folder, zip or tar, from the path alone: nothing is listed or read."""
    if path.is_dir():
        return "folder"
    name = path.name.lower()
    if name.endswith(".zip"):
        return "zip"
    if name.endswith((".tar.gz", ".tgz", ".tar")):
        return "tar"
    raise DatasetError(ERR_NOT_IMAGES.format(path=path))


def list_images(path: Path) -> tuple[str, list[tuple[str, int]]]:
    """The kind of ``path`` (folder, zip or tar) and its image members with their sizes: every
    dataset format reads its images through this. Only members that may be read are listed
    (agegender.data.members: regular files inside the dataset, size-capped); the others are reported once."""
    kind = dataset_kind(path)
    try:
        listing = list_members(path, kind, _is_image)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as e:
        raise DatasetError(ERR_ARCHIVE.format(path=path, kind=kind, detail=e)) from e
    return kind, listing.members


def scan(path: str | os.PathLike) -> Scan:
    """List and label every image at ``path``; malformed names are reported once and skipped."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DatasetError(
            f"dataset not found at {path}: pass the UTKFace folder, .zip or .tar.gz with --data"
        )
    kind, members = list_images(path)
    samples, malformed = [], []
    for member, size in members:
        name = member.rsplit("/", 1)[-1]
        try:
            lab = parse_name(name)
        except MalformedName:
            malformed.append(member)
            continue
        samples.append(Sample(name, member, size, lab.age, lab.gender, lab.race))
    samples.sort(key=lambda s: s.member)
    if malformed:
        log.warning(
            "skipped %d file(s) whose names carry no valid age_gender_race labels, e.g. %s",
            len(malformed), ", ".join(malformed[:EXAMPLES]),
        )
    if not samples:
        raise DatasetError(
            f"no UTKFace images found at {path}: expected names like 25_1_0_20170116174525125.jpg.chip.jpg"
        )
    return Scan(path, kind, samples, malformed)


def iter_bytes(scan_: Scan, samples: list[Sample]) -> Iterator[tuple[Sample, bytes | None]]:
    """Yield each sample with its file bytes (None when it cannot be read), in ``samples`` order
    for folders and zips, in archive order for tars."""
    by_member = {s.member: s for s in samples}
    for member, data in member_bytes(scan_.path, scan_.kind, [s.member for s in samples]):
        yield by_member[member], data


def member_bytes(path: Path, kind: str, members: list[str]) -> Iterator[tuple[str, bytes | None]]:
    """Yield each member of a folder, zip or tar (``kind`` as list_images gives it) with its bytes, None
    when it cannot be read or the member rule (agegender.data.members) refuses it; in ``members`` order
    for folders and zips, in archive order for tars."""
    yield from read_members(path, kind, members)


def decode(data: bytes | None, size: int, name: str = "the image") -> np.ndarray:
    """Bytes -> size x size x 3 uint8. Raises UnreadableImage naming ``name`` and the reason, in the
    words the predict command uses."""
    if data is None:
        raise UnreadableImage(ERR_UNREADABLE.format(name=name, detail=WHY_NO_BYTES))
    if not data:
        raise UnreadableImage(ERR_UNREADABLE.format(name=name, detail=WHY_EMPTY))
    try:
        with Image.open(io.BytesIO(data)) as im:
            return resize_image(im, size)
    except Image.DecompressionBombError as e:
        raise UnreadableImage(ERR_TOO_LARGE.format(name=name, detail=too_large_detail(e))) from e
    except DECODE_ERRORS as e:
        raise UnreadableImage(ERR_UNREADABLE.format(name=name, detail=why_unreadable(e))) from e


def read_chip(raw: bytes | None) -> Image.Image | None:
    """A chip as a PIL RGB image, read as the training cache reads chips (no EXIF turn); None when the
    bytes are missing or not a readable image."""
    if raw is None:
        return None
    try:
        with Image.open(io.BytesIO(raw)) as im:
            return im.convert("RGB")
    except DECODE_ERRORS:
        return None


def _report_unreadable(why: dict[str, str]) -> None:
    """One warning for the whole run: how many, and a few of them with their reasons."""
    if why:
        log.warning("skipped %d unreadable image(s), e.g. %s", len(why), "; ".join(list(why.values())[:EXAMPLES]))


@dataclass
class Images:
    """Decoded images (N x S x S x 3 uint8) with the samples they belong to, in the same order."""

    samples: list[Sample]
    pixels: np.ndarray
    unreadable: list[str] = field(default_factory=list)  # members left out
    why: dict[str, str] = field(default_factory=dict)  # member -> the message saying why

    def indices(self, split: str) -> np.ndarray:
        if split == "all":
            return np.arange(len(self.samples))
        if split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)} or all, not {split!r}")
        return np.array([i for i, s in enumerate(self.samples) if s.split == split], dtype=np.int64)

    def labels(self, idx: np.ndarray | None = None) -> dict[str, np.ndarray]:
        ss = self.samples if idx is None else [self.samples[i] for i in idx]
        return {
            "age": np.array([s.age for s in ss], dtype=np.float32),
            "gender": np.array([s.gender for s in ss], dtype=np.float32),
            "race": np.array([s.race for s in ss], dtype=np.int64),
        }


def load_images(scan_: Scan, samples: list[Sample], size: int, progress: bool = True) -> Images:
    """Decode ``samples`` without a cache; unreadable files are reported once and dropped."""
    kept, arrays, why = [], [], {}
    it = iter_bytes(scan_, samples)
    if progress:
        it = tqdm(it, total=len(samples), desc=f"decode {size}px", unit="img", leave=False)
    for s, data in it:
        try:
            arrays.append(decode(data, size, s.member))
        except UnreadableImage as e:  # one bad file costs that file, never the run
            why[s.member] = str(e)
            continue
        kept.append(s)
    why = dict(sorted(why.items()))  # tar order -> stable order
    _report_unreadable(why)
    order = sorted(range(len(kept)), key=lambda i: kept[i].member)
    pixels = np.stack([arrays[i] for i in order]) if arrays else np.zeros((0, size, size, 3), np.uint8)
    return Images([kept[i] for i in order], pixels, list(why), why)


CACHE_PREFIX = "utk"  # the decoded-image cache's files: utk-FINGERPRINT-SIZEpx.npy and .json


def default_cache_dir() -> Path:
    return Path(os.environ.get("AGEGENDER_CACHE", Path.home() / ".cache" / "agegender"))


def _free_bytes(folder: Path) -> int | None:
    """Free space where ``folder`` is or would be created (None when unknown)."""
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return shutil.disk_usage(probe).free
    except OSError:
        return None


# A cache file is written under a temporary name beside it and renamed into place (meta.atomic_write names it
# `.NAME.tmpXXXXXXXX`, NAME the cache file's own name, which starts with the cache's prefix); a kill between the
# two leaves it behind. Such a file lives only while one cache file is written (seconds to minutes, a few GB at
# most), and every write moves its mtime, so one untouched for a day belongs to no live writer, even with
# several evaluations sharing the cache on a slow disk: older than this, it is removed when a run starts.
STALE_TEMP_HOURS = 24
INFO_REMOVED_TEMPS = "removed {n} temporary file(s) that killed runs left in the cache {folder}: {examples}"


def temp_pattern(prefix: str) -> re.Pattern:
    """The names atomic_write gives the temporary files of a cache whose files are named ``prefix``-HASH-..."""
    return re.compile(rf"\.{re.escape(prefix)}-[0-9a-f]{{20}}-[^/]+\.tmp\w+")


def remove_stale_temps(folder: Path, prefix: str, now: float | None = None) -> list[Path]:
    """Remove the temporary files of the ``prefix`` cache in ``folder`` untouched for STALE_TEMP_HOURS, which
    only a killed writer leaves; returns them. Nothing else in the folder is touched."""
    now = time.time() if now is None else now
    pattern, removed = temp_pattern(prefix), []
    try:
        candidates = [p for p in folder.iterdir() if pattern.fullmatch(p.name)]
    except OSError:  # no cache folder yet, or one we cannot list: nothing to clean
        return []
    for p in candidates:
        try:
            st = p.lstat()
            if stat.S_ISREG(st.st_mode) and now - st.st_mtime > STALE_TEMP_HOURS * 3600:
                p.unlink()
                removed.append(p)
        except OSError:  # another run removed it first, or it is not ours to remove
            continue
    if removed:
        log.info(INFO_REMOVED_TEMPS.format(n=len(removed), folder=folder,
                                           examples=", ".join(p.name for p in removed[:EXAMPLES])))
    return removed


def _atomic_save_npy(path: Path, arr: np.ndarray) -> None:
    with atomic_write(path) as tmp, open(tmp, "wb") as f:
        np.save(f, arr)


def cached_images(scan_: Scan, size: int, cache_dir: str | os.PathLike | None = None,
                  in_memory: bool = False) -> Images:
    """Every sample of the scan decoded at ``size`` px, through an on-disk cache keyed by
    the dataset fingerprint and the size; a second run loads it in seconds. ``in_memory`` reads
    it into RAM (training gathers random batches) rather than memory-mapping it."""
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    remove_stale_temps(cache_dir, CACHE_PREFIX)
    stem = cache_dir / f"{CACHE_PREFIX}-{scan_.fingerprint[:20]}-{size}px"
    npy, index = stem.with_suffix(".npy"), stem.with_suffix(".json")
    by_member = {s.member: s for s in scan_.samples}
    if npy.exists() and index.exists():
        try:
            info = json.loads(index.read_text())
            pixels = np.load(npy, mmap_mode=None if in_memory else "r")
            if len(info["members"]) == len(pixels):
                # caches written before reasons were kept name the files alone
                why = info.get("why") or {m: m for m in info["unreadable"]}
                _report_unreadable(why)
                return Images([by_member[m] for m in info["members"]], pixels, info["unreadable"], why)
        except (OSError, ValueError, KeyError) as e:
            log.warning("ignoring a damaged cache at %s (%s); rebuilding it", stem, e)
    need = len(scan_.samples) * size * size * 3
    free = _free_bytes(cache_dir)
    if free is not None and free < need * 1.05:
        log.warning("not enough disk for the image cache in %s (needs %.2f GB, %.2f GB free): decoding into "
                    "memory only; free space or pass --cache-dir", cache_dir, need / 1e9, free / 1e9)
        return load_images(scan_, scan_.samples, size)
    images = load_images(scan_, scan_.samples, size)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        _atomic_save_npy(npy, images.pixels)
        atomic_write_text(index, json.dumps({"members": [s.member for s in images.samples],
                                             "unreadable": images.unreadable, "why": images.why}))
    except OSError as e:
        log.warning("could not write the image cache to %s (%s); continuing without it", cache_dir, e)
    return images


MANIFEST = "manifest.csv"  # beside a checkpoint: every image training read, its split and labels


def write_manifest(images: Images, path: Path) -> None:
    """One row per image: member, split, labels. Written next to the checkpoint."""
    lines = ["file,split,age,gender,race"]
    lines += [f"{s.member},{s.split},{s.age},{s.gender},{s.race}" for s in images.samples]
    atomic_write_text(path, "\n".join(lines) + "\n")


def with_splits(scan_: Scan, splits: dict[str, str] | None) -> Scan:
    """The scan with each sample's split taken from ``splits`` (member -> split) where it names one; None
    leaves the file-hash split."""
    if not splits:
        return scan_
    samples = [dataclasses.replace(s, assigned=splits.get(s.member, "")) for s in scan_.samples]
    return Scan(scan_.path, scan_.kind, samples, scan_.malformed)


def manifest_splits(folder: str | Path) -> dict[str, str] | None:
    """Member -> split as a checkpoint trained it, when its rule is not the file hash (train.identity records
    its split in manifest.csv); None for a file-hash checkpoint or one without a manifest."""
    path = Path(folder) / MANIFEST
    if read_meta(folder).get("split_rule", SPLIT_RULE) == SPLIT_RULE or not path.is_file():
        return None
    m = pd.read_csv(path, dtype=str, keep_default_na=False, usecols=["file", "split"])
    return dict(zip(m["file"], m["split"], strict=True))


def trained_on(folder: str | Path) -> set[str] | None:
    """The image keys (agegender.labels.image_key) of the images a checkpoint trained on: its manifest.csv's
    train split (training writes it beside the checkpoint), less the fold it held out; None without a manifest."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    m = pd.read_csv(path, dtype=str, keep_default_na=False, usecols=["file", "split"])
    train = m.loc[m["split"] == "train", "file"]
    held = read_meta(folder).get("holdout")
    if held:
        train = [f for f in train if fold_of(f, int(held["folds"])) != int(held["fold"])]
    return {image_key(f) for f in train}
