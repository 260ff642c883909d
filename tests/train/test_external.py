"""The external check during training (--external): history.csv's ext_ columns on the scored epochs, the same
figures as an independent evaluation, no effect whatever on training, a fast failure on a bad path, resume,
meta.json's record and the training page's curves."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors import safe_open

from agegender.data.datasets import read_dataset
from agegender.data.utkface import DatasetError
from agegender.evaluation.evaluate import evaluate_dataset
from agegender.models.checkpoint import load_checkpoint
from agegender.report import charts
from agegender.train.external import FIELDS, ROLE
from agegender.train.loop import STATE, train
from agegender.train.runstate import HISTORY_FIELDS
from train import main as train_main

from ..conftest import make_dataset, tiny_config
from ..evaluation.test_evalset import fairface_like
from .test_training import crash_before_final_evaluation, crash_on_batch, stopped

TIMING = ["epoch_seconds", "train_img_per_s", "ext_seconds"]


@pytest.fixture(scope="module")
def chips(tmp_path_factory):
    """150 UTKFace-named chips apart from the training data: exact ages, and two races with 30 or more faces
    (33 White, 35 Others; the other three have 25-29), so the group gap is defined and the 30-face rule bites."""
    folder = tmp_path_factory.mktemp("ext") / "chips"
    make_dataset(folder, n=150, seed=3)
    return folder


@pytest.fixture(scope="module")
def ext_run(tiny_data, chips, tmp_path_factory):
    """uninterrupted (conftest: 2 epochs, no --external) again, with the chips scored every epoch."""
    return train(tiny_config(tiny_data, tmp_path_factory.mktemp("ext") / "run", epochs=2, external=str(chips),
                             external_every=1))


def history(folder) -> pd.DataFrame:
    return pd.read_csv(folder / "history.csv", dtype=str, keep_default_na=False)


def independent(df: pd.DataFrame) -> dict:
    """The check's figures from the predictions table alone, with pandas."""
    f = df[df["found"]]
    correct = (f["p_female"] >= 0.5) == (f["gender"] == "female")
    by_race = correct.groupby(f["race"]).agg(["mean", "size"])
    judged = by_race[by_race["size"] >= 30]["mean"]
    return {"ext_n_found": len(f), "ext_gender_acc": correct.mean(),
            "ext_age_bin_acc": (f["pred_age_bin"] == f["age_bin"]).mean(),
            "ext_age_mae": (f["pred_age"] - f["age"]).abs().mean() if f["age"].notna().all() else None,
            "ext_gender_gap": judged.max() - judged.min() if len(judged) >= 2 else None}


def assert_row_matches(row: pd.Series, expected: dict, tol: dict | None = None) -> None:
    tol = tol or {}
    for key, value in expected.items():
        if value is None:
            assert row[key] == "", key
        else:
            assert float(row[key]) == pytest.approx(value, abs=tol.get(key, 6e-5)), key


def test_external_never_changes_training(uninterrupted, ext_run):
    """Same weights, same best epoch, same every-epoch figures as the run without --external."""
    plain, ext = json.loads((uninterrupted / "meta.json").read_text()), json.loads((ext_run / "meta.json").read_text())
    assert ext["weights_sha256"] == plain["weights_sha256"]
    assert ext["best_epoch"] == plain["best_epoch"]
    for split in ("val", "test"):
        assert {**ext["metrics"][split], "seconds": 0} == {**plain["metrics"][split], "seconds": 0}
    a, b = history(uninterrupted), history(ext_run)
    assert list(a.columns) == HISTORY_FIELDS  # a run without --external writes the columns it always wrote
    assert list(b.columns) == HISTORY_FIELDS + list(FIELDS)
    pd.testing.assert_frame_equal(a.drop(columns=TIMING[:2]), b[HISTORY_FIELDS].drop(columns=TIMING[:2]))
    pd.testing.assert_frame_equal(pd.read_csv(uninterrupted / "predictions-val.csv"),
                                  pd.read_csv(ext_run / "predictions-val.csv"))


def test_figures_equal_an_independent_evaluation_of_the_checkpoint(ext_run, chips):
    h = history(ext_run)
    assert all((h[c] != "").all() for c in FIELDS)  # every epoch scored (external_every 1)
    meta = json.loads((ext_run / "meta.json").read_text())
    best = h[h["epoch"] == str(meta["best_epoch"])].iloc[0]
    df, m = evaluate_dataset(load_checkpoint(ext_run), read_dataset(chips), tta=True,
                             cache_dir=ext_run.parent / "cache")
    exp = independent(df)
    assert exp["ext_n_found"] == m["n_found"] == 150 and exp["ext_gender_gap"] is not None
    # the checkpoint ships fp16 weights, training scored its fp32 ones: a face or two may cross 0.5 or a bin edge
    assert_row_matches(best, exp, tol={"ext_gender_acc": 2.1 / 150, "ext_age_bin_acc": 2.1 / 150,
                                       "ext_age_mae": 0.05, "ext_gender_gap": 0.07})
    ext = meta["external"]
    assert ext["role"] == ROLE and "development check" in ext["role"]
    assert ext["path"] == str(chips) and ext["fingerprint"] == read_dataset(chips).fingerprint
    assert ext["format"] == "utkface" and ext["n"] == 150 and ext["group_column"] == "race" and ext["every"] == 1
    last = h.iloc[-1]
    assert ext["last"]["epoch"] == 2 and ext["last"]["gender_accuracy"] == float(last["ext_gender_acc"])
    assert ext["last"]["age_mae"] == float(last["ext_age_mae"])
    assert meta["train_config"]["external"] == str(chips)


