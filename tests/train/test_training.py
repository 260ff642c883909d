import csv
import dataclasses
import json
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from agegender.models.checkpoint import load_checkpoint
from agegender.train import loop as training
from agegender.train.config import TrainConfig
from agegender.train.loop import STATE, TrainingError, lr_at, train
from agegender.train.runstate import RunState, Stats, partial_writes
from train import main as train_main

from ..conftest import tiny_config


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
    from agegender.evaluation.evaluate import main as evaluate_main

    out = tmp_path / "again.csv"
    assert evaluate_main(["--checkpoint", str(tiny_checkpoint), "--data", str(tiny_data), "--split", "val",
                          "--out", str(out), "--cache-dir", str(tiny_checkpoint.parent / "cache"),
                          "--threads", "1"]) == 0  # training's own (tiny_config's): others may sum in another order
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
    # what a SIGKILL inside a save leaves: atomic_write's temporary names (mkstemp's, and the PID-named ones of
    # earlier versions), and the one safetensors writes through
    leftovers = [Path(tempfile.mkstemp(dir=out, prefix=f".{name}.tmp")[1]) for name in (STATE, "history.csv")]
    leftovers += [out / f".{STATE}.tmp4242", out / ".tmpAb12Cd"]
    for p in leftovers:
        p.write_bytes(b"half a file")
    assert sorted(partial_writes(out)) == sorted(leftovers)
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


# The resume state's bookkeeping as the code before RunState wrote it (keys and layout): still read, and
# written back unchanged.
OLD_INFO = {"epoch": 1, "step_in_epoch": 3, "global_step": 11, "best_score": 21.5, "best_epoch": 1,
            "best_sha256": "ab" * 32, "bad_epochs": 0, "history": [{"epoch": 1, "step": 8}], "elapsed": 12.5,
            "sums": [40.25, 300.5, 17.0, 24.0], "config": dataclasses.asdict(TrainConfig(data="d", out="o")),
            "stopped_early": False, "cell_stats": [[10.5, 2.25, 5.0], [0.0, 0.0, 0.0]],
            "cell_weights": [[1.5, 0.75], [1.0, 1.0]]}


def test_run_state_reads_and_writes_the_resume_format():
    from agegender.train.balance import CellLosses

    state = RunState.from_json(json.loads(json.dumps(OLD_INFO)), CellLosses(2))
    assert (state.epoch, state.step_in_epoch, state.global_step, state.best_epoch) == (1, 3, 11, 1)
    assert state.train == Stats(loss=40.25, age_error=300.5, gender_correct=17.0, images=24.0)
    assert state.train.means() == (40.25 / 24, 300.5 / 24, 17 / 24)
    assert state.cells.sums.dtype == torch.float64 and state.cells.weights.tolist() == [[1.5, 0.75], [1.0, 1.0]]
    config = TrainConfig(**OLD_INFO["config"])
    assert state.to_json(config, elapsed=12.5) == OLD_INFO
    assert json.loads(json.dumps(state.to_json(config, elapsed=12.5))) == OLD_INFO


def test_cell_losses_sum_per_cell_and_weight_the_next_epoch():
    from agegender.train.balance import CellLosses, loss_weights

    cl = CellLosses(3)
    cells = torch.tensor([0, 2, 0, 0])
    age_error, gender_loss = torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([0.5, 0.25, 0.5, 1.0])
    cl.add(cells, age_error, gender_loss)
    cl.add(torch.tensor([1]), torch.tensor([10.0]), torch.tensor([2.0]))
    assert cl.sums.tolist() == [[8.0, 2.0, 3.0], [10.0, 2.0, 1.0], [2.0, 0.25, 1.0]]
    age_w, gender_w = cl.image_weights(cells, torch.device("cpu"))
    assert age_w.dtype == torch.float32 and age_w.tolist() == gender_w.tolist() == [1.0] * 4  # before any epoch ends
    doubled = []
    cl.end_epoch(power=1.0, strata=None, total=lambda v: doubled.append(v) or [2 * x for x in v])  # two ranks alike
    assert doubled == [[8.0, 2.0, 3.0, 10.0, 2.0, 1.0, 2.0, 0.25, 1.0]]
    np.testing.assert_array_equal(cl.weights, loss_weights(2 * cl.sums.numpy(), 1.0))
    age_w, _ = cl.image_weights(torch.tensor([2, 1]), torch.device("cpu"))
    assert age_w.tolist() == torch.tensor(cl.weights[[2, 1], 0], dtype=torch.float32).tolist()
    cl.start_epoch()
    assert cl.sums.abs().sum() == 0 and cl.weights.shape == (3, 2)


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
    from agegender.data.utkface import cached_images, scan
    from agegender.train.balance import groups, parse_by, sampling_weights

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
    from agegender.train.balance import groups, parse_by

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
    from agegender.train.balance import loss_weights

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
    from agegender.train.balance import groups, loss_weights, parse_by, strata_of_cells

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


