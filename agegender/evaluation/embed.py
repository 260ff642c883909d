"""A checkpoint's pooled trunk features for every face of a source, and a 2-D map of them.

    python -m agegender.embed --checkpoint DIR --data PATH [--labels FILE --format fairface|csv --columns MAP]
        [--split val|test|all] [--predictions PREDICTIONS.csv] [--no-tta] --out EMB.parquet

The features are what the two heads read: the trunk's globally pooled output (``model.trunk(x)``; the dropout in
between is the identity in eval mode), taken on the faces evaluation scores, in its order, through the same
preprocessing (the checkpoint's own, read back from it). With test-time augmentation (the default, as in
evaluate) a face's features are the mean over the face and its mirror: the heads are linear in them, so the
gender head of the mean features gives evaluate's averaged logit exactly (a DLDL age head's softmax does not
commute with the mean, so its age is close, not equal). No hook is put on the model, so a model shared with
other threads (the dashboard's cached one) is only read.

Features are cached per checkpoint weights (meta.json's sha256) x source stamp x TTA, like the crop and descriptor
caches: a float32 .npy (N x F) and a JSON index of the files in row order with the pixel measures below, both
written atomically under the cache folder (data.utkface.default_cache_dir). A damaged cache is said once and
rebuilt.

Pixel measures, taken from the faces the model saw, for every face: ``brightness`` (mean grey level, 0-255),
``grayscale`` (the face has no colour: GRAY_SHARE of its pixels' channels within GRAY_TOLERANCE), and
``sharpness`` (faces.quality.sharpness at its SHARPNESS_SIZE, as evaluation measures photos) where the predictions
carry none (UTKFace chips).

The 2-D map is PCA (the first two eigenvectors of the centred features' covariance, numpy), not UMAP: umap-learn
is not a dependency (it brings numba and llvmlite, a first-call compile of tens of seconds and about a minute for
21,000 faces on 2 cores), the map is only for looking (the unlabelled slices are clustered in the full feature
space, agegender.fairness.embedslices), and PCA is exact, deterministic and instant, and its axes are directions
of the feature space that a reader can take at face value. Its price: a linear view, so clusters that UMAP would
pull apart may overlap on the map.

Output: one row per face with a face found: ``file``, ``x``, ``y``, the predictions table's columns for that face
(age, pred_age, p_female, group columns, quality columns when present), the pixel measures, and ``features`` (a
list column of float32).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..data.datasets import add_data_arguments, read_dataset, resolve
from ..data.utkface import DatasetError, cached_images, default_cache_dir, remove_stale_temps, scan
from ..faces import quality
from ..meta import atomic_write, atomic_write_text
from ..models.checkpoint import CheckpointError, load_checkpoint
from ..models.preprocess import preprocess, to_batch
from ..models.runtime import set_threads
from ..predictions import load_predictions
from .evalset import alignment_key, dataset_crops, release
from .evaluate import dataset_frame, predictions_frame
from .sources import Source

log = logging.getLogger(__name__)

CACHE_PREFIX = "emb"  # emb-KEY-Fd.npy and .json
BATCH = 256  # faces per trunk pass, as evaluation scores them
GRAY_TOLERANCE = 8  # grey levels: a colour photo's face has pixels whose channels differ more than this
GRAY_SHARE = 0.98  # ... a face is grayscale when at least this share of its pixels do not
FEATURES = "features"
MEASURES = ("brightness", "grayscale", "sharpness")
WARN_DAMAGED = "ignoring a damaged embedding cache at {stem} ({detail}); computing the features again"
WARN_NOT_WRITTEN = "could not write the embedding cache to {folder} ({detail}); continuing without it"
ERR_NO_FACES = "no faces to embed: the predictions have no face found"
ERR_NO_SPLIT = "no images of split {split!r} at {data}; try --split all"
ERR_PREDICTIONS_LACK = ("the predictions in {path} lack {n} of the faces (e.g. {example}): give the predictions "
                        "evaluate wrote for the same data arguments, or leave --predictions out")


@dataclass
class Features:
    """One row per face, in the source's order."""

    files: list[str]
    vectors: np.ndarray  # N x F float32: the heads' input
    measures: dict[str, np.ndarray]  # pixel measures (MEASURES), N each
    from_cache: bool = False


