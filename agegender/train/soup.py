"""Weight averaging ("model soup"): one checkpoint whose weights are the mean of runs that share a start.

    python -m agegender.soup A B [C ...] --out DIR [--weights 1,1] [--data UTKFACE_PATH]

Why: runs fine-tuned from the same pretrained weights (here dlib's face trunk, the heads drawn from the same seed)
stay in one basin of the loss, so the mean of their weights is itself a model, and in published comparisons one
that kept the runs' held-out accuracy and held up better than any of them when the data shifted (Wortsman et al.,
"Model soups", ICML 2022; Wortsman et al., "Robust fine-tuning of zero-shot models", CVPR 2022). It costs no
training and is one ordinary checkpoint: the dashboard, Grad-CAM and the report read it like any other.

Checked first, each with its own message: the runs are the same network with the same heads, age scaling,
labels and preprocessing (else their mean means nothing), and they share one split (their manifest.csv are the
same): a soup of runs whose validation images differ would hold weights trained on part of its validation split.
Not checked: that they started from the same weights. Runs from different random starts average to a poor model,
which its validation figures show at once, so score it (--data) before trusting it.

The soup's meta.json is its first run's, less what belonged to that run's weights (figures, age interval,
external check, epochs), plus ``soup``: each run's name, weights sha256, share, training settings and figures;
each run's history.csv is kept as history-1.csv, history-2.csv, ... for the Training page.
meta.json is written last, so a stopped command leaves a folder that is not a checkpoint, never a half one.
With --data (the UTKFace the runs trained on) the soup's age interval is calibrated on val, then val and test
are scored with it, as evaluation.intervals and train.py's last step do; without it, it prints those two commands.
"""

from __future__ import annotations

import argparse
import copy
import logging
import shutil
import sys
import time
from pathlib import Path

import torch

from ..data.utkface import MANIFEST
from ..meta import WEIGHTS, atomic_write, soup_runs, write_meta
from ..models.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_weights
from .runstate import HISTORY

SAME = ("arch", "dropout", "age_bins", "age_offset", "age_scale", "labels", "preprocess", "split_rule")
PER_RUN = ("metrics", "age_interval", "external", "best_epoch", "epochs_run", "finished", "train_minutes",
           "init_from", "soup", "balance")
KEPT_PER_RUN = ("weights_sha256", "train_config", "dataset_fingerprint", "best_epoch", "epochs_run",
                "train_minutes", "balance", "init_trunk", "external")

ERR_TOO_FEW = "a soup needs at least two checkpoints, got {n}"
ERR_DIFFER = "cannot average {a} and {b}: their {key} differ ({va} against {vb})"
ERR_NO_MANIFEST = ("{path} has no " + MANIFEST + ", so its split is unknown and the soup's validation figures "
                   "could not be trusted: restore the file")
ERR_SPLIT = ("cannot average {a} and {b}: their " + MANIFEST + " differ, so one run's validation images may be "
             "the other's training images")
ERR_SHARES = "--weights needs one positive number per checkpoint ({n}), not {given!r}"
ERR_OUT = "{out} already exists and is not empty: give a new folder (a soup never writes over anything)"
SCORE = ("python -m agegender.intervals --checkpoint {out} --data UTKFACE_PATH\n"
         "python -m agegender.evaluate --checkpoint {out} --data UTKFACE_PATH --into-checkpoint")

def shares_of(weights: list[float] | None, n: int) -> list[float]:
    """Each run's share of the mean, summing to 1 (equal shares by default)."""
    weights = [1.0] * n if weights is None else list(weights)
    if len(weights) != n or not all(w > 0 for w in weights):
        raise CheckpointError(ERR_SHARES.format(n=n, given=weights))
    total = sum(weights)
    return [w / total for w in weights]


def check_compatible(ckpts: list[Checkpoint]) -> None:
    """CheckpointError naming the first pair of runs that cannot be averaged, and why."""
    if len(ckpts) < 2:
        raise CheckpointError(ERR_TOO_FEW.format(n=len(ckpts)))
    first = ckpts[0]
    for c in ckpts:
        if not (c.path / MANIFEST).is_file():
            raise CheckpointError(ERR_NO_MANIFEST.format(path=c.path))
    split = (first.path / MANIFEST).read_bytes()
    for c in ckpts[1:]:
        for key in SAME:
            va, vb = first.meta.get(key), c.meta.get(key)
            if va != vb:
                raise CheckpointError(ERR_DIFFER.format(a=first.path, b=c.path, key=key, va=va, vb=vb))
        if (c.path / MANIFEST).read_bytes() != split:
            raise CheckpointError(ERR_SPLIT.format(a=first.path, b=c.path))


def average_state(states: list[dict[str, torch.Tensor]], shares: list[float]) -> dict[str, torch.Tensor]:
    """The shares-weighted mean of each floating-point tensor, summed in float64; counters (batch norm's
    num_batches_tracked) are the first run's, as they are not weights."""
    out = {}
    for key, first in states[0].items():
        if first.is_floating_point():
            mean = shares[0] * first.double()  # not sum(), whose int 0 start would turn -0.0 into +0.0
            for share, state in zip(shares[1:], states[1:], strict=True):
                mean += share * state[key].double()
            out[key] = mean.to(first.dtype)
        else:
            out[key] = first.clone()
    return out


