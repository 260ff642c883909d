import csv
import json

import numpy as np
import pandas as pd
import pytest
import torch
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


def crash_on_batch(monkeypatch, n: int) -> None:
    """The n-th training batch raises, as a kill would stop the run there."""
    real, calls = training.preprocess, {"n": 0}

    def crashing(*a, **k):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt("simulated kill")
        return real(*a, **k)

    monkeypatch.setattr(training, "preprocess", crashing)


def test_resume_after_a_crash_matches_an_uninterrupted_run(tiny_data, tmp_path, monkeypatch, uninterrupted):
    real = training.preprocess
    out = tmp_path / "run"
    crash_on_batch(monkeypatch, 11)
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
    from agegender.balance import groups, parse_by, sampling_weights
    from agegender.data import cached_images, scan

    images = cached_images(scan(tiny_data), 32, tmp_path / "c")
    by = parse_by("race,gender,age_bucket")
    cell, names = groups(images.labels(images.indices("train")), by)
    w, desc = sampling_weights(cell, names, by, power=1.0)
    assert w.sum() == pytest.approx(1.0) and len(w) == len(cell)
    shares = [c["share_of_draws"] for c in desc["by_cell"].values()]
    assert max(shares) == pytest.approx(min(shares), rel=1e-3)  # power 1: every cell drawn alike
    half = sampling_weights(cell, names, by, power=0.5)[1]["by_cell"]
    big = max(half, key=lambda k: half[k]["count"])
    assert half[big]["share_of_draws"] <= half[big]["share_of_data"]
    out = train(tiny_config(tiny_data, tmp_path / "bal", balance="sampling"))
    meta = json.loads((out / "meta.json").read_text())
    assert meta["balance"]["method"] == "sampling" and meta["train_config"]["balance"] == "sampling"


def test_cells_are_named_and_numbered_consistently():
    from agegender.balance import groups, parse_by

    labels = {"age": np.array([1.0, 25, 25, 80]), "gender": np.array([0.0, 1, 1, 0]), "race": np.array([2, 0, 0, 4])}
    cell, names = groups(labels, parse_by("race,age_bucket"))
    assert len(names) == 5 * 9 and cell[1] == cell[2] != cell[0]
    assert [names[c] for c in cell] == ["Asian / 0-2", "White / 20-29", "White / 20-29", "Others / 70+"]
    cell, names = groups(labels, parse_by("gender"))
    assert names == ["male", "female"] and list(cell) == [0, 1, 1, 0]
    for bad in ("", "race,race", "ethnicity"):
        with pytest.raises(ValueError, match="--balance-by takes"):
            parse_by(bad)


def test_loss_weights_follow_each_cells_error_per_head():
    from agegender.balance import loss_weights

    # cells: age error sum, gender loss sum, count. Cell 0 is twice the average age error, cell 2 too rare.
    stats = np.array([[200.0, 10, 20], [100, 40, 40], [50, 50, 5]])
    w = loss_weights(stats, power=1.0)
    overall_age, overall_gender = 350 / 65, 100 / 65
    assert w[0, 0] == pytest.approx(10 / overall_age) and w[1, 0] == pytest.approx(2.5 / overall_age)
    assert w[0, 1] == pytest.approx(0.5 / overall_gender) and w[1, 1] == pytest.approx(1.0 / overall_gender)
    assert list(w[2]) == [1.0, 1.0]  # 5 images: too few to act on
    assert np.all(loss_weights(stats, power=0.0) == 1.0)  # power 0 is plain training
    assert w[0, 0] > 1 > w[0, 1]  # the heads are weighted separately


