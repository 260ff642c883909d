"""agegender.train.soup: the mean of runs' weights as one checkpoint, and every refusal with its own message."""

import json
import shutil

import pandas as pd
import pytest
import torch

from agegender.evaluation import intervals as iv
from agegender.meta import META, WEIGHTS
from agegender.models.checkpoint import CheckpointError, load_checkpoint, read_meta
from agegender.report.modelcard import card_for, recipe_differences
from agegender.train import soup

from ..conftest import tiny_config


@pytest.fixture(scope="module")
def second(tiny_data, tmp_path_factory):
    """A run of the tiny recipe from another seed: other weights, the same split."""
    from agegender.train.loop import train

    return train(tiny_config(tiny_data, tmp_path_factory.mktemp("soup") / "tiny-s1", seed=1))


def edited(folder, to, **changes):
    """A copy of a checkpoint with meta.json keys replaced (meta.json is not under the weights' checksum)."""
    copy = shutil.copytree(folder, to)
    meta = json.loads((copy / META).read_text())
    meta.update(changes)
    (copy / META).write_text(json.dumps(meta))
    return copy


def test_the_soup_is_the_weighted_mean_of_its_runs(tiny_checkpoint, second, tmp_path):
    out = soup.make_soup([tiny_checkpoint, second], tmp_path / "s", weights=[3, 1])
    a, b, s = (load_checkpoint(p).model.state_dict() for p in (tiny_checkpoint, second, out))
    assert a.keys() == s.keys()
    floats = [k for k, v in a.items() if v.is_floating_point()]
    assert any(not torch.equal(a[k], b[k]) for k in floats), "the two runs must differ for the test to mean anything"
    for k, v in s.items():
        if v.is_floating_point():  # stored in fp16, like every shipped checkpoint
            torch.testing.assert_close(v, 0.75 * a[k] + 0.25 * b[k], rtol=2e-3, atol=2e-3)
        else:
            assert torch.equal(v, a[k]), k
    meta = read_meta(out)
    runs = meta["soup"]["runs"]
    assert [(r["name"], r["share"]) for r in runs] == [(tiny_checkpoint.name, 0.75), (second.name, 0.25)]
    assert [r["weights_sha256"] for r in runs] == [read_meta(p)["weights_sha256"] for p in (tiny_checkpoint, second)]
    assert runs[1]["train_config"]["seed"] == 1
    assert not {"metrics", "age_interval", "external", "best_epoch", "epochs_run"} & meta.keys()
    assert (out / soup.MANIFEST).read_bytes() == (tiny_checkpoint / soup.MANIFEST).read_bytes()
    kept = soup.run_histories(out, meta)
    assert [(r["name"], f.name) for r, f in kept] == [(tiny_checkpoint.name, "history-1.csv"),
                                                       (second.name, "history-2.csv")]
    assert kept[1][1].read_bytes() == (second / "history.csv").read_bytes()
    assert soup.run_histories(second, read_meta(second)) == []


def test_a_run_averaged_with_itself_is_that_run_bit_for_bit(tiny_checkpoint, tmp_path):
    out = soup.make_soup([tiny_checkpoint, tiny_checkpoint], tmp_path / "s")
    assert (out / WEIGHTS).read_bytes() == (tiny_checkpoint / WEIGHTS).read_bytes()


def test_with_data_the_soup_is_scored_and_calibrated(tiny_checkpoint, second, tiny_data, tmp_path, capsys):
    out = tmp_path / "s"
    assert soup.main([str(tiny_checkpoint), str(second), "--out", str(out), "--data", str(tiny_data),
                      "--cache-dir", str(tmp_path / "cache")]) == 0
    assert "age interval calibrated on val: coverage " in capsys.readouterr().out
    meta = read_meta(out)
    assert set(meta["metrics"]) == {"val", "test"}
    assert meta["age_interval"]["weights_sha256"] == meta["weights_sha256"]
    assert iv.calibration_of(meta, out) is not None
    for split in ("val", "test"):  # scored after the calibration, so every age has its interval
        df = pd.read_csv(out / f"predictions-{split}.csv")
        assert len(df) == meta["metrics"][split]["n"] > 0
        assert df[["pred_age_lo", "pred_age_hi"]].notna().all().all()


def test_without_data_it_says_how_to_score_it(tiny_checkpoint, second, tmp_path, capsys):
    out = tmp_path / "s"
    assert soup.main([str(tiny_checkpoint), str(second), "--out", str(out)]) == 0
    assert soup.SCORE.format(out=out) in capsys.readouterr().out
    load_checkpoint(out)
    assert "metrics" not in read_meta(out)