def _state(out):
    """The fp32 weights and the bookkeeping in the resume state a stopped run left in ``out``."""
    with safe_open(str(out / STATE), "pt") as f:
        weights = {k[len("model."):]: f.get_tensor(k).numpy() for k in f.keys() if k.startswith("model.")}
        return weights, json.loads(f.metadata()["info"])


def crash_before_final_evaluation(monkeypatch) -> None:
    """The run stops once its last epoch's resume state is written, as a kill before the final evaluation
    would: that state holds the last epoch's weights, where model.safetensors holds the best epoch's."""
    from agegender.evaluation import evaluate

    def crashing(*a, **k):
        raise KeyboardInterrupt("simulated kill")

    monkeypatch.setattr(evaluate, "evaluate_into_checkpoint", crashing)


def stopped(monkeypatch, stop, run) -> None:
    """``run()`` stopped by a simulated kill that ``stop(monkeypatch)`` plants, then the plant lifted."""
    stop(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        run()
    monkeypatch.undo()


def test_loss_balancing_trains_resumes_bit_exact_and_is_recorded(tiny_data, tmp_path, monkeypatch):
    cfg = dict(balance="loss", balance_by="gender", balance_power=1.0, epochs=2, save_every_minutes=0)
    ref = train(tiny_config(tiny_data, tmp_path / "ref", **cfg))
    meta = json.loads((ref / "meta.json").read_text())
    bal = meta["balance"]
    assert bal["method"] == "loss" and bal["cells"] == "gender" and set(bal["by_cell"]) == {"male", "female"}
    weights = [c["age_weight"] for c in bal["by_cell"].values()]
    assert len(weights) >= 2 and max(weights) > min(weights)  # the weights a next epoch would use
    assert sum(c["count"] for c in bal["by_cell"].values()) == len(pd.read_csv(ref / "manifest.csv").query(
        "split == 'train'"))
    per_epoch = int(pd.read_csv(ref / "history.csv")["step"][0])  # optimiser steps in an epoch

    # The same run, killed three times and resumed: at the end of epoch 1, in the middle of epoch 2 (after
    # the first weights update) and after epoch 2; it ends bit for bit where the uninterrupted run ended.
    out = tmp_path / "run"
    stopped(monkeypatch, lambda m: crash_on_batch(m, per_epoch + 1), lambda: train(tiny_config(tiny_data, out, **cfg)))
    weighted_1, info = _state(out)
    age_w = [w[0] for w in info["cell_weights"]]
    assert info["epoch"] == 1 and max(age_w) > min(age_w)  # epoch 1's errors set unequal weights for epoch 2
    stopped(monkeypatch, lambda m: crash_on_batch(m, 6), lambda: train(tiny_config(tiny_data, out, resume=True)))
    stopped(monkeypatch, crash_before_final_evaluation, lambda: train(tiny_config(tiny_data, out, resume=True)))
    weighted_2, info = _state(out)
    assert info["epoch"] == 2
    train(tiny_config(tiny_data, out, resume=True))
    a, b = _weights(ref), _weights(out)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    timing = ["epoch_seconds", "train_img_per_s"]
    pd.testing.assert_frame_equal(pd.read_csv(ref / "history.csv", dtype=str).drop(columns=timing),
                                  pd.read_csv(out / "history.csv", dtype=str).drop(columns=timing))

    # The plain run, stopped at the same two epoch ends. The checkpoints' best-epoch weights cannot tell the
    # runs apart (epoch 1 can be the best of both), so compare each epoch's last weights from the resume state.
    plain = tmp_path / "plain"
    plain_cfg = {**cfg, "balance": "none"}
    stopped(monkeypatch, lambda m: crash_on_batch(m, per_epoch + 1),
            lambda: train(tiny_config(tiny_data, plain, **plain_cfg)))
    plain_1, _ = _state(plain)
    stopped(monkeypatch, crash_before_final_evaluation, lambda: train(tiny_config(tiny_data, plain, resume=True)))
    plain_2, _ = _state(plain)
    assert plain_1.keys() == weighted_1.keys() == plain_2.keys() == weighted_2.keys()
    # Epoch 1 weighs every image 1 in both runs: (loss * 1).sum() / n is loss.mean() up to the rounding of one
    # division, which moves each of epoch 1's 8 Adam steps by a few ulps (1.2e-7 near 1): well under 1e-5.
    for k in plain_1:
        np.testing.assert_allclose(weighted_1[k], plain_1[k], rtol=1e-6, atol=1e-5, err_msg=k)
    # Epoch 2 weighs the genders' errors unequally, which turns the gradient: the runs part by a good share of
    # the steps' lr (1e-3 at most), and the BatchNorm statistics with them; 1e-4 is 10 times that tolerance.
    assert max(float(np.abs(weighted_2[k] - plain_2[k]).max()) for k in plain_2) > 1e-4


@pytest.mark.parametrize("age_loss", ["smooth_l1", "l1", "dldl"])
def test_loss_weights_give_the_weighted_mean_of_per_image_gradients(age_loss):
    """compute_step weighs each image's loss per head: its gradient is, head by head, the weights' average of the
    images' own gradients; weights all alike, whatever their value, give the unweighted gradient."""
    from torch import nn

    from agegender.models.model import AgeGenderNet, DistributionAgeHead

    torch.manual_seed(0)
    n, features = 8, 6
    head = DistributionAgeHead(features, 20, 10.0, 5.0) if age_loss == "dldl" else None
    model = AgeGenderNet(nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, features), nn.Tanh()), features,
                         age_head=head)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # the step leaves the model as it is
    x, age, female = torch.randn(n, 3, 4, 4), torch.randn(n), (torch.rand(n) < 0.5).float()
    with torch.no_grad():  # two targets within smooth L1's quadratic zone (0.05) of the prediction
        age[:2] = model(x[:2])[0] + 0.01
    age_w, gender_w = torch.rand(n) * 2 + 0.1, torch.rand(n) * 2 + 0.1
    cfg = TrainConfig(age_loss=age_loss, precision="fp32", age_weight=1.3, gender_weight=0.7)

    def gradient(cfg, i, *w):
        training.compute_step(model, opt, x[i], age[i], female[i], cfg, torch.device("cpu"), *w)
        return torch.cat([p.grad.flatten() for p in model.parameters()])

    every = slice(None)
    weighted = gradient(cfg, every, age_w, gender_w)
    age_only, gender_only = (dataclasses.replace(cfg, age_weight=1.0, gender_weight=0.0),
                             dataclasses.replace(cfg, age_weight=0.0, gender_weight=1.0))
    by_hand = sum(cfg.age_weight * age_w[i] / age_w.sum() * gradient(age_only, slice(i, i + 1))
                  + cfg.gender_weight * gender_w[i] / gender_w.sum() * gradient(gender_only, slice(i, i + 1))
                  for i in range(n))
    # The same fp32 terms summed in another order: each side is off by at most a few ulps of the largest
    # gradient (~0.5, ulp 6e-8); 1e-6 allows 16 of them.
    tol = dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(weighted, by_hand, **tol)
    plain = gradient(cfg, every)
    assert (weighted - plain).abs().max() > 1e-2 * plain.abs().max()  # far outside the tolerance: weights count
    for c in (1.0, 2.5):
        alike = torch.full((n,), c)
        torch.testing.assert_close(gradient(cfg, every, alike, alike), plain, **tol)