def test_loss_weights_within_strata_compare_each_cell_with_its_own_stratum():
    from agegender.balance import groups, loss_weights, parse_by, strata_of_cells

    # two strata (young, old): each holds an easy and a hard cell; old cells are all harder than young ones
    stats = np.array([[20.0, 1, 20], [40, 1, 20], [200, 1, 20], [400, 1, 20]])
    strata = np.array([0, 0, 1, 1])
    w = loss_weights(stats, power=1.0, strata=strata)
    assert w[:, 0] == pytest.approx([2 / 3, 4 / 3, 2 / 3, 4 / 3])  # against 1.5 and 15, not the overall 8.25
    plain = loss_weights(stats, power=1.0)
    assert plain[0, 0] < 0.2 and plain[3, 0] > 2  # overall: the young cells all but vanish

    labels = {"race": np.array([0, 1, 0, 2]), "gender": np.array([0, 0, 1, 1]), "age": np.array([1, 25, 25, 80])}
    by = parse_by("race,age_bucket")
    cell, names = groups(labels, by)
    st = strata_of_cells(labels, by, "age_bucket")
    bucket, _ = groups(labels, ("age_bucket",))
    assert len(st) == len(names) and np.array_equal(st[cell], bucket)
    with pytest.raises(ValueError, match="--balance-within needs --balance loss and one of at least two"):
        strata_of_cells(labels, ("race",), "race")
    for method, by in (("loss", "race"), ("sampling", "race,age_bucket")):
        with pytest.raises(ValueError, match="--balance-within needs --balance loss"):
            TrainConfig(data="d", out="o", balance=method, balance_by=by, balance_within="age_bucket").validate()
    TrainConfig(data="d", out="o", balance="loss", balance_by="race,age_bucket", balance_within="age_bucket").validate()


def test_loss_balancing_within_a_factor_is_recorded(tiny_data, tmp_path):
    out = train(tiny_config(tiny_data, tmp_path / "within", balance="loss", balance_by="gender,age_bucket",
                            balance_within="age_bucket", balance_power=1.0, epochs=1))
    bal = json.loads((out / "meta.json").read_text())["balance"]
    assert bal["within"] == "age bucket" and "/ mean of its age bucket) ** power" in bal["rule"]
    assert bal["cells"] == "gender x age bucket" and all(" / " in name for name in bal["by_cell"])


def test_loss_balancing_trains_resumes_bit_exact_and_is_recorded(tiny_data, tmp_path, monkeypatch, uninterrupted):
    cfg = dict(balance="loss", balance_by="gender", balance_power=1.0, epochs=2)
    ref = train(tiny_config(tiny_data, tmp_path / "ref", **cfg))
    meta = json.loads((ref / "meta.json").read_text())
    bal = meta["balance"]
    assert bal["method"] == "loss" and bal["cells"] == "gender" and set(bal["by_cell"]) == {"male", "female"}
    weights = [c["age_weight"] for c in bal["by_cell"].values()]
    assert len(weights) >= 2 and max(weights) > min(weights)  # epoch 1's errors moved the weights ...
    plain, weighted = _weights(uninterrupted), _weights(ref)
    assert any(not np.array_equal(plain[k], weighted[k]) for k in plain)  # ... and the weights moved training
    assert sum(c["count"] for c in bal["by_cell"].values()) == len(pd.read_csv(ref / "manifest.csv").query(
        "split == 'train'"))

    real = training.preprocess
    out = tmp_path / "run"
    crash_on_batch(monkeypatch, 14)  # in epoch two, after the first weights update
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(tiny_data, out, save_every_minutes=0, **cfg))
    monkeypatch.setattr(training, "preprocess", real)
    train(tiny_config(tiny_data, out, resume=True))
    a, b = _weights(ref), _weights(out)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_dldl_age_loss_trains_loads_predicts_and_explains(tiny_data, tmp_path):
    from agegender.explain import explain
    from agegender.model import DistributionAgeHead

    out = train(tiny_config(tiny_data, tmp_path / "dldl", age_loss="dldl"))
    ckpt = load_checkpoint(out)
    assert ckpt.meta["age_bins"] == 121 and isinstance(ckpt.model.age_head, DistributionAgeHead)
    preds = pd.read_csv(out / "predictions-val.csv")
    assert preds["pred_age"].between(0, 120).all() and preds["pred_age"].nunique() > 1
    x = torch.rand(1, 3, 28, 28)
    maps = explain(ckpt.model, x, maps=("older", "female"))
    assert [m.heat.shape for m in maps] == [(28, 28), (28, 28)]
    with pytest.raises(ValueError, match="--age-loss must be smooth_l1, l1 or dldl"):
        TrainConfig(data="d", out="o", age_loss="ordinal").validate()
