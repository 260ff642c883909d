"""python -m agegender.leakage: faces of a held-out split, or of a whole set, that the training data has seen.

    python -m agegender.leakage --data UTKFACE [--checkpoint DIR] --json OUT [--csv PAIRS]
    python -m agegender.leakage --data SET [--labels FILE --format F --columns ...] --against UTKFACE_OR_SET
                                [--against-labels FILE ...] --json OUT [--csv PAIRS]
    python -m agegender.leakage --set NAME --checkpoint DIR --against UTKFACE [--json OUT]

Without --against (UTKFace): every val/test chip against every train chip, the splits as data.utkface.split_of
makes them, or the checkpoint's own (its manifest.csv) with --checkpoint. With --against: every face of --data
against every face of the other set; with --checkpoint too, only against the faces that checkpoint trained on
(--against is then the UTKFace it trained on), and --set names a registered evaluation set (its images and
labels as the Evaluation sets page registered them) whose check the dashboard then reads. Each face's nearest
match is classed by descriptor distance (dlib's face-recognition descriptors, evaluation.descriptors, cached): a
duplicate (the same picture re-encoded,
resized, mirrored, slightly cropped or brightened) or a look-alike (the same person, or someone very like
them); the thresholds and how they were measured are in docs/leakage.md. With --checkpoint, its held-out
figures (predictions-val.csv, predictions-test.csv, or the set's evaluation) with and without the flagged faces.
With --checkpoint, --json defaults to where the dashboard reads the check (evaluation.sources.Source.leakage_path).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..data.datasets import FORMATS, Dataset, read_dataset
from ..data.utkface import MANIFEST, DatasetError, Scan, cached_images, scan, split_of, trained_on
from ..fairness.groups import age_buckets
from ..labels import GENDERS, bin_label, called_female, image_key, printable
from ..meta import atomic_write, atomic_write_text
from ..models.checkpoint import CheckpointError
from ..models.dlibnet import DLIB_SIZE
from ..models.runtime import set_threads
from ..predictions import FEMALE, OWN_SPLITS, found_rows
from . import leakage, sources
from .descriptors import CROP_SIZE, Descriptors, photo_descriptors, utkface_descriptors
from .evalset import dataset_crops
from .results import ResultsError, get_set

log = logging.getLogger(__name__)

GROUPS = ("race", "gender", "age_bucket")
PAIR_COLUMNS = ("file", "match", "distance", "kind")
ERR_NOT_UTKFACE = "{path} is not UTKFace: without --against, --data must be UTKFace chips (their splits are compared)"
ERR_CHECKPOINT_AGAINST = ("with --checkpoint, --against is the UTKFace that checkpoint trained on; {path} is "
                          "{format}")
ERR_NO_DATA = "say which faces to check: --data PATH (with --labels etc.) or --set NAME, a registered evaluation set"
ERR_NO_JSON = ("say where to write the result: --json OUT (the default place is for --checkpoint alone, or with --set "
               "NAME)")
ERR_SET_AGAINST = "--set checks a registered set against a checkpoint's training faces: pass --checkpoint and --against"
ERR_NO_MANIFEST = "{path} has no " + MANIFEST + ": its splits are unknown (train.py writes it beside the checkpoint)"
ERR_NO_TRAIN = "nothing to compare with: no face of the train split (or of --against) has a descriptor"
ERR_OUT_FOLDER = "cannot write {path}: the folder {folder} does not exist (checked before any face is read)"
ERR_WRITE = "cannot write {path} ({detail})"
WARN_NO_FACE = "{n} image(s) of {path} have no face found, so no descriptor: they are left out of n (e.g. {example})"


@dataclass
class Side:
    """One set's faces: a row per image with a descriptor or not, in one order for the table and vectors."""

    table: pd.DataFrame  # file, age (NaN where only a bin is known), age_bin, gender (name), race, age_bucket
    vectors: np.ndarray  # N x 128, NaN rows where no face was found
    pixels: np.ndarray  # the faces the descriptors were made from (memory-mapped where cached), any row order
    pixel_row: np.ndarray  # each table row's row of pixels, -1 where it has none


def _age_of_bin(label) -> float:
    """The oldest age a bin allows (its low end when open): what the look-alike limits by age compare."""
    lo, hi = label
    return float(hi if hi is not None else lo)