def test_resume_goes_on_scoring_and_matches_the_uninterrupted_run(tiny_data, chips, ext_run, tmp_path, monkeypatch):
    out = tmp_path / "run"
    cfg = dict(epochs=2, external=str(chips), external_every=1, save_every_minutes=0)
    per_epoch = int(history(ext_run)["step"].iloc[0])
    # killed in the middle of epoch 2, then once epoch 2's state is written, then finished: with --external again
    stopped(monkeypatch, lambda m: crash_on_batch(m, per_epoch + 3), lambda: train(tiny_config(tiny_data, out, **cfg)))
    assert len(history(out)) == 1 and history(out)["ext_n_found"].iloc[0] == "150"
    stopped(monkeypatch, crash_before_final_evaluation,
            lambda: train(tiny_config(tiny_data, out, resume=True, external=str(chips))))

    # epoch 2's row against an independent evaluation of epoch 2's own fp32 weights (the resume state's)
    ckpt = load_checkpoint(out)
    with safe_open(str(out / STATE), "pt") as f:
        ckpt.model.load_state_dict({k[6:]: f.get_tensor(k) for k in f.keys() if k.startswith("model.")})
    df, _ = evaluate_dataset(ckpt, read_dataset(chips), tta=True, cache_dir=out.parent / "cache")
    assert_row_matches(history(out).iloc[1], independent(df))  # to the last digit written

    train(tiny_config(tiny_data, out, resume=True, external=str(chips)))
    assert not (out / STATE).exists()
    pd.testing.assert_frame_equal(history(out).drop(columns=TIMING), history(ext_run).drop(columns=TIMING))
    a, b = json.loads((out / "meta.json").read_text()), json.loads((ext_run / "meta.json").read_text())
    assert a["weights_sha256"] == b["weights_sha256"]
    assert {k: v for k, v in a["external"]["last"].items() if k != "seconds"} == \
        {k: v for k, v in b["external"]["last"].items() if k != "seconds"}


def test_resume_without_external_says_so_and_leaves_the_cells_empty(tiny_data, chips, ext_run, tmp_path, monkeypatch,
                                                                    caplog):
    out = tmp_path / "run"
    per_epoch = int(history(ext_run)["step"].iloc[0])
    stopped(monkeypatch, lambda m: crash_on_batch(m, per_epoch + 3),
            lambda: train(tiny_config(tiny_data, out, epochs=2, external=str(chips), external_every=1,
                                      save_every_minutes=0)))
    with caplog.at_level("WARNING", logger="agegender.train.setup"):
        train(tiny_config(tiny_data, out, resume=True))  # the path is a runtime flag, like --data: not given here
    assert f"this run scored --external {chips} before; pass --external again" in caplog.text
    h = history(out)
    assert h["ext_n_found"].tolist() == ["150", ""]  # epoch 1's cells stay, epoch 2 was not scored
    meta = json.loads((out / "meta.json").read_text())
    assert "external" not in meta and meta["weights_sha256"] == json.loads((ext_run / "meta.json").read_text())[
        "weights_sha256"]


def test_fairface_photos_on_the_right_epochs(tiny_data, tmp_path):
    """Photos with age bins only: every 2nd epoch and the last, no age MAE, no gap (no group of 30 faces)."""
    ff = tmp_path / "FairFace"
    fairface_like(ff)
    out = train(tiny_config(tiny_data, tmp_path / "run", epochs=3, external=str(ff), external_every=2))
    h = history(out)
    assert list(h["epoch"]) == ["1", "2", "3"]
    assert (h.loc[0, list(FIELDS)] == "").all()  # epoch 1: not scored
    for i in (1, 2):  # epoch 2 (every 2nd) and 3 (the last)
        row = h.iloc[i]
        assert row["ext_n_found"] == "6"  # six faces; two blank photos and a corrupt file
        assert row["ext_gender_acc"] != "" and row["ext_age_bin_acc"] != "" and float(row["ext_seconds"]) >= 0
        assert row["ext_age_mae"] == "" and row["ext_gender_gap"] == ""
    meta = json.loads((out / "meta.json").read_text())
    assert meta["external"]["format"] == "fairface" and meta["external"]["n"] == 8  # the corrupt file is dropped
    assert meta["external"]["last"]["epoch"] == 3 and meta["external"]["last"]["age_mae"] is None
    if meta["best_epoch"] == 3:  # the checkpoint holds the scored weights (fp16): compare where comparable
        df, _ = evaluate_dataset(load_checkpoint(out), read_dataset(ff), tta=True, cache_dir=out.parent / "cache")
        assert_row_matches(h.iloc[2], independent(df), tol={"ext_gender_acc": 0.17, "ext_age_bin_acc": 0.17})


