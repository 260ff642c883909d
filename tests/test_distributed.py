"""torchrun (DDP on gloo) and hard kills, on tiny generated data, in subprocesses."""

import json
import os
import random
import subprocess
import sys
import time

import pandas as pd
from safetensors import safe_open

from agegender.checkpoint import load_checkpoint
from agegender.training import STATE

from .conftest import ROOT, cli_args, tiny_config

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def torchrun(args, n=2):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
           str(ROOT / "train.py"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=ENV, cwd=ROOT)


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


def test_two_processes_train_write_once_and_resume(tiny_data, tmp_path, uninterrupted):
    out = tmp_path / "ddp"
    cfg = tiny_config(tiny_data, out, epochs=2, threads=1)
    r = torchrun(cli_args(cfg) + ["--max-minutes", "0.000001"])
    assert r.returncode != 0 and "time budget ran out before the first epoch" in r.stderr, r.stderr[-3000:]
    assert (out / STATE).exists()
    r = torchrun(cli_args(cfg) + ["--resume", "--max-minutes", "0"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("checkpoint written to") == 2  # both ranks finish ...
    hist = pd.read_csv(out / "history.csv")  # ... but one wrote: one row per epoch
    ref = pd.read_csv(uninterrupted / "history.csv")
    assert list(hist["epoch"]) == [1, 2] and list(hist["step"]) == list(ref["step"])
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    ckpt = load_checkpoint(out)
    one, two = load_checkpoint(uninterrupted).meta["metrics"]["val"], ckpt.meta["metrics"]["val"]
    assert abs(two["age_mae"] - one["age_mae"]) < 0.25 * one["age_mae"], (one, two)


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
    from agegender.evaluate import main as evaluate_main

    assert evaluate_main(["--checkpoint", str(tiny_checkpoint), "--data", str(tiny_data), "--split", "all",
                          "--out", str(single), "--cache-dir", str(tiny_checkpoint.parent / "cache")]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(out), pd.read_csv(single))