def _rows(records, files: list[str]) -> np.ndarray:
    row = {f: i for i, f in enumerate(files)}
    return np.array([row.get(r.file, -1) for r in records], np.int64)


def read_pixels(ds: Dataset, cache_dir: str | None, scan_: Scan | None) -> tuple[list[str], np.ndarray]:
    """(files, faces) as the descriptors saw them, from the caches the descriptors filled: UTKFace chips at
    the network's 150 px (``scan_``: the dataset's), a photo set's aligned crops."""
    if scan_ is not None:
        images = cached_images(scan_, DLIB_SIZE, cache_dir)
        return [s.member for s in images.samples], images.pixels
    crops = dataset_crops(ds, CROP_SIZE, cache_dir)
    return list(crops.files), crops.pixels


def read_side(ds: Dataset, cache_dir: str | None) -> Side:
    """A dataset's labels, descriptors and faces, aligned by file (UTKFace chips that could not be read have
    none)."""
    # a UTKFace dataset was read from a scan of its root: scanning again is a listing, no image is read
    scan_ = scan(ds.root) if ds.format == "utkface" else None
    d: Descriptors = utkface_descriptors(scan_, cache_dir) if scan_ else photo_descriptors(ds, cache_dir)
    vectors = np.full((len(ds.records), d.vectors.shape[1]), np.nan, np.float32)
    at = _rows(ds.records, d.files)
    vectors[at >= 0] = d.vectors[at[at >= 0]]
    files, pixels = read_pixels(ds, cache_dir, scan_)
    table = pd.DataFrame({
        "file": [r.file for r in ds.records],
        "age": [np.nan if r.age is None else r.age for r in ds.records],
        "age_bin": [bin_label(r.age_bin) if r.age_bin else "" for r in ds.records],
        "age_for_limits": [r.age if r.age is not None else _age_of_bin(r.age_bin) if r.age_bin else np.nan
                           for r in ds.records],
        "gender": [GENDERS[r.gender] for r in ds.records],
        "race": [r.groups.get("race", "") for r in ds.records]})
    table["age_bucket"] = np.asarray(age_buckets(table["age"], table["age_bin"]), dtype=object)
    return Side(table, vectors, pixels, _rows(ds.records, files))


def _warn_no_face(side: Side, path) -> None:
    missing = ~np.isfinite(side.vectors).all(axis=1)
    if missing.any():
        log.warning(WARN_NO_FACE.format(n=int(missing.sum()), path=printable(str(path)),
                                        example=printable(side.table["file"][missing].iloc[0])))


def utkface_splits(side: Side, checkpoint: str | None) -> tuple[np.ndarray, np.ndarray]:
    """(query rows, reference rows): val/test against train, by the hash split or the checkpoint's manifest
    (its train split less any held-out fold, as data.utkface.trained_on reads it)."""
    files = side.table["file"]
    if checkpoint is None:
        split = files.map(lambda f: split_of(Path(f).name)).to_numpy()
        return np.flatnonzero(np.isin(split, OWN_SPLITS)), np.flatnonzero(split == "train")
    manifest = Path(checkpoint) / MANIFEST
    if not manifest.is_file():
        raise DatasetError(ERR_NO_MANIFEST.format(path=printable(str(checkpoint))))
    m = pd.read_csv(manifest, dtype=str, keep_default_na=False, usecols=["file", "split"])
    held = set(m.loc[m["split"].isin(OWN_SPLITS), "file"].map(image_key))
    train = trained_on(checkpoint) or set()
    keys = files.map(image_key)
    return np.flatnonzero(keys.isin(held).to_numpy()), np.flatnonzero(keys.isin(train).to_numpy())


def match(query: Side, reference: Side, q_rows: np.ndarray, r_rows: np.ndarray,
          t: leakage.Thresholds = leakage.DEFAULT) -> pd.DataFrame:
    """One row per query face with a descriptor: its nearest reference face, the distance and the kind."""
    ok = np.isfinite(query.vectors[q_rows]).all(axis=1)
    q_rows = q_rows[ok]
    near = leakage.nearest(query.vectors[q_rows], reference.vectors[r_rows])
    has = near.index >= 0
    if len(q_rows) and not has.any():
        raise DatasetError(ERR_NO_TRAIN)
    out = query.table.iloc[q_rows].reset_index(drop=True)
    ref = reference.table.iloc[r_rows[np.maximum(near.index, 0)]].reset_index(drop=True)
    out["match"] = ref["file"].where(has, "")
    out["distance"] = near.distance
    younger = np.fmin(out["age_for_limits"].to_numpy(np.float64), ref["age_for_limits"].to_numpy(np.float64))
    out["correlation"] = _correlations(query, reference, q_rows, r_rows[np.maximum(near.index, 0)],
                                       near.distance < t.duplicate)
    out["kind"] = leakage.classify(near.distance, younger, out["correlation"].to_numpy(), t)
    return out