@pytest.mark.parametrize("case", ["missing", "every", "training data"])
def test_a_bad_external_set_stops_before_any_epoch(tiny_data, tmp_path, capsys, case):
    out = tmp_path / "run"
    ext, every, message = {
        "missing": (tmp_path / "nowhere", 5, f"--external {tmp_path / 'nowhere'}: dataset not found at"),
        "every": (tiny_data, 0, "--external-every must be at least 1"),
        "training data": (tiny_data, 5, "is the training dataset itself"),
    }[case]
    cfg = tiny_config(tiny_data, out, external=str(ext), external_every=every)
    with pytest.raises(DatasetError, match=message.replace("(", r"\(")):
        train(cfg)
    assert not (out / "history.csv").exists() and not (out / STATE).exists()  # no epoch ran
    from ..conftest import cli_args

    assert train_main(cli_args(tiny_config(tiny_data, tmp_path / "cli", external=str(ext), external_every=every))) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]
    assert not (tmp_path / "cli" / "history.csv").exists()


def test_scoring_draws_no_random_number_and_keeps_the_mode(ext_run, chips):
    from agegender.train.external import ExternalCheck

    ckpt = load_checkpoint(ext_run)
    check = ExternalCheck.open(str(chips), 1, "")
    check.load_crops(32, str(ext_run.parent / "cache"))
    ckpt.model.train()
    torch.manual_seed(7)
    np.random.seed(7)
    before = torch.get_rng_state(), np.random.get_state()[1].copy()
    buffers = {k: v.clone() for k, v in ckpt.model.state_dict().items()}
    f = check.score(ckpt, tta=True)
    assert torch.equal(torch.get_rng_state(), before[0]) and np.array_equal(np.random.get_state()[1], before[1])
    assert ckpt.model.training  # back in the mode it was in
    assert all(torch.equal(v, buffers[k]) for k, v in ckpt.model.state_dict().items())  # BatchNorm untouched
    assert f["n_found"] == 150 and f["gender_gap"] is not None


# --- the training page's curves -------------------------------------------------------------------------

HISTORY = pd.DataFrame({"epoch": [1, 2, 3], "train_loss": [5.5, 4.5, 4.0], "train_age_mae": [15.3, 9.3, 8.0],
                        "train_gender_acc": [0.70, 0.81, 0.85], "val_age_mae": [9.2, 10.2, 8.1],
                        "val_gender_acc": [0.80, 0.81, 0.83], "ext_n_found": [None, 500, 501],
                        "ext_gender_acc": [None, 0.71, 0.74], "ext_age_bin_acc": [None, 0.30, 0.35],
                        "ext_age_mae": [None, None, None], "ext_gender_gap": [None, 0.12, 0.10]})


def test_external_curves_sit_beside_validation():
    long = charts.training_history(HISTORY)
    ext = long[long["split"] == "external"]
    assert set(ext["panel"]) == {"gender accuracy", charts.EXTERNAL_AGE_BIN}  # no age MAE: bins only
    assert ext[ext["panel"] == "gender accuracy"]["epoch"].tolist() == [2, 3]  # epoch 1 was not scored
    fig = charts.training_curves(HISTORY, best_epoch=3)
    assert [a.text for a in fig.layout.annotations] == ["loss", "age MAE (years)", "gender accuracy",
                                                        charts.EXTERNAL_AGE_BIN]
    traces = [(t.name, t.xaxis, list(t.y)) for t in fig.data if t.name == "external"]
    assert traces == [("external", "x3", [0.71, 0.74]), ("external", "x4", [0.30, 0.35])]
    assert [t.showlegend for t in fig.data if t.name == "external"] == [True, False]
    # an older history, or a run without --external: the three panels as before
    plain = charts.training_curves(HISTORY.drop(columns=[c for c in HISTORY if c.startswith("ext_")]))
    assert len(plain.layout.annotations) == 3 and not [t for t in plain.data if t.name == "external"]


def test_training_page_shows_the_external_check(ext_run, tmp_path, monkeypatch):
    import shutil

    from streamlit.testing.v1 import AppTest

    from ..conftest import ROOT

    shutil.copytree(ext_run, tmp_path / "ck" / "ext")
    monkeypatch.setenv("AGEGENDER_CHECKPOINTS", str(tmp_path / "ck"))
    at = AppTest.from_file(str(ROOT / "dashboard" / "app.py"), default_timeout=90).run()
    at.switch_page("pages/training.py").run()
    assert not at.exception
    assert len(at.get("plotly_chart")) == 1
    assert any("External check" in c.value and "development check" in c.value for c in at.caption)
    assert len(at.dataframe) == 1 and at.dataframe[0].value["epoch"].tolist() == [1, 2]