def test_a_soup_is_balanced_only_when_every_run_was(tiny_checkpoint, second, tmp_path):
    how = {"method": "loss", "power": 2.0, "cells": "race x age_bucket", "within": "age_bucket"}
    a = edited(tiny_checkpoint, tmp_path / "a", balance=how)
    b = edited(second, tmp_path / "b", balance=how)
    assert read_meta(soup.make_soup([a, b], tmp_path / "ab"))["balance"] == how
    assert "balance" not in read_meta(soup.make_soup([a, second], tmp_path / "a2"))


def refusal(tmp_path, tiny_checkpoint, second, case):
    """The checkpoints, weights and expected message of one refusal."""
    t, s = tiny_checkpoint, second
    if case == "one run":
        return [t], None, soup.ERR_TOO_FEW.format(n=1)
    if case == "other preprocessing":
        pre = {**read_meta(t)["preprocess"], "input_size": 24}
        other = edited(s, tmp_path / "pre", preprocess=pre)
        return [t, other], None, soup.ERR_DIFFER.format(a=t, b=other, key="preprocess", va=read_meta(t)["preprocess"],
                                                        vb=pre)
    if case == "other split":
        other = shutil.copytree(s, tmp_path / "split")
        m = pd.read_csv(other / soup.MANIFEST)
        m.loc[m.index[0], "split"] = "val" if m.loc[m.index[0], "split"] != "val" else "train"
        m.to_csv(other / soup.MANIFEST, index=False)
        return [t, other], None, soup.ERR_SPLIT.format(a=t, b=other)
    if case == "no manifest":
        other = shutil.copytree(s, tmp_path / "nomanifest")
        (other / soup.MANIFEST).unlink()
        return [t, other], None, soup.ERR_NO_MANIFEST.format(path=other)
    if case == "bad weights":
        return [t, s], "1,x", soup.ERR_SHARES.format(n=2, given="1,x")
    if case == "negative weight":
        return [t, s], "1,-1", soup.ERR_SHARES.format(n=2, given=[1.0, -1.0])
    if case == "tampered weights":
        other = shutil.copytree(s, tmp_path / "tampered")
        raw = bytearray((other / WEIGHTS).read_bytes())
        raw[-1] ^= 1
        (other / WEIGHTS).write_bytes(bytes(raw))
        with pytest.raises(CheckpointError) as e:
            load_checkpoint(other)
        return [t, other], None, str(e.value)
    raise ValueError(case)


@pytest.mark.parametrize("case", ["one run", "other preprocessing", "other split", "no manifest", "bad weights",
                                  "negative weight", "tampered weights"])
def test_refusals_are_one_line_and_write_nothing(tiny_checkpoint, second, tmp_path, capsys, case):
    folders, weights, message = refusal(tmp_path, tiny_checkpoint, second, case)
    out = tmp_path / "s"
    argv = [*map(str, folders), "--out", str(out), *(["--weights", weights] if weights else [])]
    assert soup.main(argv) == 2
    assert capsys.readouterr().err == f"error: {message}\n"
    assert not out.exists()


def test_it_never_writes_into_a_folder_that_holds_something(tiny_checkpoint, second, tmp_path, capsys):
    out = tmp_path / "s"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert soup.main([str(tiny_checkpoint), str(second), "--out", str(out)]) == 2
    assert capsys.readouterr().err == f"error: {soup.ERR_OUT.format(out=out)}\n"
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "mine"


def test_the_model_card_lists_each_run_and_compares_soups_run_by_run(tiny_checkpoint, second, tiny_data, tmp_path):
    how = {"method": "loss", "power": 2.0, "cells": "race x age_bucket", "within": "age_bucket"}
    plain = soup.make_soup([tiny_checkpoint, second], tmp_path / "plain")
    cfg = read_meta(second)["train_config"]
    bal = soup.make_soup([edited(tiny_checkpoint, tmp_path / "a", balance=how),
                          edited(second, tmp_path / "b", balance=how,
                                 train_config={**cfg, "balance": "loss", "lr": cfg["lr"] * 2})], tmp_path / "bal")
    assert recipe_differences(read_meta(plain), read_meta(plain)) == {}
    assert recipe_differences(read_meta(plain), read_meta(bal)) == {"run 2 lr": (cfg["lr"], cfg["lr"] * 2)}
    assert recipe_differences(read_meta(plain), read_meta(tiny_checkpoint)) == {"runs averaged": (2, 1)}
    card = card_for(plain, n_boot=20)
    assert "- Weights: the mean of 2 runs' weights" in card
    assert f"- Training: {tiny_checkpoint.name} (50% of the mean), " in card
    assert f"- Training: {second.name} (50% of the mean), " in card