@torch.inference_mode()
def features(ckpt, pixels: np.ndarray, rows: np.ndarray | None = None, tta: bool = True,
             batch_size: int = BATCH) -> np.ndarray:
    """N x F float32: the pooled trunk features of ``pixels[rows]`` (faces at the checkpoint's cache size, uint8),
    BATCH at a time, so only a batch of a memory-mapped cache is read; with ``tta`` the mean over each face and
    its mirror."""
    rows = np.arange(len(pixels)) if rows is None else np.asarray(rows, np.int64)
    model = ckpt.model
    device = next(model.parameters()).device
    out = np.empty((len(rows), model.gender_head.in_features), np.float32)
    for s in range(0, len(rows), batch_size):
        x = preprocess(to_batch(np.ascontiguousarray(pixels[rows[s:s + batch_size]])).to(device), ckpt.preprocess)
        f = model.trunk(x).float()
        if tta:
            f = (f + model.trunk(x.flip(3)).float()) / 2
        out[s:s + len(x)] = f.cpu().numpy()
        release(pixels)
    return out


def pixel_measures(pixels: np.ndarray, rows: np.ndarray | None = None, batch_size: int = BATCH
                   ) -> dict[str, np.ndarray]:
    """Brightness, grayscale and sharpness (MEASURES) of ``pixels[rows]``, from the pixels alone."""
    rows = np.arange(len(pixels)) if rows is None else np.asarray(rows, np.int64)
    parts: dict[str, list[np.ndarray]] = {m: [] for m in MEASURES}
    for s in range(0, len(rows), batch_size):
        px = np.asarray(pixels[rows[s:s + batch_size]])
        grey = px[..., 0] * 0.299 + px[..., 1] * 0.587 + px[..., 2] * 0.114
        spread = px.max(-1).astype(np.int16) - px.min(-1)
        parts["brightness"].append(np.round(grey.reshape(len(px), -1).mean(1), 1))
        parts["grayscale"].append((spread <= GRAY_TOLERANCE).reshape(len(px), -1).mean(1) >= GRAY_SHARE)
        parts["sharpness"].append(np.round(quality.sharpness(quality.at_sharpness_size(px)), 1))
        release(pixels)
    return {m: np.concatenate(v) if v else np.zeros(0) for m, v in parts.items()}


def cache_stem(folder: Path, weights_sha256: str, stamp: str, tta: bool, width: int) -> Path:
    key = hashlib.sha256(f"{weights_sha256}\n{stamp}\n{tta}".encode()).hexdigest()
    return folder / f"{CACHE_PREFIX}-{key[:20]}-{width}d"


def _read_cache(stem: Path, files: list[str], width: int) -> Features | None:
    npy, index = stem.with_suffix(".npy"), stem.with_suffix(".json")
    if not (npy.is_file() and index.is_file()):
        return None
    try:
        info = json.loads(index.read_text())
        vectors = np.load(npy, allow_pickle=False)
        if vectors.shape != (len(info["files"]), width) or vectors.dtype != np.float32:
            raise ValueError(f"{vectors.shape} {vectors.dtype} for {len(info['files'])} files")
        if info["files"] != files:
            raise ValueError("it lists other faces than the source")
        measures = {m: np.asarray(info["measures"][m], bool if m == "grayscale" else np.float64) for m in MEASURES}
        if any(len(v) != len(files) for v in measures.values()):
            raise ValueError("its measures do not match its faces")
        return Features(files, vectors, measures, from_cache=True)
    except (OSError, ValueError, KeyError, TypeError) as e:
        log.warning(WARN_DAMAGED.format(stem=stem, detail=e))
        return None