def soup_meta(ckpts: list[Checkpoint], shares: list[float]) -> dict:
    """The first run's meta less its per-run keys, plus the record of every run in the soup."""
    meta = {k: copy.deepcopy(v) for k, v in ckpts[0].meta.items() if k not in PER_RUN}
    runs = []
    for c, share in zip(ckpts, shares, strict=True):
        run = {"name": c.path.name, "share": share}
        run.update({k: copy.deepcopy(c.meta[k]) for k in KEPT_PER_RUN if k in c.meta})
        run["figures"] = {s: {k: m.get(k) for k in ("n", "age_mae", "gender_accuracy", "tta")}
                          for s, m in (c.meta.get("metrics") or {}).items()}
        runs.append(run)
    meta["soup"] = {"method": "weighted mean of the weights (agegender.train.soup)", "runs": runs}
    if all(c.meta.get("balance") for c in ckpts):  # the report and model card read a balanced soup as balanced
        meta["balance"] = copy.deepcopy(ckpts[0].meta["balance"])
    return meta


def make_soup(folders: list[str | Path], out: str | Path, weights: list[float] | None = None) -> Path:
    """Average the checkpoints in ``folders`` into a new checkpoint folder ``out``; returns it."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CheckpointError(ERR_OUT.format(out=out))
    ckpts = [load_checkpoint(f) for f in folders]  # checksums and shapes, each with its own message
    shares = shares_of(weights, len(ckpts))
    check_compatible(ckpts)
    model = ckpts[0].model
    model.load_state_dict(average_state([c.model.state_dict() for c in ckpts], shares))
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(out / MANIFEST) as tmp:
        shutil.copyfile(ckpts[0].path / MANIFEST, tmp)
    meta = soup_meta(ckpts, shares)
    for i, (c, run) in enumerate(zip(ckpts, meta["soup"]["runs"], strict=True)):
        if (c.path / HISTORY).is_file():  # the Training page shows each run's curves
            run["history"] = f"history-{i + 1}.csv"
            with atomic_write(out / run["history"]) as tmp:
                shutil.copyfile(c.path / HISTORY, tmp)
    meta["weights_sha256"] = save_weights(model, out / WEIGHTS)
    write_meta(out, meta)
    return out


def run_histories(folder: str | Path, meta: dict) -> list[tuple[dict, Path]]:
    """A soup's runs whose history.csv it keeps, each with the file's path; [] for a checkpoint that is no soup."""
    return [(r, Path(folder) / r["history"]) for r in soup_runs(meta)
            if r.get("history") and (Path(folder) / r["history"]).is_file()]


def score(out: Path, data: str, cache_dir=None) -> dict:
    """The age interval calibrated on val (agegender.evaluation.intervals), then val and test scored into the soup with
    their intervals (train.py's last step)."""
    from ..data.utkface import cached_images, scan
    from ..evaluation.evaluate import evaluate_into_checkpoint
    from ..evaluation.intervals import calibrate_checkpoint, write_calibration

    cal, measured = calibrate_checkpoint(out, data, cache_dir=cache_dir)
    write_calibration(out, cal)
    ckpt = load_checkpoint(out)
    sc = scan(data)
    images = cached_images(sc, ckpt.preprocess.cache_size, cache_dir)
    results = evaluate_into_checkpoint(out, images, sc.fingerprint)
    return {**results, "interval": measured}


def main(argv: list[str] | None = None) -> int:
    from ..data.utkface import DatasetError
    from ..models.runtime import set_threads

    p = argparse.ArgumentParser(prog="python -m agegender.soup", description=__doc__.split("\n")[0])
    p.add_argument("checkpoints", nargs="+", help="checkpoint folders, trained from the same start on one split")
    p.add_argument("--out", required=True, help="the new checkpoint folder (must not exist, or be empty)")
    p.add_argument("--weights", default=None, help="each run's weight, comma-separated (default: equal)")
    p.add_argument("--data", default=None,
                   help="the UTKFace the runs trained on: score the soup on val and test and calibrate its interval")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    set_threads(args.threads)
    t0 = time.perf_counter()
    try:
        weights = None
        if args.weights is not None:
            try:
                weights = [float(w) for w in args.weights.split(",")]
            except ValueError:
                raise CheckpointError(ERR_SHARES.format(n=len(args.checkpoints), given=args.weights)) from None
        out = make_soup(args.checkpoints, args.out, weights)
        print(f"{out}: the mean of {len(args.checkpoints)} checkpoints ({time.perf_counter() - t0:.1f} s)")
        if args.data is None:
            print("calibrate its age interval and score it on UTKFace val and test with:\n"
                  + SCORE.format(out=out))
            return 0
        results = score(out, args.data, args.cache_dir)
    except (CheckpointError, DatasetError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"age interval calibrated on val: coverage {results['interval']['coverage']:.1%}, "
          f"median width {results['interval']['median_width']:.1f} y")
    return 0


if __name__ == "__main__":
    sys.exit(main())
