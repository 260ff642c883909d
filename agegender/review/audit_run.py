"""Label audit: for every image of an evaluation set, how likely its label is wrong, and why.

    python -m agegender.audit --checkpoint DIR --data PATH [--labels FILE --format fairface|csv --columns ...]
        [--split val|test|train|all] [--predictions CSV] [--folds DIR1,DIR2,...] --json OUT.json [--csv OUT.csv]
        [--top N]

The run of an audit: which images a command audits, scored through which checkpoints (a predictions table read
where one serves), and the command line. The audit of the table itself (the rules, the suspects, what a report
leaves out) is review.audit, which loads no model; the rules and the measured figures: docs/audit.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ..data.datasets import read_dataset, resolve
from ..data.utkface import (
    FOLD_RULE,
    DatasetError,
    cached_images,
    fold_of,
    load_images,
    manifest_splits,
    scan,
    trained_on,
    with_splits,
)
from ..evaluation.evalset import dataset_crops
from ..labels import image_key
from ..meta import CheckpointError, read_meta
from ..predictions import OWN_SPLITS, complete, load_predictions, predictions_path
from .audit import (
    DEFAULT_LEVEL,
    NOTE_NO_TAILS,
    AuditError,
    audit_table,
    counts,
    distribution_head,
    has_label_tails,
)
from .verdicts import read_review, review_path, with_reviews

if TYPE_CHECKING:
    from ..models.checkpoint import Checkpoint

log = logging.getLogger(__name__)

# Error messages are constants so tests can assert them word for word.
ERR_NO_DISTRIBUTION = ("{path} has no age distribution head (it was trained with --age-loss {loss}): pass no "
                       "distribution, and the age audit falls back on the residual against the set's spread")
ERR_TRAIN_NEEDS_FOLDS = ("--split {split} scores training images, and a checkpoint has learnt the labels it was "
                         "trained on: that is no audit. Pass --folds with checkpoints trained with --holdout-fold "
                         "F --folds K, or audit --split val or test")
ERR_NEEDS_CHECKPOINT = "--split {split} holds val and test images: pass --checkpoint to score them"
ERR_NOT_HELD_OUT = "{path} held out no fold: train each --folds checkpoint with --holdout-fold F --folds K"
ERR_FOLD_COUNTS = "the --folds checkpoints count different numbers of folds ({counts}): train all with one --folds K"
ERR_FOLD_COVERAGE = ("the --folds checkpoints hold out folds {held} of {k}: each of folds 0 to {last} must be held "
                     "out by exactly one checkpoint")
ERR_FOLD_DATA = ("{path} was trained on another dataset (fingerprint {theirs:.12}) than {data} ({ours:.12}): "
                 "train the fold checkpoints on the data you audit")
ERR_FOLD_RULE = "{path} held out folds by another rule ({rule!r}): retrain it with this version's --holdout-fold"
ERR_MIXED_HEADS = ("the checkpoints mix age heads ({kinds}): an audit compares one kind of score, so use "
                   "checkpoints trained with the same --age-loss")
ERR_NEEDS_CHECKPOINT_SET = "{path} is a {format} dataset, audited whole by one checkpoint: pass --checkpoint"
ERR_NO_SPLITS = "{path} is a {format} dataset without splits: it is audited whole, so leave --split out or pass all"
ERR_FOLDS_UTKFACE = "--folds scores UTKFace's train split; {path} is a {format} dataset: audit it with --checkpoint"
ERR_NO_IMAGES = "no images of split {split} at {path}"
NOTE_TRAINED_ON = ("{n} of the {total} images were left out: {path} trained on them ({how}), and a checkpoint has "
                   "learnt the labels it was trained on. Audit them with --folds (checkpoints trained with "
                   "--holdout-fold F --folds K)")
NOTE_NOT_PREDICTED = ("{n} of the {total} images have no row in the predictions (unreadable, or scored before they "
                      "were added): left out; python -m agegender.evaluate scores them")
MANIFEST_HOW = "its manifest.csv lists them as train"
SPLIT_HOW = "it has no manifest.csv, and the split rule puts them in train"


# ---- the model's view of each image ---------------------------------------------------------------------

def age_distributions(ckpt: Checkpoint, pixels: np.ndarray, tta: bool = True, batch_size: int = 256,
                      precision: str = "auto") -> np.ndarray:
    """N x bins float64: the DLDL head's distribution over whole years for each face (evaluation.evaluate's, the
    one evaluation writes the label tails with); AuditError for a regression head."""
    from ..evaluation.evaluate import age_distributions as model_distributions
    from ..evaluation.evaluate import has_distribution

    if not has_distribution(ckpt):
        loss = ckpt.meta.get("train_config", {}).get("age_loss", "smooth_l1")
        raise AuditError(ERR_NO_DISTRIBUTION.format(path=ckpt.path, loss=loss))
    return model_distributions(ckpt, pixels, tta, batch_size, precision)


# ---- sources and the command line ----------------------------------------------------------------------

def audit_faces(ckpt: Checkpoint, table: pd.DataFrame, faces: Callable[[list[str]], tuple[list[str], np.ndarray]],
                level: float = DEFAULT_LEVEL, tta: bool = True) -> pd.DataFrame:
    """audit_table of a checkpoint's predictions table. A table with its label tails (written by evaluation) or
    a checkpoint without a distribution (the fallback) needs no face; an older table of a DLDL checkpoint gets
    its age distributions from ``faces(files)``: (the files it found, their faces at the checkpoint's cache
    size), e.g. chip_faces; a row whose face it did not find is left out."""
    from ..evaluation.evaluate import has_distribution

    if has_label_tails(table) or not has_distribution(ckpt):
        return audit_table(table, None, level)
    log.warning(NOTE_NO_TAILS.format(what="the predictions", path=ckpt.path))
    files, pixels = faces(list(table["file"]))
    where = {f: i for i, f in enumerate(files)}
    table = table[table["file"].isin(where)].reset_index(drop=True)
    return audit_table(table, age_distributions(ckpt, pixels[[where[f] for f in table["file"]]], tta), level)


def chip_faces(sc, files: list[str], size: int) -> tuple[list[str], np.ndarray]:
    """UTKFace chips of a scan by member path, decoded at ``size`` (unreadable and unknown ones left out)."""
    wanted = set(files)
    images = load_images(sc, [s for s in sc.samples if s.member in wanted], size, progress=False)
    return [s.member for s in images.samples], images.pixels


def check_folds(folders: list[str], fingerprint: str, data: str) -> dict[int, Path]:
    """fold -> the checkpoint that held it out, when the folders hold out each of k folds exactly once and were
    all trained on the data audited (``fingerprint``); else AuditError saying what is wrong."""
    held: dict[int, list[Path]] = {}
    ks = {}
    for folder in map(Path, folders):
        meta = read_meta(folder)
        tc = meta.get("train_config", {})
        if int(tc.get("holdout_fold", -1)) < 0:
            raise AuditError(ERR_NOT_HELD_OUT.format(path=folder))
        rule = meta.get("holdout", {}).get("rule", FOLD_RULE)
        if rule != FOLD_RULE:
            raise AuditError(ERR_FOLD_RULE.format(path=folder, rule=rule))
        if meta.get("dataset_fingerprint") != fingerprint:
            raise AuditError(ERR_FOLD_DATA.format(path=folder, theirs=str(meta.get("dataset_fingerprint")),
                                                  data=data, ours=fingerprint))
        ks[folder] = int(tc["folds"])
        held.setdefault(int(tc["holdout_fold"]), []).append(folder)
    if len(set(ks.values())) > 1:
        raise AuditError(ERR_FOLD_COUNTS.format(counts=", ".join(f"{p.name}: {k}" for p, k in ks.items())))
    k = next(iter(ks.values()))
    if sorted(held) != list(range(k)) or any(len(v) > 1 for v in held.values()):
        listed = ", ".join(str(f) for f in sorted(f for f, v in held.items() for _ in v))
        raise AuditError(ERR_FOLD_COVERAGE.format(held=listed, k=k, last=k - 1))
    return {f: v[0] for f, v in held.items()}


def _heads(folders: list[str | Path]) -> bool:
    """Whether the checkpoints' age heads are distributions (all or none: ERR_MIXED_HEADS), from meta.json."""
    kinds = {Path(f): distribution_head(f) for f in folders}
    if len(set(kinds.values())) > 1:
        raise AuditError(ERR_MIXED_HEADS.format(kinds=", ".join(
            f"{p.name}: {'distribution' if k else 'regression'}" for p, k in kinds.items())))
    return next(iter(kinds.values()))


