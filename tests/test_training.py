import csv
import json

import numpy as np
import pandas as pd
import pytest
from safetensors.torch import load_file

from agegender import training
from agegender.checkpoint import load_checkpoint
from agegender.config import TrainConfig
from agegender.training import STATE, TrainingError, lr_at, train
from train import main as train_main

from .conftest import tiny_config


def test_smoke_run_writes_a_complete_checkpoint(tiny_checkpoint):
    files = {p.name for p in tiny_checkpoint.iterdir()}
    assert {"model.safetensors", "meta.json", "history.csv", "manifest.csv",
            "predictions-val.csv", "predictions-test.csv"} <= files
    assert STATE not in files  # a finished run leaves no resume state behind
    meta = json.loads((tiny_checkpoint / "meta.json").read_text())
    for key in ("arch", "preprocess", "age_offset", "age_scale", "labels", "train_config",
                "dataset_fingerprint", "split_rule", "metrics", "code_version", "weights_sha256"):
        assert key in meta
    assert meta["metrics"]["val"]["n"] == len(pd.read_csv(tiny_checkpoint / "predictions-val.csv"))
    rows = list(csv.DictReader(open(tiny_checkpoint / "history.csv")))
    assert len(rows) == 1 and float(rows[0]["val_age_mae"]) > 0
    weights = load_file(str(tiny_checkpoint / "model.safetensors"))
    assert weights["age_head.weight"].dtype.itemsize == 2  # shipped as fp16


def test_predictions_are_identical_after_reload(tiny_checkpoint, tiny_data, tmp_path):
    from agegender.evaluate import main as evaluate_main

    out = tmp_path / "again.csv"
    assert evaluate_main(["--checkpoint", str(tiny_checkpoint), "--data", str(tiny_data), "--split", "val",
                          "--out", str(out), "--cache-dir", str(tiny_checkpoint.parent / "cache")]) == 0
    before = pd.read_csv(tiny_checkpoint / "predictions-val.csv")
    after = pd.read_csv(out)
    pd.testing.assert_frame_equal(before, after)


def _weights(path):
    return {k: v.float().numpy() for k, v in load_file(str(path / "model.safetensors")).items()}


def test_resume_after_a_crash_matches_an_uninterrupted_run(tiny_data, tmp_path, monkeypatch, uninterrupted):
    real = training.preprocess
    calls = {"n": 0}

    def crash_on_eleventh(*a, **k):
        calls["n"] += 1
        if calls["n"] == 11:
            raise KeyboardInterrupt("simulated kill")
        return real(*a, **k)

    out = tmp_path / "run"
    monkeypatch.setattr(training, "preprocess", crash_on_eleventh)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(tiny_data, out, epochs=2, save_every_minutes=0))
    assert (out / STATE).exists() and not (out / "meta.json").exists()
    # what a SIGKILL inside a save leaves: our own temporary name, and the one safetensors writes through
    leftovers = [out / f".{STATE}.tmp4242", out / ".tmpAb12Cd"]
    for p in leftovers:
        p.write_bytes(b"half a file")
    monkeypatch.setattr(training, "preprocess", real)
    train(tiny_config(tiny_data, out, resume=True))
    assert not [p for p in leftovers if p.exists()]
    a, b = _weights(uninterrupted), _weights(out)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_time_budget_stops_and_resume_finishes(tiny_data, tmp_path, uninterrupted):
    out = tmp_path / "run"
    with pytest.raises(TrainingError, match="time budget ran out before the first epoch finished"):
        train(tiny_config(tiny_data, out, epochs=2, max_minutes=1e-6))
    assert (out / STATE).exists()
    train(tiny_config(tiny_data, out, resume=True, max_minutes=0))
    assert not (out / STATE).exists()
    hist = pd.read_csv(out / "history.csv")
    assert list(hist["epoch"]) == [1, 2]
    ref = pd.read_csv(uninterrupted / "history.csv")
    assert list(hist["step"]) == list(ref["step"])  # same number of optimiser steps
    load_checkpoint(out)


def test_existing_output_is_never_overwritten(tiny_checkpoint, tiny_data):
    with pytest.raises(TrainingError, match="already holds a checkpoint or a run; pass --resume"):
        train(tiny_config(tiny_data, tiny_checkpoint))


def test_resume_without_state_is_explained(tiny_data, tmp_path):
    with pytest.raises(TrainingError, match="nothing to resume in"):
        train(tiny_config(tiny_data, tmp_path / "x", resume=True))


def test_cli_rejects_unknown_flags_and_reports_errors(tmp_path, capsys):
    with pytest.raises(SystemExit):
        train_main(["--data", "x", "--out", "y", "--learning-rate", "1"])
    assert train_main(["--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "error: dataset not found at" in capsys.readouterr().err


def test_schedule_warms_up_then_decays():
    cfg = TrainConfig(lr=1.0, warmup=0.1)
    lrs = [lr_at(s, 100, cfg) for s in range(100)]
    assert lrs[0] < lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False)) and lrs[-1] < 0.01


def test_balanced_sampling_evens_out_cells_and_is_recorded(tiny_data, tmp_path):
    from agegender.data import cached_images, scan
    from agegender.training import balance_weights

    images = cached_images(scan(tiny_data), 32, tmp_path / "c")
    idx = images.indices("train")
    w, desc = balance_weights(images, idx, power=1.0)
    assert w.sum() == pytest.approx(1.0) and len(w) == len(idx)
    shares = [c["share_of_draws"] for c in desc["by_cell"].values()]
    assert max(shares) == pytest.approx(min(shares), rel=1e-3)  # power 1: every cell drawn alike
    half = balance_weights(images, idx, power=0.5)[1]["by_cell"]
    big = max(half, key=lambda k: half[k]["count"])
    assert half[big]["share_of_draws"] <= half[big]["share_of_data"]
    out = train(tiny_config(tiny_data, tmp_path / "bal", balance="sampling"))
    meta = json.loads((out / "meta.json").read_text())
    assert meta["balance"]["method"] == "sampling" and meta["train_config"]["balance"] == "sampling"