def test_dldl_age_loss_trains_loads_predicts_and_explains(tiny_data, tmp_path):
    from agegender.explain.gradcam import explain
    from agegender.models.model import DistributionAgeHead

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


def test_a_converted_trunk_starts_the_run_and_trunk_lr_scales_its_rate(tiny_data, tmp_path):
    from safetensors.torch import save_file

    from agegender.meta import sha256_file
    from agegender.models.dlibnet import DlibResNet

    torch.manual_seed(1)
    start = {k: v.contiguous() for k, v in DlibResNet().state_dict().items()}
    for k in start:  # not the factory's own initialisation, so a run that ignored the file would show
        start[k] = start[k] + 0.01 * torch.randn_like(start[k])
    trunk = tmp_path / "trunk.safetensors"
    save_file(start, str(trunk), {"arch": "dlib-resnet29", "source": "test"})
    out = train(tiny_config(tiny_data, tmp_path / "dlib", arch="dlib-resnet29", init_trunk=str(trunk),
                            trunk_lr=1e-9, lr=1e-2))
    meta = json.loads((out / "meta.json").read_text())
    assert meta["init_trunk"] == {"file": "trunk.safetensors", "sha256": sha256_file(trunk),
                                  "converted_from": {"arch": "dlib-resnet29", "source": "test"}}
    weights = load_file(str(out / "model.safetensors"))
    kept = {k: v for k, v in start.items() if not k.startswith("embed.")}  # dlib's embedding: replaced by the heads
    moved = [k for k, v in kept.items() if not torch.allclose(weights[f"trunk.{k}"].float(), v, atol=2e-3, rtol=2e-3)]
    assert moved == []  # the trunk kept the file's weights (up to fp16): its rate was 1e-9 x --lr
    fresh = train(tiny_config(tiny_data, tmp_path / "dlib2", arch="dlib-resnet29", init_trunk=str(trunk), lr=1e-2))
    conv1 = load_file(str(fresh / "model.safetensors"))["trunk.conv1.weight"].float()
    assert not torch.allclose(conv1, start["conv1.weight"], atol=2e-3, rtol=2e-3)  # at trunk_lr 1 it trains


