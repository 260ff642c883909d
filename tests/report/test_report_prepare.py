"""One report command prepares its predictions table once (agegender.fairness.groups.prepare) and parses each age
bin label once; the prepared table's typed columns give the same figures as the labels they come from."""

from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import agegender.fairness.groups as fairness
import agegender.predictions as predictions
from agegender.fairness.groups import is_prepared, prepare, prepared
from agegender.labels import FAIRFACE_BINS, bin_label
from agegender.predictions import BIN_HI, BIN_INDEX, BIN_LO, IS_FEMALE, bin_errors, metric_columns, pred_bins
from agegender.report.bias import build
from agegender.report.command import main as report_main

CHECKPOINT = Path(__file__).resolve().parents[2] / "checkpoints" / "dlib-resnet29-utkface"
RACES7 = ["White", "Black", "East Asian", "Southeast Asian", "Indian", "Middle Eastern", "Latino_Hispanic"]


def fairface_like(n: int = 400, seed: int = 0) -> pd.DataFrame:
    """A FairFace-like table as evaluation writes it: ages as bins only ("more than 70" open), its predicted
    bins, seven groups, a few faces missed."""
    rng = np.random.default_rng(seed)
    labels = [bin_label(b) if b[1] is not None else "more than 70" for b in FAIRFACE_BINS]
    mids = np.array([1, 6, 15, 25, 35, 45, 55, 65, 75])
    b = rng.integers(1, len(labels), n)
    g = rng.integers(0, 2, n)
    found = rng.random(n) > 0.05
    pred_age = np.where(found, (mids[b] + rng.normal(0, 8, n)).clip(1).round(2), np.nan)
    return pd.DataFrame({
        "file": [f"val/{i}.jpg" for i in range(n)], "age_bin": [labels[i] for i in b],
        "gender": np.where(g == 1, "female", "male"), "race": rng.choice(RACES7, n), "found": found,
        "pred_age": pred_age, "pred_age_bin": pred_bins(pred_age, list(FAIRFACE_BINS)),
        "p_female": np.where(found, np.clip(g * 0.7 + 0.15 + rng.normal(0, 0.2, n), 0, 1).round(4), np.nan)})


def count_prepares(monkeypatch) -> Counter:
    """Counts prepare()'s runs: age_buckets is called by prepare alone, whatever name a module imported it by."""
    calls = Counter()
    real = fairness.age_buckets

    def counted(*a, **k):
        calls["prepare"] += 1
        return real(*a, **k)

    monkeypatch.setattr(fairness, "age_buckets", counted)
    return calls


def count_parses(monkeypatch) -> Counter:
    """Counts parse_age_bin's calls per label, in every module of the report's path that parses bin labels."""
    calls = Counter()
    for module in (fairness, predictions):
        real = module.parse_age_bin

        def counted(text, real=real):
            calls[str(text)] += 1
            return real(text)

        monkeypatch.setattr(module, "parse_age_bin", counted)
    return calls


@pytest.mark.skipif(not (CHECKPOINT / "predictions-val.csv").is_file(), reason="the shipped checkpoint is missing")
def test_one_report_run_on_the_shipped_checkpoint_prepares_its_table_once(monkeypatch, tmp_path):
    calls = count_prepares(monkeypatch)
    argv = ["--checkpoint", str(CHECKPOINT), "--split", "val", "--n-boot", "20",
            "--json", str(tmp_path / "r.json"), "--html", str(tmp_path / "r.html")]
    assert report_main(argv) == 0
    assert calls["prepare"] == 1


def test_one_report_run_parses_each_age_bin_label_once(monkeypatch, tmp_path):
    table = fairface_like()
    csv = tmp_path / "ff.csv"
    table.to_csv(csv, index=False)
    prepares, parses = count_prepares(monkeypatch), count_parses(monkeypatch)
    argv = ["--predictions", str(csv), "--n-boot", "20", "--json", str(tmp_path / "r.json"),
            "--html", str(tmp_path / "r.html")]
    assert report_main(argv) == 0
    assert prepares["prepare"] == 1
    named = set(table["age_bin"]) | set(table["pred_age_bin"]) - {""}
    assert {t: parses[t] for t in named} == {t: 1 for t in named}


def test_the_typed_columns_hold_the_labels_as_numbers():
    t = prepare(fairface_like(60))
    assert t[IS_FEMALE].dtype == bool
    assert (t[IS_FEMALE] == (t["gender"] == "female")).all()
    lo = {bin_label(b) if b[1] is not None else "more than 70": b[0] for b in FAIRFACE_BINS}
    assert (t[BIN_LO] == t["age_bin"].map(lo)).all()
    assert (t.loc[t["age_bin"] == "more than 70", BIN_HI] == np.inf).all()
    assert (t.loc[t["age_bin"] == "20-29", [BIN_LO, BIN_HI, BIN_INDEX]] == [20, 29, 3]).all(axis=None)


@pytest.mark.parametrize("edit", ["none", "custom_bins"])
def test_metric_columns_of_a_prepared_table_equal_those_parsed_from_its_labels(edit):
    raw = fairface_like(300, seed=1)
    if edit == "custom_bins":  # a user's own bins: the scale is the labels', not FairFace's
        raw["age_bin"] = raw["age_bin"].replace({"20-29": "18-29", "30-39": "30-44", "40-49": "45-49"})
        raw = raw.drop(columns="pred_age_bin")
    t = prepare(raw)
    typed, parsed = metric_columns(t), metric_columns(t.drop(columns=[BIN_INDEX]))
    assert parsed["bin_err"].tolist() == pytest.approx(
        bin_errors(t["age_bin"], t["pred_age_bin"]).tolist(), nan_ok=True)
    for k in parsed:
        np.testing.assert_array_equal(typed[k], parsed[k])


def test_a_prepared_table_is_passed_through_and_gives_the_same_report():
    raw = fairface_like(300, seed=2)
    t = prepare(raw)
    assert is_prepared(t) and prepared(t) is t
    assert not is_prepared(t, (0, 20, 40)) and prepared(t, (0, 20, 40)) is not t
    a = build(raw, ["race", "age_bucket"], n_boot=50)
    b = build(t, ["race", "age_bucket"], n_boot=50)
    for g in a:
        pd.testing.assert_frame_equal(a[g].by_group, b[g].by_group)
        pd.testing.assert_frame_equal(a[g].disparity(), b[g].disparity())


def test_a_written_prepared_table_reads_back_without_its_typed_columns(tmp_path):
    t = prepare(fairface_like(50))
    predictions.write_predictions(t, tmp_path / "p.csv")
    back = pd.read_csv(tmp_path / "p.csv")
    assert not {IS_FEMALE, BIN_INDEX, BIN_LO, BIN_HI, "pred_age_bin_index"} & set(back.columns)
    assert predictions.group_columns(t) == ["race"]


@pytest.mark.skipif(not (CHECKPOINT.parent / "dlib-resnet29-balanced" / "predictions-val.csv").is_file(),
                    reason="the shipped checkpoints are missing")
def test_one_comparison_prepares_its_paired_table_once(monkeypatch):
    from agegender.fairness.compare import main as compare_main

    calls = count_prepares(monkeypatch)
    assert compare_main([str(CHECKPOINT), str(CHECKPOINT.parent / "dlib-resnet29-balanced"), "--n-boot", "20"]) == 0
    assert calls["prepare"] == 1