def _write_cache(stem: Path, f: Features) -> None:
    try:
        stem.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(stem.with_suffix(".npy")) as tmp, open(tmp, "wb") as out:
            np.save(out, f.vectors)
        measures = {m: [None if not np.isfinite(v) else float(v) for v in f.measures[m].astype(float)]
                    for m in MEASURES}
        atomic_write_text(stem.with_suffix(".json"), json.dumps({"files": f.files, "measures": measures}))
    except OSError as e:
        log.warning(WARN_NOT_WRITTEN.format(folder=stem.parent, detail=e))


def cached_features(ckpt, stamp: str, files: list[str], pixels: np.ndarray, rows: np.ndarray, tta: bool = True,
                    cache_dir: str | os.PathLike | None = None) -> Features:
    """features() and pixel_measures() of ``pixels[rows]`` (the faces of ``files``, in order) through the cache
    keyed by the checkpoint's weights and ``stamp`` (what the faces depend on)."""
    folder = Path(cache_dir) if cache_dir else default_cache_dir()
    remove_stale_temps(folder, CACHE_PREFIX)
    width = ckpt.model.gender_head.in_features
    stem = cache_stem(folder, ckpt.meta["weights_sha256"], stamp, tta, width)
    cached = _read_cache(stem, list(files), width)
    if cached is not None:
        return cached
    f = Features(list(files), features(ckpt, pixels, rows, tta), pixel_measures(pixels, rows))
    _write_cache(stem, f)
    return f


def project(vectors: np.ndarray) -> np.ndarray:
    """N x 2: the scores on the first two principal components of the centred features, each axis signed so
    that its largest loading is positive (the same map on every run)."""
    x = np.asarray(vectors, np.float64)
    if len(x) < 2:
        return np.zeros((len(x), 2))
    x = x - x.mean(0)
    _, vectors_ = np.linalg.eigh(x.T @ x)  # the F x F covariance's eigenvectors, largest last: faster than an SVD
    axes = vectors_[:, ::-1][:, :2].T
    axes = axes * np.sign(axes[np.arange(len(axes)), np.abs(axes).argmax(1)])[:, None]
    xy = x @ axes.T
    return np.pad(xy, ((0, 0), (0, 2 - xy.shape[1])))


def embedding_frame(predictions: pd.DataFrame, f: Features) -> pd.DataFrame:
    """The output frame (see the module's docstring): the predictions' rows of ``f.files``, in that order."""
    table = predictions.drop_duplicates("file").set_index("file", drop=False).loc[f.files].reset_index(drop=True)
    xy = project(f.vectors)
    measured = {m: f.measures[m] for m in MEASURES if m not in table.columns}
    return pd.concat([pd.DataFrame({"file": f.files, "x": xy[:, 0], "y": xy[:, 1]}),
                      table.drop(columns="file"), pd.DataFrame(measured),
                      pd.DataFrame({FEATURES: list(f.vectors)})], axis=1)


def source_stamp(source: Source, data: str | None) -> str:
    """What a source's faces and predictions depend on, as text: its name and the size and modification time of
    its stamp files and its faces' (a set's results folder and predictions, an own split's predictions file and
    the UTKFace data)."""
    paths = [*source.stamp_files(), *source.faces(lambda: data or "").stamp_files()]
    parts = [source.name]
    for p in paths:
        try:
            st = Path(p).stat()
            parts.append(f"{Path(p).resolve()}:{st.st_size}:{st.st_mtime_ns}")
        except OSError:
            parts.append(f"{p}:missing")
    return "\n".join(parts)


