"""python -m agegender.faithfulness: are a checkpoint's heat maps faithful, for every group (ROAD against random)?

    python -m agegender.faithfulness --checkpoint DIR --data UTKFACE [--split val|test] [--sample 200] [--json OUT]
    python -m agegender.faithfulness --checkpoint DIR --data PATH --labels FILE [--format F --columns ...]
                                     [--sample 200] --json OUT

UTKFace: the checkpoint's own split as a Source (its predictions file gives the labels, the chips the faces);
the report goes beside the checkpoint (faithfulness-SPLIT.json), where the predict page reads it. Any other
labelled dataset: its found faces (the aligned crops evaluate caches), the report where --json says. An evenly
spread sample of --sample faces; per head, CAM method and group, agegender.explain.faithfulness's figures.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ..data.datasets import add_data_arguments, read_dataset, resolve
from ..data.utkface import DatasetError, evenly_spaced
from ..explain import faithfulness as fa
from ..explain.gradcam import METHODS
from ..fairness import faithful as ff
from ..fairness.groups import age_buckets
from ..labels import GENDERS, bin_label
from ..meta import atomic_write_text
from ..models.checkpoint import CheckpointError, load_checkpoint
from ..models.inference import model_input
from ..models.runtime import set_threads
from ..predictions import OWN_SPLITS
from .evalset import dataset_crops
from .sources import set_faces, source

log = logging.getLogger(__name__)

ERR_NEEDS_JSON = ("a labelled dataset's report goes where --json says (never into the checkpoint folder): add "
                  "--json FAITHFULNESS.json")
ERR_NO_FACES = "no face of {source} could be read: check --data"
ERR_METHOD = "unknown CAM method(s) {names}: use {known}"
ERR_LAYER = "unknown target layer {layer!r}: this checkpoint's are {known}"
GROUP_COLUMNS = ["file", "race", "gender", "age_bucket"]


def _groups(table: pd.DataFrame) -> pd.DataFrame:
    out = table.assign(age_bucket=age_buckets(table["age"], table["age_bin"]))
    return out[[c for c in GROUP_COLUMNS if c in out]].reset_index(drop=True)


def own_faces(checkpoint: str, split: str, data: str, size: int, sample: int) -> tuple[pd.DataFrame, np.ndarray, str]:
    """(a row per face with its groups, the faces, the source's label) of a checkpoint's own split."""
    src = source(checkpoint, split)
    table = evenly_spaced(src.load(), sample)
    faces = src.faces(lambda: data)
    files, pixels = faces.pixels(faces.load(size), list(table["file"]), size)
    kept = table.set_index("file").loc[files].reset_index()
    return _groups(kept), pixels, src.label


def set_faces_of(data: str, labels, fmt, columns, size: int, sample: int, cache_dir
                 ) -> tuple[pd.DataFrame, np.ndarray, str]:
    """The same for a labelled dataset: its found faces, evenly spread."""
    ds = read_dataset(data, labels, fmt, columns)
    crops = dataset_crops(ds, size, cache_dir)
    found = {f for f, ok in zip(crops.files, crops.found, strict=True) if ok}
    records = evenly_spaced([r for r in ds.records if r.file in found], sample)
    files, pixels = set_faces(crops, [r.file for r in records])
    table = pd.DataFrame({
        "file": [r.file for r in records],
        "age": [np.nan if r.age is None else r.age for r in records],
        "age_bin": [bin_label(r.age_bin) if r.age_bin else "" for r in records],
        "gender": [GENDERS[r.gender] for r in records],
        "race": [r.groups.get("race") for r in records]})
    return _groups(table.set_index("file").loc[files].reset_index()), pixels, str(data)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m agegender.faithfulness", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True, help="checkpoint folder")
    add_data_arguments(p)
    p.add_argument("--split", default="test", choices=OWN_SPLITS, help="UTKFace: the checkpoint's own split")
    p.add_argument("--sample", type=int, default=fa.SAMPLE, help="faces, evenly spread over the source")
    p.add_argument("--methods", default=",".join(METHODS), help="CAM methods, comma-separated (default: all)")
    p.add_argument("--layer", help="target layer (default: the checkpoint's first)")
    p.add_argument("--json", help=f"output (default for UTKFace: CHECKPOINT/{ff.FILE.format(split='SPLIT')})")
    p.add_argument("--n-boot", type=int, default=fa.N_BOOT)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--threads", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    set_threads(args.threads)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    t0 = time.perf_counter()
    try:
        if [m for m in methods if m not in METHODS] or not methods:
            raise ff.FaithfulnessError(ERR_METHOD.format(names=[m for m in methods if m not in METHODS],
                                                 known=", ".join(METHODS)))
        utkface = resolve(args.data, args.labels, args.format, args.columns)[2] == "utkface"
        if not utkface and not args.json:
            raise ff.FaithfulnessError(ERR_NEEDS_JSON)
        out = Path(args.json) if args.json else ff.report_path(args.checkpoint, args.split)
        ckpt = load_checkpoint(args.checkpoint)
        layer = args.layer or next(iter(ckpt.model.cam_layers), None)
        if layer not in ckpt.model.cam_layers:
            raise ff.FaithfulnessError(ERR_LAYER.format(layer=layer, known=", ".join(ckpt.model.cam_layers)))
        size = ckpt.preprocess.cache_size
        groups, pixels, label = (
            own_faces(args.checkpoint, args.split, args.data, size, args.sample) if utkface else
            set_faces_of(args.data, args.labels, args.format, args.columns, size, args.sample, args.cache_dir))
        if not len(groups):
            raise DatasetError(ERR_NO_FACES.format(source=label))
    # ValueError (FaithfulnessError among them): also an own split's predictions not written yet
    except (CheckpointError, DatasetError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    step = max(1, len(groups) // 10)
    scores = fa.score_faces(
        ckpt.model, lambda i: model_input(ckpt, pixels[i]), len(groups), {m: METHODS[m] for m in methods}, layer,
        ckpt.scaling.scale, progress=lambda done, n: done % step == 0 and log.info("%d/%d faces", done, n))
    meta = {"checkpoint": str(args.checkpoint), "source": label, "layer": layer,
            "seconds": round(time.perf_counter() - t0, 1)}
    report = fa.build_report(groups, scores, meta, args.n_boot)
    atomic_write_text(out, json.dumps(report, indent=2, allow_nan=False) + "\n")
    for head, h in report["heads"].items():
        for m, r in h["methods"].items():
            o = r["overall"]
            print(f"{head:6s} {m:10s} difference {o['difference']:+.3f} {h['unit']} "
                  f"[{o['difference_lo']:+.3f}, {o['difference_hi']:+.3f}]  "
                  f"{ff.BEATS if r['beats_random'] else ff.NOT_SHOWN}")
    print(f"written to {out}   time: {meta['seconds']:.1f} s")
    return 0
