"""torchrun (DDP on gloo) and hard kills, on tiny generated data, in subprocesses."""

import dataclasses
import json
import os
import random
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from agegender.models.checkpoint import load_checkpoint
from agegender.models.model import ARCHS
from agegender.train.loop import STATE

from .. import bnfree_train
from ..conftest import ROOT, cli_args, tiny_config

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def train_module(args, n=0):
    """tests.bnfree_train (train.py, with a BatchNorm-free test architecture and recorders) with ``args``:
    under torchrun on n processes, or as one plain process for n=0."""
    launch = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}"] if n else []
    cmd = [sys.executable, *launch, "-m", "tests.bnfree_train", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=ENV, cwd=ROOT)


def recording(folder) -> list[str]:
    return ["--record-steps", str(folder), "--record-val", str(folder)]


def assert_whole(out):
    """Every file in the folder is complete: a kill never leaves a half-written one behind."""
    for f in out.iterdir():
        if f.name.startswith("."):
            continue  # a temporary file, not yet renamed into place
        if f.suffix == ".json":
            json.loads(f.read_text())
        elif f.suffix == ".safetensors":
            with safe_open(str(f), "pt") as t:
                assert list(t.keys())
        elif f.suffix == ".csv":
            pd.read_csv(f)


def recorded(folder, rank: int) -> list[dict]:
    """What tests.bnfree_train --record-steps wrote for each optimiser step of one rank, in order."""
    return [load_file(str(p)) for p in sorted(folder.glob(f"rank{rank}-step*.safetensors"))]


def validations(folder, rank: int) -> list[list[float]]:
    return [json.loads(line) for line in (folder / f"rank{rank}-val.jsonl").read_text().splitlines()]


# DDP averages the ranks' gradients, so a step on two halves of a batch is a step on the whole batch only when
# no image's loss depends on another's or on the rank: no BatchNorm (tests.bnfree_train's net), no dropout,
# nothing random in the augmentation, a plain mean loss. And on the CPU: gloo, one process per core.
IN_STEP = dict(arch=bnfree_train.NAME, dropout=0.0, device="cpu", threads=1, aug_scale=0.0, aug_rotate=0.0,
               aug_shift=0.0, aug_flip=False, aug_brightness=0.0, aug_contrast=0.0, aug_saturation=0.0,
               aug_erase=0.0)
STEP_ATOL = 1e-6


def test_two_processes_train_in_step_with_one_write_once_and_resume(tiny_data, tmp_path, monkeypatch):
    out, one = tmp_path / "ddp", tmp_path / "one"
    cfg = tiny_config(tiny_data, out, epochs=2, **IN_STEP)
    solo, duo = tmp_path / "solo", tmp_path / "duo"
    r = train_module(recording(solo) + cli_args(dataclasses.replace(cfg, out=str(one))))
    assert r.returncode == 0, r.stderr[-3000:]
    args = recording(duo) + cli_args(cfg)
    r = train_module(args + ["--max-minutes", "0.000001"], n=2)
    assert r.returncode != 0 and "time budget ran out before the first epoch" in r.stderr, r.stderr[-3000:]
    assert (out / STATE).exists()
    assert len(recorded(duo, 0)) == len(recorded(duo, 1)) == 1  # both ranks stopped together, after one step
    r = train_module(args + ["--resume", "--max-minutes", "0"], n=2)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("checkpoint written to") == 2  # both ranks finish ...
    hist = pd.read_csv(out / "history.csv")  # ... but one wrote: one row per epoch
    assert list(hist["epoch"]) == [1, 2] and list(hist["step"]) == list(pd.read_csv(one / "history.csv")["step"])
    assert not [p for p in out.iterdir() if p.name.startswith(".")] and not (out / STATE).exists()
    monkeypatch.setitem(ARCHS, bnfree_train.NAME, bnfree_train.ARCH)
    load_checkpoint(out)

    # Step by step, across the stop and the resume. The ranks hold the same weights bit for bit: both add the
    # same two gradients (one addition, which commutes) and take the same optimiser step from the same weights.
    # Each rank trains on its half of the one-process batch, and the two runs' weights differ only by the order
    # of fp32 sums (8 images at once, or 4 + 4 then averaged): a few ulps (1e-7 relative) of a gradient, so of an
    # Adam step of at most ~lr = 1e-3, plus at most one rounding flip of a weight per step (6e-8: this net's
    # weights stay below 1, checked below). Over 16 steps that is under 16 * 6e-8 < STEP_ATOL = 1e-6, a thousandth
    # of a step (seen: 1.5e-8).
    ref, rank0, rank1 = recorded(solo, 0), recorded(duo, 0), recorded(duo, 1)
    assert len(ref) == len(rank0) == len(rank1) == hist["step"].iloc[-1]
    weights = [k for k in ref[0] if k.startswith("model.")]
    for step, (a, b0, b1) in enumerate(zip(ref, rank0, rank1, strict=True), 1):
        for k in weights:
            assert a[k].abs().max() < 1 and torch.equal(b0[k], b1[k]), (step, k)
            torch.testing.assert_close(b0[k], a[k], rtol=0, atol=STEP_ATOL, msg=f"step {step}, {k}")
        for k in ("age_scaled", "female"):
            assert torch.equal(torch.cat([b0[k], b1[k]]), a[k]), (step, k)
        # the same per-image arithmetic on 4 images or 8: fp32's default tolerance
        torch.testing.assert_close(torch.cat([b0["x"], b1["x"]]), a["x"])
        torch.testing.assert_close((b0["loss"] + b1["loss"]) / 2, a["loss"])
        assert b0["lr"] == b1["lr"] == a["lr"]
    moved = max((ref[1][k] - ref[0][k]).abs().max().item() for k in weights)
    assert moved > 100 * STEP_ATOL  # one step moves the weights far more than the runs may differ
    # every rank takes its best-epoch and early-stopping decisions from its own validation: they must agree
    assert validations(duo, 0) == validations(duo, 1) and len(validations(duo, 0)) == 2