def _correlations(query: Side, reference: Side, q_rows: np.ndarray, r_rows: np.ndarray,
                  candidate: np.ndarray) -> pd.Series:
    """The pixel check of each candidate duplicate (NaN elsewhere, and where a face has no pixels)."""
    out = np.full(len(q_rows), np.nan)
    for i in np.flatnonzero(candidate):
        a, b = query.pixel_row[q_rows[i]], reference.pixel_row[r_rows[i]]
        if a >= 0 and b >= 0:
            out[i] = leakage.correlation(np.asarray(query.pixels[a]), np.asarray(reference.pixels[b]))
    return pd.Series(out)


def checkpoint_figures(checkpoint: str, matched: pd.DataFrame, n_boot: int, names=OWN_SPLITS) -> dict:
    """Per source (the held-out splits, or a registered set once evaluated): age MAE and gender accuracy with and
    without the flagged faces, overall and per race. A set not evaluated yet has none."""
    flagged = set(matched.loc[matched["kind"] != "", "file"].map(image_key))
    out = {}
    for split in names:
        try:
            df = found_rows(sources.source(checkpoint, split).load())
        except ResultsError:
            continue
        if "age" not in df:  # ages known as bins only (FairFace): no MAE
            df = df.assign(age=np.nan)
        drop = df["file"].map(image_key).isin(flagged).to_numpy()
        err = (df["pred_age"] - df["age"]).to_numpy(np.float64)
        correct = called_female(df["p_female"].to_numpy(np.float64)) == (df["gender"] == FEMALE).to_numpy()
        by = {"all": leakage.with_without(err, correct, drop, n_boot)}
        for race in sorted(df["race"].unique()) if "race" in df else []:
            m = (df["race"] == race).to_numpy()
            by[race] = leakage.with_without(err[m], correct[m], drop[m], n_boot)
        out[split] = by
    return out


def summary(matched: pd.DataFrame, t: leakage.Thresholds) -> dict:
    kind = matched["kind"].to_numpy()
    flagged = kind != ""
    pairs = matched.loc[flagged, list(PAIR_COLUMNS)]
    return {"n": len(matched), "n_duplicate": int((kind == leakage.DUPLICATE).sum()),
            "n_look_alike": int((kind == leakage.LOOK_ALIKE).sum()),
            "threshold_duplicate": t.duplicate, "threshold_look_alike": t.look_alike,
            "threshold_correlation": t.correlation,
            "threshold_look_alike_young": [{"under_age": a, "threshold": v} for a, v in t.young],
            "by_group": leakage.shares_by_group({c: matched[c].to_numpy() for c in GROUPS}, flagged,
                                                kind == leakage.DUPLICATE),
            "pairs": [{**r, "distance": round(float(r["distance"]), 4)} for r in pairs.to_dict("records")]}