def _score(jobs: list[tuple[str | Path, list[str], pd.DataFrame | None]], sc, cache_dir,
           tta: bool) -> tuple[pd.DataFrame, list[str]]:
    """Each checkpoint's images (members of the scan) scored: (the predictions table, notes). A job with
    ``known`` predictions (_known) takes its images' rows from them, the model loaded only for a table written
    before label tails existed (a note says so); images without a row are left out with a note. A job without
    goes through its checkpoint, which writes the label tails as evaluation does."""
    from ..evaluation.evaluate import predictions_frame, with_label_tails
    from ..models.checkpoint import load_checkpoint

    distribution = _heads([folder for folder, _, _ in jobs])
    tables, notes, decoded = [], [], {}

    def images(ckpt):  # the scan decoded at the checkpoint's size, once, and where each member is in it
        size = ckpt.preprocess.cache_size
        if size not in decoded:
            im = cached_images(sc, size, cache_dir)
            decoded[size] = im, {s.member: i for i, s in enumerate(im.samples)}
        return decoded[size]

    for folder, members, known in jobs:
        if known is None:
            ckpt = load_checkpoint(folder)
            im, where = images(ckpt)
            idx = np.array([where[m] for m in members if m in where], np.int64)
            tables.append(complete(predictions_frame(ckpt, im, idx, tta)))
            continue
        table = complete(known[known["file"].isin(set(members))].reset_index(drop=True))
        if len(table) < len(members):
            notes.append(NOTE_NOT_PREDICTED.format(n=len(members) - len(table), total=len(members)))
        if distribution and len(table) and not has_label_tails(table):
            notes.append(NOTE_NO_TAILS.format(what="the predictions", path=folder))
            ckpt = load_checkpoint(folder)
            im, where = images(ckpt)
            table = table[table["file"].isin(where)].reset_index(drop=True)
            found = table["found"].to_numpy(bool)
            dist = age_distributions(ckpt, im.pixels[[where[f] for f in table["file"][found]]], tta)
            table = with_label_tails(ckpt, table, dist, found)
        tables.append(table)
    return pd.concat(tables, ignore_index=True), notes


