"""The bias report's age-threshold errors (issue 34 item 4): python -m agegender.report writes them under
"age_thresholds" in its JSON and as a section of its HTML, at the thresholds and buffer its flags give."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from agegender.fairness import thresholds as T
from agegender.predictions import write_predictions
from agegender.report import bias
from agegender.report.command import main as report_main


def table(n: int = 240, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    age = rng.integers(1, 70, n)
    g = rng.integers(0, 2, n)
    return pd.DataFrame({"file": [f"{i}.jpg" for i in range(n)], "age": age,
                         "gender": np.where(g == 1, "female", "male"),
                         "race": rng.choice(["White", "Black", "Asian"], n),
                         "pred_age": (age + rng.normal(0, 5, n)).clip(1).round(2),
                         "p_female": np.clip(g * 0.7 + 0.15 + rng.normal(0, 0.2, n), 0, 1).round(4)})


@pytest.fixture
def predictions(tmp_path):
    df = table()
    write_predictions(df, tmp_path / "p.csv")
    return df, tmp_path / "p.csv"


def run(path, tmp_path, *flags) -> dict:
    js = tmp_path / "r.json"
    assert report_main(["--predictions", str(path), "--json", str(js), "--by", "race", "--n-boot", "10",
                        "--no-label-audit", *flags]) == 0
    return json.loads(js.read_text())


def test_the_json_holds_the_thresholds_asked_for_per_group(predictions, tmp_path):
    df, path = predictions
    sec = run(path, tmp_path, "--age-thresholds", "16,18", "--age-buffer", "2")["age_thresholds"]
    assert (sec["thresholds"], sec["buffer"], sec["groupings"]) == ([16, 18], 2, ["race"])
    assert len(sec["rows"]) == 2 * (1 + df["race"].nunique())
    assert all(list(r) == list(T.COLUMNS) for r in sec["rows"])
    assert {(r["threshold"], r["decision"]) for r in sec["rows"]} == {(16, 18), (18, 20)}
    overall = next(r for r in sec["rows"] if r["grouping"] == T.OVERALL and r["threshold"] == 18)
    minors = df["age"] < 18
    assert overall["n_minors"] == minors.sum()
    assert overall["false_adults"] == (minors & (df["pred_age"] >= 20)).sum()
    assert sec["rows"] == T.section(df, (16, 18), 2, ["race"])["rows"]


def test_the_defaults_are_five_thresholds_without_a_buffer(predictions, tmp_path, capsys):
    _, path = predictions
    sec = run(path, tmp_path)["age_thresholds"]
    assert (sec["thresholds"], sec["buffer"]) == (list(T.DEFAULT_THRESHOLDS), 0)
    assert all(r["decision"] == r["threshold"] for r in sec["rows"])
    out = capsys.readouterr().out
    assert "age thresholds, buffer 0 years" in out and "18 (called at 18): false adult " in out


def test_the_html_has_the_section(predictions, tmp_path):
    _, path = predictions
    page = tmp_path / "r.html"
    assert report_main(["--predictions", str(path), "--html", str(page), "--by", "race", "--n-boot", "10",
                        "--no-label-audit", "--age-thresholds", "18", "--age-buffer", "7"]) == 0
    text = page.read_text()
    assert "<h2>Age-threshold errors (buffer 7 years)</h2>" in text
    assert "false_adult_rate" in text and "<summary>By race</summary>" in text


def test_to_json_leaves_the_key_out_without_the_section(predictions):
    df, _ = predictions
    reports = bias.build(df, ["race"], n_boot=0)
    assert "age_thresholds" not in bias.to_json(reports, "x")
    assert bias.to_json(reports, "x", age_thresholds=T.section(df, (18,)))["age_thresholds"]["thresholds"] == [18]


@pytest.mark.parametrize(("flags", "message"), [
    (["--age-thresholds", "18,adult"], T.ERR_THRESHOLDS.format(text="18,adult")),
    (["--age-buffer", "-1"], T.ERR_BUFFER.format(buffer=-1)),
])
def test_bad_flags_are_refused_in_one_line(predictions, tmp_path, capsys, flags, message):
    _, path = predictions
    assert report_main(["--predictions", str(path), "--json", str(tmp_path / "r.json"), "--no-label-audit",
                        *flags]) == 2
    assert capsys.readouterr().err == f"error: {message}\n"
    assert not (tmp_path / "r.json").exists()