def _strict(x):
    """NaN (a figure with no faces behind it) as null: the JSON stays strict for any reader."""
    if isinstance(x, dict):
        return {k: _strict(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_strict(v) for v in x]
    return None if isinstance(x, float) and not np.isfinite(x) else x


def _write(args, out: dict) -> None:
    path = args.json
    try:
        atomic_write_text(path, json.dumps(_strict(out), indent=2, allow_nan=False) + "\n")
        if args.csv:
            path = args.csv
            write_csv(out["pairs"], path)
    except OSError as e:
        raise ValueError(ERR_WRITE.format(path=printable(str(path)), detail=e.strerror or e)) from e


def write_csv(pairs: list[dict], path: str) -> None:
    with atomic_write(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=PAIR_COLUMNS)
        w.writeheader()
        w.writerows(pairs)


def run(args) -> dict:
    ds = read_dataset(args.data, args.labels, args.format, args.columns)
    query = read_side(ds, args.cache_dir)
    _warn_no_face(query, args.data)
    if args.against:
        other = read_dataset(args.against, args.against_labels, args.against_format, args.against_columns)
        if args.checkpoint and other.format != "utkface":
            raise DatasetError(ERR_CHECKPOINT_AGAINST.format(path=printable(str(args.against)), format=other.format))
        reference = read_side(other, args.cache_dir)
        _warn_no_face(reference, args.against)
        q_rows, r_rows = np.arange(len(query.table)), np.arange(len(reference.table))
        if args.checkpoint:
            r_rows = utkface_splits(reference, args.checkpoint)[1]
    else:
        if ds.format != "utkface":
            raise DatasetError(ERR_NOT_UTKFACE.format(path=printable(str(args.data))))
        reference = query
        q_rows, r_rows = utkface_splits(query, args.checkpoint)
    t = leakage.DEFAULT
    matched = match(query, reference, q_rows, r_rows, t)
    out = {"data": str(args.data), "against": str(args.against) if args.against else None,
           "checkpoint": str(args.checkpoint) if args.checkpoint else None, "set": args.set,
           "n_reference": int(np.isfinite(reference.vectors[r_rows]).all(axis=1).sum()), **summary(matched, t)}
    if args.checkpoint:
        names = [args.set] if args.set else list(OWN_SPLITS)
        out["checkpoint_figures"] = checkpoint_figures(args.checkpoint, matched, args.n_boot, names)
    return out


def parse(argv: list[str] | None):
    p = argparse.ArgumentParser(prog="python -m agegender.leakage", description=__doc__.split("\n")[0])
    p.add_argument("--data", help="the images: folder, .zip or .tar.gz (or the labels file)")
    p.add_argument("--set", help="instead of --data: a registered evaluation set's name (Evaluation sets page)")
    p.add_argument("--labels", help="labels file (CSV or Parquet); file paths in it are relative to --data")
    p.add_argument("--format", choices=FORMATS)
    p.add_argument("--columns", help="column mapping for --format csv (as in python -m agegender.evaluate)")
    p.add_argument("--against", help="the other set: UTKFace or a labelled set (default: --data's own train split)")
    p.add_argument("--against-labels")
    p.add_argument("--against-format", choices=FORMATS)
    p.add_argument("--against-columns")
    p.add_argument("--checkpoint", help="UTKFace: its own splits (manifest.csv), and its figures without the "
                   "flagged faces")
    p.add_argument("--json", help="write the result here (default with --checkpoint: where the dashboard reads it)")
    p.add_argument("--csv", help="write the flagged pairs here (file, match, distance, kind)")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--n-boot", type=int, default=leakage.N_BOOT, help="resamples of the paired intervals")
    p.add_argument("--threads", type=int, default=0)
    return p.parse_args(argv)


def _resolve(args) -> None:
    """--set's images and labels from the registry; --json's default place."""
    if args.set:
        if not (args.checkpoint and args.against):
            raise ValueError(ERR_SET_AGAINST)
        es = get_set(args.set)
        args.data, args.labels, args.format, args.columns = es.path, es.labels, es.format, es.columns
    if not args.data:
        raise ValueError(ERR_NO_DATA)
    if not args.json:
        if not args.checkpoint or (args.against and not args.set):  # no place the dashboard reads
            raise ValueError(ERR_NO_JSON)
        args.json = str(sources.source(args.checkpoint, args.set or OWN_SPLITS[0]).leakage_path())
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)


def _outputs(args) -> list[Path]:
    """The files the run will write, refused up front when their folder is missing: a run is minutes the
    first time, and should not end in a traceback."""
    paths = [Path(p).expanduser() for p in (args.json, args.csv) if p]
    for p in paths:
        if not p.parent.is_dir():
            raise ValueError(ERR_OUT_FOLDER.format(path=printable(str(p)), folder=printable(str(p.parent))))
    return paths


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    set_threads(args.threads)
    t0 = time.perf_counter()
    try:
        _resolve(args)
        _outputs(args)
        out = run(args)
        out["seconds"] = round(time.perf_counter() - t0, 2)
        _write(args, out)
    except (DatasetError, CheckpointError, ResultsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{out['n']} faces: {out['n_duplicate']} duplicate(s), {out['n_look_alike']} look-alike(s) "
          f"(thresholds {out['threshold_duplicate']} / {out['threshold_look_alike']}); {out['seconds']} s; "
          f"written to {args.json}")
    return 0