def _known(args, sc, splits: tuple[str, ...]) -> pd.DataFrame | None:
    """The predictions the checkpoint's images are read from: --predictions; else its own files for ``splits``
    when it has them and the data is the data they were scored on (the same fingerprint); else None: score the
    images through the model."""
    from ..evaluation.evaluate import scored_fingerprint

    if args.predictions:
        return load_predictions(path=args.predictions)
    meta = read_meta(args.checkpoint)
    if (splits and all(predictions_path(args.checkpoint, s).is_file() for s in splits)
            and all(scored_fingerprint(meta, s) == sc.fingerprint for s in splits)):
        return pd.concat([load_predictions(args.checkpoint, s) for s in splits], ignore_index=True)
    return None


def _utkface(args) -> tuple[pd.DataFrame, list[str], int]:
    """(the predictions table audited, notes, how many images were left out as trained on)."""
    split = args.split or "val"
    if split == "train" and not args.folds:
        raise AuditError(ERR_TRAIN_NEEDS_FOLDS.format(split=split))
    if split != "train" and not args.checkpoint:
        raise AuditError(ERR_NEEDS_CHECKPOINT.format(split=split))
    sc = scan(args.data)
    if args.checkpoint:  # a checkpoint trained on another split rule (train.identity): its own val and test
        sc = with_splits(sc, manifest_splits(args.checkpoint))
    folds = check_folds(args.folds.split(","), sc.fingerprint, args.data) if args.folds else {}
    jobs, notes, covered, left_out = [], [], set(), 0
    if folds:  # each train image through the checkpoint that held its fold out
        train = [s for s in sc.samples if s.split == "train"]
        covered = {s.member for s in train}
        jobs += [(p, [s.member for s in train if fold_of(s.name, len(folds)) == f], None)
                 for f, p in sorted(folds.items())]
    if split in OWN_SPLITS:
        members = [s.member for s in sc.samples if s.split == split]
        jobs.append((args.checkpoint, members, _known(args, sc, (split,))))
    elif split == "all":  # every image the checkpoint never trained on, by its manifest (else by the split rule)
        seen = trained_on(args.checkpoint)
        trained = [image_key(s.name) in seen if seen is not None else s.split == "train" for s in sc.samples]
        members = [s.member for s, t in zip(sc.samples, trained, strict=True) if not t and s.member not in covered]
        left_out = sum(t and s.member not in covered for s, t in zip(sc.samples, trained, strict=True))
        if left_out:
            notes.append(NOTE_TRAINED_ON.format(n=left_out, total=len(sc.samples), path=args.checkpoint,
                                                how=MANIFEST_HOW if seen is not None else SPLIT_HOW))
        if members:
            jobs.append((args.checkpoint, members, _known(args, sc, OWN_SPLITS)))
    if not any(members for _, members, _ in jobs):
        raise AuditError(ERR_TRAIN_NEEDS_FOLDS.format(split=split) if left_out else
                         ERR_NO_IMAGES.format(split=split, path=args.data))
    table, more = _score(jobs, sc, args.cache_dir, args.tta)
    return table, notes + more, left_out