def source_embeddings(ckpt, source: Source, data: Callable[[], str] | None = None,
                      cache_dir: str | os.PathLike | None = None) -> pd.DataFrame:
    """The output frame for every face of ``source`` (a checkpoint's own split: the UTKFace chips at ``data()``;
    a registered set: its cached crops), its predictions read from the source (Source.load: the errors it
    raises when not evaluated yet), with ``source.tta``."""
    table = source.load()
    table = table[table["found"].to_numpy(bool)] if "found" in table else table
    if table.empty:
        raise DatasetError(ERR_NO_FACES)
    where = data() if data is not None else None
    faces = source.faces(lambda: where or "")
    size = ckpt.preprocess.cache_size
    if faces.utkface:
        images = cached_images(faces.load(size), size, cache_dir)
        index = {s.member: i for i, s in enumerate(images.samples)}
        pixels = images.pixels
    else:
        crops = faces.load(size)
        index = {fn: i for i, fn in enumerate(crops.files) if crops.found[i]}
        pixels = crops.pixels
    files = [fn for fn in table["file"] if fn in index]
    if not files:
        raise DatasetError(ERR_NO_FACES)
    rows = np.array([index[fn] for fn in files], np.int64)
    f = cached_features(ckpt, source_stamp(source, where), files, pixels, rows, source.tta, cache_dir)
    return embedding_frame(table, f)


def write_embeddings(frame: pd.DataFrame, path: str | os.PathLike) -> None:
    with atomic_write(path) as tmp:
        frame.to_parquet(tmp, index=False)


def read_embeddings(path: str | os.PathLike) -> pd.DataFrame:
    return pd.read_parquet(path)


def _faces_of(args, ckpt):
    """(predictions, files, pixels, rows, stamp) of the command's data arguments, as evaluate reads them."""
    size = ckpt.preprocess.cache_size
    if resolve(args.data, args.labels, args.format, args.columns)[2] == "utkface":
        sc = scan(args.data)
        images = cached_images(sc, size, args.cache_dir)
        rows = images.indices(args.split)
        if len(rows) == 0:
            raise DatasetError(ERR_NO_SPLIT.format(split=args.split, data=args.data))
        files = [images.samples[i].member for i in rows]
        table = None if args.predictions else predictions_frame(ckpt, images, rows, args.tta)
        return table, files, images.pixels, rows, f"utkface\n{sc.fingerprint}\n{args.split}"
    ds = read_dataset(args.data, args.labels, args.format, args.columns)
    crops = dataset_crops(ds, size, args.cache_dir)
    rows = np.flatnonzero(crops.found)
    files = [crops.files[i] for i in rows]
    table = None if args.predictions else dataset_frame(ckpt, ds, crops, args.tta)
    return table, files, crops.pixels, rows, f"{ds.fingerprint}\n{ds.geometry}\n{alignment_key()}"


def _given_predictions(path: str, files: list[str]) -> pd.DataFrame:
    table = load_predictions(path=path)
    missing = sorted(set(files) - set(table["file"]))
    if missing:
        raise DatasetError(ERR_PREDICTIONS_LACK.format(path=path, n=len(missing), example=missing[0]))
    return table


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m agegender.embed", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True, help="checkpoint folder")
    add_data_arguments(p)
    p.add_argument("--split", default="test", choices=["val", "test", "all"], help="UTKFace only, as evaluate's")
    p.add_argument("--predictions", help="the predictions evaluate wrote for these faces (default: predicted here)")
    p.add_argument("--out", required=True, help="the embeddings, a Parquet file")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=True,
                   help="features (and predictions) averaged with the mirrored face (default on, as evaluate)")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    set_threads(args.threads)
    try:
        ckpt = load_checkpoint(args.checkpoint)
        table, files, pixels, rows, stamp = _faces_of(args, ckpt)
        if not files:
            raise DatasetError(ERR_NO_FACES)
        if table is None:
            table = _given_predictions(args.predictions, files)
        f = cached_features(ckpt, stamp, files, pixels, rows, args.tta, args.cache_dir)
        frame = embedding_frame(table, f)
        write_embeddings(frame, args.out)
    except (CheckpointError, DatasetError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    cached = " (features from the cache)" if f.from_cache else ""
    print(f"{len(frame)} faces, {f.vectors.shape[1]} features each{cached}: {args.out}")
    return 0
