"""Evaluate a checkpoint: predictions CSV, summary table, metrics JSON.

    python -m agegender.evaluate --checkpoint DIR --data PATH [--split val|test|all]
        [--out PREDICTIONS.csv] [--json METRICS.json] [--no-tta] [--limit N]
    python -m agegender.evaluate --checkpoint DIR --data PATH --labels FILE [--format fairface|csv]
        [--columns file=COL,age=COL,gender=COL,groups=A,B | MAPPING.toml] --out PREDICTIONS.csv [--json M.json]
    python -m agegender.evaluate --checkpoint DIR --data UTKFACE --into-checkpoint

UTKFace (labels in the file names) keeps its hash splits; any other dataset (agegender.data.datasets) is
scored whole, photos through face detection and alignment (agegender.evaluation.evalset). For a DLDL checkpoint each row
also gets ``age_label_tail``, the label audit's age p_label (agegender.predictions.label_tails), so the audit
(agegender.review.audit) and the bias report's label section need the predictions alone; it comes from the same pass
through the model as the predictions and their intervals.

--into-checkpoint is train.py's last step on its own: val and test scored into the checkpoint's predictions files
and meta.json, with the fingerprint of the data scored. It is how a checkpoint trained on another copy of the data
(a packed zip, agegender.data.pack) gets the figures of the original images.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ..data.datasets import FORMATS, Dataset, read_dataset, resolve
from ..data.utkface import (
    DatasetError,
    Images,
    cached_images,
    evenly_spaced,
    load_images,
    manifest_splits,
    scan,
    split_of,
    with_splits,
)
from ..faces import quality
from ..fairness.metrics import summary_of
from ..labels import GENDERS, RACES, bin_label, nearest_bin, printable
from ..meta import ERR_OUTPUT, WHY_NO_FOLDER, atomic_write_text, output_problem, write_failure
from ..models.checkpoint import CheckpointError, load_checkpoint, read_meta, write_meta
from ..models.distributed import Dist
from ..models.distributed import setup as setup_distributed
from ..models.inference import predict_distribution
from ..models.interval import interval_of
from ..models.model import DistributionAgeHead
from ..models.runtime import set_threads
from ..predictions import (
    LABEL_TAIL,
    OWN_SPLITS,
    SPLIT_ALL,
    bin_scale,
    file_name,
    label_tails,
    pred_bins,
    predictions_path,
    write_predictions,
)
from .evalset import SCORING, Crops, Progress, dataset_crops, first_stage, rank_crops, release

log = logging.getLogger(__name__)

# faces per model pass and per progress report (predict_distribution's own batch); 128, not 256: a pass of 256
# faces with their mirrors held ~1.45 GB of dlib-resnet29 activations, the largest part of a photo evaluation's
# peak memory (2.16 GB on 20,000 photos), and a smaller batch is no slower on a CPU
SCORE_BATCH = 128
QUALITY_BATCH = 16  # crops measured at once: sharpness holds 144 px crops in float64 thrice (16 MB at 16)

ERR_NEEDS_OUT = ("a labelled dataset's predictions go where --out says (never into the checkpoint folder): "
                 "add --out PREDICTIONS.csv")
ERR_INTO = ("--into-checkpoint scores UTKFace's val and test splits into the checkpoint folder; it takes no "
            "--labels, --out, --split or --limit")
NOTE_RECALIBRATE = ("the age intervals in {path} were calibrated on other data than {data}: run python -m "
                    "agegender.intervals --checkpoint {path} --data {data}, then this command again, so that "
                    "the stored predictions carry intervals fitted on these images")


def scored_fingerprint(meta: dict, split: str) -> str | None:
    """The fingerprint (agegender.data.utkface.Scan.fingerprint) of the data a checkpoint's stored predictions for
    ``split`` were scored on. Checkpoints that predate the record scored the data they were trained on."""
    return (meta.get("metrics") or {}).get(split, {}).get("dataset_fingerprint") or meta.get("dataset_fingerprint")


def has_distribution(ckpt) -> bool:
    """Whether the checkpoint's age head is DLDL's distribution over whole years (else a regression)."""
    return isinstance(ckpt.model.age_head, DistributionAgeHead)


def age_distributions(ckpt, pixels: np.ndarray, tta: bool = True, batch_size: int = 256,
                      precision: str = "auto") -> np.ndarray:
    """N x bins float64: the DLDL head's distribution over whole years for each face (N x S x S x 3 uint8 at the
    checkpoint's cache size), averaged over the face and its mirror (inference.predict_distribution). The
    caller checks has_distribution (agegender.review.audit_run.age_distributions says why not)."""
    return predict_distribution(ckpt, pixels, tta, batch_size, precision)[2]


def with_label_tails(ckpt, frame: pd.DataFrame, dist: np.ndarray | None, found: np.ndarray | None = None
                     ) -> pd.DataFrame:
    """``frame`` with LABEL_TAIL: the label audit's age tail of each row's label under ``dist``, the age
    distributions of the found rows' faces in order (predict_distribution); NaN for a regression head (``dist``
    None) and for rows without a face."""
    tails = np.full(len(frame), np.nan)
    if dist is not None and len(frame):
        found = np.ones(len(frame), bool) if found is None else np.asarray(found, bool)
        probs = np.full((len(frame), dist.shape[1]), np.nan)
        probs[found] = dist
        tails = label_tails(probs, frame)
    return frame.assign(**{LABEL_TAIL: tails})


def predictions_frame(ckpt, images: Images, idx: np.ndarray, tta: bool = True) -> pd.DataFrame:
    """The predictions table of UTKFace images; the age intervals empty unless the checkpoint is calibrated, the
    label tails (with_label_tails) unless its age head is a regression."""
    ages, pf, dist = predict_distribution(ckpt, images.pixels[idx], tta)
    lo, hi = interval_of(ckpt, ages, dist, tta)
    ss = [images.samples[i] for i in idx]
    frame = pd.DataFrame({
        "file": [s.member for s in ss],
        "split": [s.split for s in ss],
        "age": [s.age for s in ss],
        "gender": [GENDERS[s.gender] for s in ss],
        "race": [RACES[s.race] for s in ss],
        "pred_age": np.round(ages, 2),
        "pred_age_lo": lo,  # already rounded, outward
        "pred_age_hi": hi,
        "p_female": np.round(pf, 4),
    })
    return with_label_tails(ckpt, frame, dist)


def dataset_frame(ckpt, ds: Dataset, crops: Crops, tta: bool = True, progress: Progress | None = None,
                  dd: Dist | None = None) -> pd.DataFrame | None:
    """The predictions table of a labelled dataset: one row per readable record, with its group columns and
    ``found``; the predictions are empty where no face was found, the age intervals also where the checkpoint
    is not calibrated, the label tails also for a regression head. Predicted ages are put in the dataset's own
    age bins (FairFace's unless its labels use others). ``progress(SCORING, done, total)`` after each batch.
    Under torchrun (``dd``) each rank scores its share of the batches and rank 0 alone gets the table."""
    dd = dd or Dist()
    scored = _scored_in_batches(ckpt, crops.pixels, np.flatnonzero(crops.found), tta, progress, dd)
    if scored is None:
        return None
    ages, pf, dist = scored
    lo, hi = interval_of(ckpt, ages, dist, tta)  # calibrated on UTKFace val: whether it holds here is measured
    frame = labelled_frame(ds, crops, crops.found, ages, pf, lo, hi)
    return with_label_tails(ckpt, frame, dist, crops.found)


def _scored_in_batches(ckpt, pixels: np.ndarray, rows: np.ndarray, tta: bool, progress: Progress | None,
                       dd: Dist) -> tuple[np.ndarray, np.ndarray, np.ndarray | None] | None:
    """predict_distribution over ``pixels[rows]`` a batch at a time, so that the caller hears of each batch (the
    model pass of a few hundred faces takes seconds on a CPU) and only a batch of faces is read from a
    memory-mapped cache; the batches are those predict_distribution would make, so the figures are the same.
    Under torchrun rank r scores batches r, r + world, ...: the very batches one process scores, so the same
    kernels see the same inputs; rank 0 gathers them in order (None elsewhere)."""
    n = len(rows)
    starts = list(range(0, max(n, 1), SCORE_BATCH))  # one empty batch for no faces: the arrays keep their shapes
    mine = []
    for start in starts[dd.rank::dd.world]:
        mine.append(predict_distribution(ckpt, pixels[rows[start:start + SCORE_BATCH]], tta, SCORE_BATCH))
        release(pixels)
        if progress:
            progress(SCORING, min(start + SCORE_BATCH, n), n)
    got = dd.gather(mine)
    if got is None:
        return None
    parts = [got[b % dd.world][b // dd.world] for b in range(len(starts))]
    ages, pf = (np.concatenate([p[i] for p in parts]) for i in (0, 1))
    return ages, pf, None if parts[0][2] is None else np.concatenate([p[2] for p in parts])


def labelled_frame(ds: Dataset, crops: Crops, found: np.ndarray, ages: np.ndarray, p_female: np.ndarray,
                   lo: np.ndarray | None = None, hi: np.ndarray | None = None) -> pd.DataFrame:
    """A labelled dataset's predictions table from any predictor's outputs: ``found`` per record of ``crops``,
    and ``ages``, ``p_female`` (and the interval ``lo``, ``hi``) for the found ones, in order. The quality
    columns come from ``crops``: how our detector saw the labelled face."""
    by_file = {r.file: r for r in ds.records}
    records = [by_file[f] for f in crops.files]
    n = len(records)
    pred_age, pf = np.full(n, np.nan), np.full(n, np.nan)
    pred_lo, pred_hi = np.full(n, np.nan), np.full(n, np.nan)
    pred_age[found], pf[found] = ages, p_female
    if lo is not None:
        pred_lo[found], pred_hi[found] = lo, hi
    pred_age, pf = np.round(pred_age, 2), np.round(pf, 4)  # rounded in float64: no 83.47000122
    scale = bin_scale([bin_label(r.age_bin) for r in ds.records if r.age_bin is not None])
    true_bins = [bin_label(r.age_bin) if r.age_bin is not None else bin_label(scale[nearest_bin(r.age, scale)])
                 for r in records]
    return pd.DataFrame({
        "file": [r.file for r in records],
        "split": SPLIT_ALL,
        "age": [np.nan if r.age is None else r.age for r in records],
        "age_bin": true_bins,
        "gender": [GENDERS[r.gender] for r in records],
        **{g: [r.groups[g] for r in records] for g in ds.group_columns},
        "found": found,
        "pred_age": pred_age,
        "pred_age_lo": pred_lo,
        "pred_age_hi": pred_hi,
        "pred_age_bin": pred_bins(pred_age, scale),
        "p_female": pf,
        **_quality(crops),
    })


def _quality(crops: Crops) -> dict[str, np.ndarray]:
    """Pose, face size and sharpness of each found face (NaN for misses, and pose and size for chips,
    which carry no detection); QUALITY_BATCH crops at a time, as sharpness works in float64."""
    parts = []
    for s in range(0, max(len(crops.files), 1), QUALITY_BATCH):  # one empty part keeps the shapes
        parts.append(quality.measure(crops.landmarks[s:s + QUALITY_BATCH], crops.box[s:s + QUALITY_BATCH],
                                     crops.pixels[s:s + QUALITY_BATCH]))
        if s % SCORE_BATCH == 0:  # a scoring batch of rows at most stays resident
            release(crops.pixels)
    m = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    m["sharpness"] = np.where(crops.found, m["sharpness"], np.nan)
    return m


def evaluate_dataset(ckpt, ds: Dataset, tta: bool = True, cache_dir=None, progress: Progress | None = None,
                     dd: Dist | None = None) -> tuple[pd.DataFrame, dict] | None:
    """A labelled dataset through a checkpoint: (predictions table, metrics). The metrics are those of
    metrics.summary_of (over faces found) plus how many rows the dataset reader and the image decoder
    skipped. ``progress(stage, done, total)`` hears both stages in order: first_stage(ds.geometry) over the
    records (at once where the crops are cached), then SCORING over the faces found. Under torchrun (``dd``)
    the ranks share detection and scoring (evalset.rank_crops, dataset_frame); rank 0 gets the result, the
    others None."""
    stage = first_stage(ds.geometry)
    if dd is None or not dd.active:
        crops = dataset_crops(ds, ckpt.preprocess.cache_size, cache_dir,
                              (lambda done, total: progress(stage, done, total)) if progress else None)
    else:
        crops = rank_crops(ds, ckpt.preprocess.cache_size, cache_dir, dd)
        if dd.any(crops is None):  # a rank cannot see the cache: rank 0, which holds the crops, scores alone
            if not dd.main:
                return None
            dd = None
    df = dataset_frame(ckpt, ds, crops, tta, progress, dd)
    if df is None:
        return None
    return df, {**summary_of(df), "skipped_labels": ds.skipped, "unreadable": len(crops.unreadable),
                "format": ds.format, "geometry": ds.geometry, "dataset_fingerprint": ds.fingerprint}


def evaluate_into_checkpoint(folder: Path, images: Images, fingerprint: str, tta: bool = True) -> dict:
    """Write predictions-val.csv and predictions-test.csv and record their metrics in meta.json, with
    ``fingerprint``, that of the data ``images`` were decoded from."""
    ckpt = load_checkpoint(folder)
    results = {}
    for split in OWN_SPLITS:
        t = time.perf_counter()
        df = predictions_frame(ckpt, images, images.indices(split), tta)
        write_predictions(df, predictions_path(folder, split))
        results[split] = {**summary_of(df), "tta": tta, "seconds": round(time.perf_counter() - t, 1),
                          "dataset_fingerprint": fingerprint}
        log.info("%s: %s", split, format_metrics(results[split]))
    meta = read_meta(folder)
    meta["metrics"] = results
    meta.pop("format", None)
    write_meta(folder, meta)
    return results


def format_metrics(m: dict) -> str:
    def f(key, spec):
        v = m.get(key)
        return "n/a" if v is None else format(v, spec)

    found = f"  face found {m['n_found']}/{m['n']}" if m.get("n_found", m["n"]) != m["n"] else ""
    age = (f"MAE {f('age_mae', '.2f')} y  CS@5 {f('age_cs5', '.1%')}  bias {f('age_bias', '+.2f')} y"
           if m.get("age_mae") is not None else
           f"age bin acc {f('age_bin_accuracy', '.1%')}  within one bin {f('age_bin_within1', '.1%')}")
    return (f"n={m['n']}{found}  {age}  gender acc {f('gender_accuracy', '.2%')}  AUC {f('gender_auc', '.4f')}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m agegender.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True, help="checkpoint folder")
    p.add_argument("--data", required=True, help="the images: folder, .zip or .tar.gz (or the labels file)")
    p.add_argument("--labels", help="labels file (CSV or Parquet); file paths in it are relative to --data")
    p.add_argument("--format", choices=FORMATS, help="default: utkface without --labels, fairface for "
                   "FairFace's CSV, csv otherwise")
    p.add_argument("--columns", help="column mapping for --format csv: file=COL,age=COL (or age_bin=COL),"
                   "gender=COL[,gender_map=F=1,M=0][,groups=A,B][,geometry=chips|photos], or a .toml file")
    p.add_argument("--split", default="test", choices=["val", "test", "all"],
                   help="UTKFace only: all = every parseable image, whatever its split (external test sets)")
    p.add_argument("--out", help=f"predictions CSV (default: CHECKPOINT/{file_name('SPLIT')})")
    p.add_argument("--json", help="write the metrics to this file")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=True,
                   help="average with the mirrored image (default on)")
    p.add_argument("--limit", type=int, default=0,
                   help="an evenly spaced sample of N images of the split, decoded without the cache")
    p.add_argument("--into-checkpoint", action="store_true",
                   help="UTKFace: score val and test into the checkpoint (its predictions files and meta.json's "
                        "metrics), as train.py's last step does")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    set_threads(_threads(args.threads))
    t0 = time.perf_counter()
    problem = _outputs_problem(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    if args.into_checkpoint:
        return _evaluate_into(args)
    dd, device = setup_distributed()  # under torchrun each rank scores its share of the images
    try:
        return _evaluate(args, dd, device, t0)
    finally:
        dd.close()


def _threads(n: int) -> int:
    """--threads, else under torchrun this machine's cores shared among its ranks (each would take them all)."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return n or (max(1, len(os.sched_getaffinity(0)) // local) if local > 1 else 0)


def _evaluate_labelled(args, dd, device, t0: float) -> int:
    """--labels, --format fairface|csv: score a whole labelled dataset (photos are detected once and cached;
    under torchrun every rank detects and scores its share, and rank 0 writes the cache and the predictions)."""
    if not args.out:
        print(f"error: {ERR_NEEDS_OUT}", file=sys.stderr)
        return 2
    try:
        ckpt = load_checkpoint(args.checkpoint, device)
        ds = read_dataset(args.data, args.labels, args.format, args.columns)
        done = evaluate_dataset(ckpt, ds, args.tta, args.cache_dir, dd=dd)
    except (CheckpointError, DatasetError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if done is None:  # a rank other than 0: its share went to rank 0
        return 0
    df, m = done
    m = {**m, "tta": args.tta, "checkpoint": str(args.checkpoint), "data": str(args.data),
         "labels": None if ds.labels is None else str(ds.labels), "seconds": round(time.perf_counter() - t0, 2)}
    return _write_outputs(df, m, args.out, args.json)


def _write_outputs(df: pd.DataFrame, m: dict, out: Path | str, json_path: str | None) -> int:
    """The predictions and the metrics; a write that fails (a full disk) is one line and exit 2."""
    for path in (out, json_path):
        try:
            if path == out:
                write_predictions(df, out)
            elif path:
                atomic_write_text(path, json.dumps(m, indent=2) + "\n")
        except OSError as e:
            print(f"error: {write_failure(path, e)}", file=sys.stderr)
            return 2
    print(format_metrics(m))
    print(f"predictions: {out}   time: {m['seconds']:.1f} s")
    return 0


def _outputs_problem(args) -> str | None:
    """Why --out or --json cannot be written, said before the evaluation runs (--out's folder is made)."""
    for path in (args.out, args.json):
        problem = path and output_problem(path)
        if problem and not (path == args.out and problem == WHY_NO_FOLDER):
            return ERR_OUTPUT.format(path=printable(str(path)), detail=problem)
    return None


def _evaluate_into(args) -> int:
    """--into-checkpoint: val and test into the checkpoint, in one process."""
    try:
        other = args.labels or args.out or args.limit or args.split != "test"
        if other or resolve(args.data, args.labels, args.format, args.columns)[2] != "utkface":
            raise DatasetError(ERR_INTO)
        ckpt = load_checkpoint(args.checkpoint)
        sc = scan(args.data)
        images = cached_images(sc, ckpt.preprocess.cache_size, args.cache_dir)
        results = evaluate_into_checkpoint(Path(args.checkpoint), images, sc.fingerprint, tta=args.tta)
    except (CheckpointError, DatasetError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for split, m in results.items():
        print(f"{split}: {format_metrics(m)}")
    cal = ckpt.calibration  # a record that cannot be used stopped the evaluation above
    if cal is not None and cal.dataset_fingerprint != sc.fingerprint:
        print("note: " + NOTE_RECALIBRATE.format(path=args.checkpoint, data=args.data), file=sys.stderr)
    print(f"written to {args.checkpoint}")
    return 0


def _evaluate(args, dd, device, t0: float) -> int:
    try:
        utkface = resolve(args.data, args.labels, args.format, args.columns)[2] == "utkface"
    except DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not utkface:
        return _evaluate_labelled(args, dd, device, t0)
    try:
        ckpt = load_checkpoint(args.checkpoint, device)
        sc = with_splits(scan(args.data), manifest_splits(args.checkpoint))  # its own split rule's val/test
        size = ckpt.preprocess.cache_size
        if args.limit:
            picked = [s for s in sc.samples if args.split == "all" or s.split == args.split]
            picked = evenly_spaced(picked, args.limit)  # spread over all ages
            images = load_images(sc, picked, size)
        else:
            images = cached_images(sc, size, args.cache_dir)
        idx = images.indices(args.split)
        if len(idx) == 0:
            raise DatasetError(f"no images of split {args.split!r} at {args.data}; try --split all")
        parts = dd.gather(predictions_frame(ckpt, images, idx[dd.rank::dd.world], args.tta))
    except (CheckpointError, DatasetError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not dd.main:
        return 0
    position = np.concatenate([np.arange(len(idx))[r::dd.world] for r in range(dd.world)])
    df = pd.concat(parts, ignore_index=True).iloc[np.argsort(position, kind="stable")].reset_index(drop=True)
    out = Path(args.out) if args.out else predictions_path(args.checkpoint, args.split)
    # the data module has logged them once with examples; the JSON keeps the count with the metrics
    split_by = {s.member: s.split for s in sc.samples}
    skipped = [u for u in images.unreadable if args.split == "all" or split_by.get(u, split_of(u)) == args.split]
    m = {**summary_of(df), "split": args.split, "tta": args.tta, "checkpoint": str(args.checkpoint),
         "unreadable": len(skipped), "seconds": round(time.perf_counter() - t0, 2)}
    return _write_outputs(df, m, out, args.json)


if __name__ == "__main__":
    sys.exit(main())