def _labelled(args, fmt: str) -> tuple[pd.DataFrame, list[str], int]:
    from ..evaluation.evaluate import dataset_frame
    from ..models.checkpoint import load_checkpoint

    if args.split not in (None, "all"):
        raise AuditError(ERR_NO_SPLITS.format(path=args.data, format=fmt))
    if args.folds:
        raise AuditError(ERR_FOLDS_UTKFACE.format(path=args.data, format=fmt))
    notes = []
    if args.predictions:
        table = load_predictions(path=args.predictions)
        if has_label_tails(table) or not distribution_head(args.checkpoint):
            return table, notes, 0
        notes.append(NOTE_NO_TAILS.format(what=args.predictions, path=args.checkpoint))
    ckpt = load_checkpoint(args.checkpoint)
    ds = read_dataset(args.data, args.labels, args.format, args.columns)
    crops = dataset_crops(ds, ckpt.preprocess.cache_size, args.cache_dir)
    return dataset_frame(ckpt, ds, crops, args.tta), notes, 0


def summary(audit: pd.DataFrame, top: int) -> dict:
    """The JSON report: the rules, the counts, how calibrated the age tails look, and the top suspects."""
    tails = audit["age_tail"].to_numpy(np.float64)
    flagged = audit[audit["flagged"]]
    shown = flagged if top <= 0 else flagged.head(top)
    cols = [c for c in ("file", "suspect", "score", "p_label", "p_set", "reason", "age", "age_bin", "gender",
                        "pred_age", "pred_age_bin", "p_female", "verdict") if c in audit]
    return {"n": len(audit), "age_method": audit.attrs.get("age_method"), "age_source": audit.attrs.get("age_source"),
            "level": audit.attrs.get("level"),
            "gender_thresholds": audit.attrs.get("thresholds"), "suspects": counts(audit),
            "expected_age_false_alarms_if_calibrated": round(audit.attrs.get("level", 0) * len(audit), 1),
            "age_tail_share": {str(a): float(np.mean(tails <= a)) if len(tails) else None for a in (0.01, 0.1, 0.5)},
            "images": json.loads(shown[cols].to_json(orient="records"))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m agegender.audit", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", help="checkpoint folder: scores val / test images and other datasets")
    p.add_argument("--data", required=True, help="the images: folder, .zip or .tar.gz (or the labels file)")
    p.add_argument("--labels", help="labels file (CSV or Parquet); file paths in it are relative to --data")
    p.add_argument("--format", help="utkface | fairface | csv (default: guessed)")
    p.add_argument("--columns", help="column mapping of format csv (see agegender.evaluation.evaluate)")
    p.add_argument("--split", choices=("train", "val", "test", "all"),
                   help="UTKFace only; default val. all: every image the checkpoint did not train on (its "
                        "manifest.csv), and with --folds the train split too")
    p.add_argument("--predictions", help="the images' predictions CSV (python -m agegender.evaluate --out), read "
                                         "instead of running the model; default: the checkpoint's own for val / test")
    p.add_argument("--folds", help="comma-separated checkpoints trained with --holdout-fold: score train images")
    p.add_argument("--json", required=True, help="write the report here")
    p.add_argument("--csv", help="write every audited image, ranked, here")
    p.add_argument("--top", type=int, default=50, help="suspects listed in the JSON (0: all)")
    p.add_argument("--level", type=float, default=DEFAULT_LEVEL, help="age: the tail probability that flags")
    p.add_argument("--review", help="a review file whose verdicts to add (default: the checkpoint's, for val / test)")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args(argv)
    from ..models.runtime import set_threads

    set_threads(args.threads)
    t0 = time.perf_counter()
    try:
        fmt = resolve(args.data, args.labels, args.format, args.columns)[2]
        if fmt != "utkface" and not args.checkpoint:
            raise AuditError(ERR_NEEDS_CHECKPOINT_SET.format(path=args.data, format=fmt))
        table, notes, left_out = _utkface(args) if fmt == "utkface" else _labelled(args, fmt)
        audit = audit_table(table, None, args.level)
        own = fmt == "utkface" and args.checkpoint and (args.split or "val") in OWN_SPLITS
        review = args.review or (review_path(args.checkpoint, args.split or "val") if own else None)
        audit = with_reviews(audit, read_review(review)) if review else audit.assign(verdict="")
    except (AuditError, CheckpointError, DatasetError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    report = {"checkpoint": args.checkpoint, "folds": args.folds.split(",") if args.folds else None,
              "data": str(args.data), "split": args.split or ("val" if fmt == "utkface" else "all"), "format": fmt,
              "predictions": args.predictions, "left_out_trained_on": left_out, "notes": notes,
              **summary(audit, args.top), "seconds": round(time.perf_counter() - t0, 1)}
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    if args.csv:
        audit.to_csv(args.csv, index=False)
    c = report["suspects"]
    print(f"{report['n']} faces audited in {report['seconds']:.0f} s: {c['gender']} gender and {c['age']} age "
          f"suspects (age: {report['age_method']}, level {args.level}; "
          f"~{report['expected_age_false_alarms_if_calibrated']} expected by chance if calibrated)")
    for r in report["images"][:10]:
        print(f"  {r['score']:.4f} {r['suspect']:6} {r['file']}: {r['reason']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