def test_init_trunk_is_refused_beside_pretrained_and_a_bad_file_is_one_line(tiny_data, tmp_path, capsys):
    with pytest.raises(ValueError, match="--init-trunk and --pretrained"):
        tiny_config(tiny_data, tmp_path / "x", arch="dlib-resnet29", init_trunk="t.safetensors",
                    pretrained=True).validate()
    assert train_main(["--data", str(tiny_data), "--out", str(tmp_path / "y"), "--arch", "dlib-resnet29",
                       "--init-trunk", str(tmp_path / "missing.safetensors"), "--epochs", "1",
                       "--cache-dir", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert "missing.safetensors does not exist" in err and "Traceback" not in err


def test_init_from_starts_every_weight_from_a_checkpoint_and_says_so(tiny_checkpoint, tiny_data, tmp_path):
    out = train(tiny_config(tiny_data, tmp_path / "ft", init_from=str(tiny_checkpoint), lr=1e-12))
    meta = json.loads((out / "meta.json").read_text())
    source = json.loads((tiny_checkpoint / "meta.json").read_text())
    assert meta["init_from"] == {"name": tiny_checkpoint.name, "weights_sha256": source["weights_sha256"],
                                 "epochs": source["train_config"]["epochs"]}
    assert (meta["age_offset"], meta["age_scale"]) == (source["age_offset"], source["age_scale"])
    before, after = _weights(tiny_checkpoint), _weights(out)
    # at a rate of 1e-12 only batch-norm running statistics move; every learnt tensor is the start's
    learnt = [k for k in before if "running_" not in k and "num_batches" not in k]
    assert learnt and all(np.allclose(before[k], after[k], atol=1e-3) for k in learnt)
    fresh = _weights(train(tiny_config(tiny_data, tmp_path / "fresh", lr=1e-12)))
    assert not np.allclose(fresh["age_head.weight"], before["age_head.weight"], atol=1e-3)  # not the factory's init


def test_init_from_refuses_another_geometry_and_a_start_that_trained_on_this_runs_val(
        tiny_checkpoint, tiny_data, tmp_path, capsys):
    import shutil

    with pytest.raises(TrainingError, match="it is resnet18, 0 age bins, 32/28 px; this run is resnet18, 0 age "
                                            "bins, 32/24 px"):
        train(tiny_config(tiny_data, tmp_path / "geom", init_from=str(tiny_checkpoint), input_size=24))
    leaky = tmp_path / "leaky"
    shutil.copytree(tiny_checkpoint, leaky)
    manifest = pd.read_csv(leaky / "manifest.csv")
    manifest["split"] = "train"  # as if it had trained on the whole folder
    manifest.to_csv(leaky / "manifest.csv", index=False)
    n_held = int((pd.read_csv(tiny_checkpoint / "manifest.csv")["split"] != "train").sum())
    with pytest.raises(TrainingError, match=f"it trained on {n_held} of this run's val/test images"):
        train(tiny_config(tiny_data, tmp_path / "leak", init_from=str(leaky)))
    (leaky / "manifest.csv").unlink()
    with pytest.raises(TrainingError, match="it has no manifest.csv"):
        train(tiny_config(tiny_data, tmp_path / "blind", init_from=str(leaky)))
    with pytest.raises(ValueError, match="--init-from sets every weight"):
        tiny_config(tiny_data, tmp_path / "x", init_from=str(tiny_checkpoint), pretrained=True).validate()
    assert train_main(["--data", str(tiny_data), "--out", str(tmp_path / "y"), "--init-from", str(tmp_path / "nope"),
                       "--epochs", "1", "--cache-dir", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert "nope is not a checkpoint folder" in err and "Traceback" not in err


def test_meta_json_describes_the_run_key_by_key(tiny_data, tmp_path):
    """Every key meta.json gets, in its order, with the values the run's options and data call for (apart from
    the measured ones): the options' records come from setup, the run's outcome last."""
    from agegender.data.utkface import FOLD_RULE, SPLIT_RULE, fold_of, scan
    from agegender.labels import AGE_BUCKET_EDGES, GENDERS, RACES
    from agegender.meta import FORMAT, sha256_file
    from agegender.models.preprocess import Preprocess

    cfg = tiny_config(tiny_data, tmp_path / "m", age_loss="dldl", holdout_fold=1, folds=3, balance="sampling")
    out = train(cfg)
    meta = json.loads((out / "meta.json").read_text())
    assert list(meta) == ["format", "code_version", "arch", "dropout", "preprocess", "age_offset", "age_scale",
                          "labels", "train_config", "dataset_fingerprint", "split_rule", "age_bins", "holdout",
                          "balance", "best_epoch", "epochs_run", "finished", "train_minutes", "weights_sha256",
                          "metrics"]
    manifest = pd.read_csv(out / "manifest.csv")
    trained = manifest[(manifest["split"] == "train") & (manifest["file"].map(lambda f: fold_of(f, 3)) != 1)]
    assert 0 < len(trained) < (manifest["split"] == "train").sum()
    assert meta["age_offset"] == pytest.approx(trained["age"].mean(), rel=1e-6)  # the labels are float32
    assert meta["age_scale"] == pytest.approx(trained["age"].std(ddof=0), rel=1e-6)
    cfg.validate()
    assert {k: meta[k] for k in ("format", "arch", "dropout", "preprocess", "labels", "train_config",
                                 "dataset_fingerprint", "split_rule", "age_bins", "holdout")} == {
        "format": FORMAT, "arch": "resnet18", "dropout": 0.0,
        "preprocess": json.loads(json.dumps(Preprocess(cache_size=32, input_size=28).to_dict())),
        "labels": {"gender": list(GENDERS), "race": list(RACES), "age_bucket_edges": list(AGE_BUCKET_EDGES),
                   "gender_head": "logit of P(female)"},
        "train_config": json.loads(json.dumps(dataclasses.asdict(cfg))),
        "dataset_fingerprint": scan(tiny_data).fingerprint, "split_rule": SPLIT_RULE, "age_bins": 121,
        "holdout": {"fold": 1, "folds": 3, "rule": FOLD_RULE, "train_images": len(trained)}}
    assert meta["balance"]["method"] == "sampling"
    assert (meta["best_epoch"], meta["epochs_run"], meta["finished"]) == (1, 1, True)
    assert meta["weights_sha256"] == sha256_file(out / "model.safetensors")


def test_a_run_records_its_external_check_then_its_loss_weights(tiny_data, tmp_path):
    """What only the run's end knows comes after setup's keys: the external check, then --balance loss's weights."""
    from ..conftest import make_dataset

    chips = tmp_path / "chips"
    make_dataset(chips, n=40, seed=3)
    out = train(tiny_config(tiny_data, tmp_path / "m", balance="loss", balance_by="gender", external=str(chips),
                            external_every=1))
    meta = json.loads((out / "meta.json").read_text())
    assert list(meta)[list(meta).index("split_rule"):] == ["split_rule", "external", "balance", "best_epoch",
                                                           "epochs_run", "finished", "train_minutes",
                                                           "weights_sha256", "metrics"]
    assert meta["external"]["last"]["epoch"] == 1 and meta["balance"]["cells"] == "gender"


@pytest.mark.parametrize("field, value, message", [
    ("input_size", 8, "--input-size and --cache-size must each be from 16 to 1024 pixels"),
    ("cache_size", 4096, "--input-size and --cache-size must each be from 16 to 1024 pixels"),
    ("dropout", 1.0, "--dropout is a probability below 1, not 1.0"),
])
def test_a_run_is_refused_before_it_writes_a_checkpoint_the_reader_would_refuse(field, value, message):
    """What meta.json's schema (agegender.metaschema) refuses at load, training refuses at its start."""
    cfg = TrainConfig(data="d", out="o", **{"cache_size": 64, "input_size": 32, field: value})
    with pytest.raises(ValueError) as e:
        cfg.validate()
    assert str(e.value) == message


def test_more_age_bins_than_the_reader_takes_are_refused():
    with pytest.raises(ValueError, match="--age-bins is at most 256, not 300"):
        TrainConfig(data="d", out="o", age_loss="dldl", age_bins=300).validate()