def test_ranks_validate_alike_with_batchnorm(tiny_data, tmp_path):
    """With BatchNorm the ranks' weights agree but each rank's running statistics come from its own images.
    Every rank still has to validate alike: each takes the best-epoch and early-stopping decisions from its
    own score, and a rank that stops early leaves the other waiting in its next all-reduce."""
    cfg = tiny_config(tiny_data, tmp_path / "ddp", epochs=1, threads=1, device="cpu")
    vals = tmp_path / "vals"
    r = train_module(["--record-val", str(vals), *cli_args(cfg)], n=2)
    assert r.returncode == 0, r.stderr[-3000:]
    assert validations(vals, 0) == validations(vals, 1)


def test_sigkill_at_a_random_point_then_resume(tiny_data, tmp_path, uninterrupted):
    out = tmp_path / "killed"
    cfg = tiny_config(tiny_data, out, epochs=2, threads=1, save_every_minutes=0)
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *cli_args(cfg)], env=ENV, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (out / STATE).exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(random.Random().uniform(0, 2.0))
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.kill()
    proc.wait()
    assert_whole(out)
    r = subprocess.run([sys.executable, str(ROOT / "train.py"), *cli_args(cfg), "--resume"], env=ENV, cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    hist = pd.read_csv(out / "history.csv")
    assert list(hist["step"]) == list(pd.read_csv(uninterrupted / "history.csv")["step"])
    assert not [p for p in out.iterdir() if p.name.startswith(".")] and not (out / STATE).exists()
    load_checkpoint(out)


def test_evaluate_shards_under_torchrun(tiny_checkpoint, tiny_data, tmp_path):
    out = tmp_path / "p.csv"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
           "agegender.evaluate", "--checkpoint", str(tiny_checkpoint), "--data", str(tiny_data), "--split", "all",
           "--out", str(out), "--cache-dir", str(tiny_checkpoint.parent / "cache")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=ENV, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    single = tmp_path / "s.csv"
    from agegender.evaluation.evaluate import main as evaluate_main

    assert evaluate_main(["--checkpoint", str(tiny_checkpoint), "--data", str(tiny_data), "--split", "all",
                          "--out", str(single), "--cache-dir", str(tiny_checkpoint.parent / "cache")]) == 0
    sharded, whole = pd.read_csv(out), pd.read_csv(single)
    scores = ["pred_age", "p_female"]
    pd.testing.assert_frame_equal(sharded.drop(columns=scores), whole.drop(columns=scores))  # same rows, same order
    # Same weights, same images; but each rank scores a batch of half of them, and a kernel may sum in another
    # order for another batch size (batch 1 against 8 moves resnet18's outputs by ~1e-6 here). Rounded to
    # 0.01 year and 1e-4, that shows as one unit of the last digit at most.
    for col, unit in zip(scores, (0.01, 1e-4), strict=True):
        np.testing.assert_allclose(sharded[col], whole[col], rtol=0, atol=unit * (1 + 1e-6), err_msg=col)
