"""Worst-slice discovery on generated tables: a planted slice is found first, a null table yields few false
discoveries, the tests and q-values agree with scipy and with hand counts, and the report and the Bias page
show the slices."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from streamlit.testing.v1 import AppTest

from agegender.fairness import slices
from agegender.fairness.groups import prepare
from agegender.fairness.slices import (
    ERR_MAX_ORDER,
    ERR_MIN_COUNT,
    ERR_UNKNOWN_COLUMN,
    ERR_UNKNOWN_METRIC,
    MIN_FLOOR,
    bh,
    find_slices,
)
from agegender.predictions import predictions_path, write_predictions
from agegender.report.command import main as report_main

from ..conftest import ROOT

RACES = ["Asian", "Black", "Indian", "Others", "White"]
PLANTED = {"race": "Indian", "gender": "female"}


def table(n: int = 3000, seed: int = 0, extra: int = 0, ages: tuple[int, int] = (1, 90), planted: dict | None = None,
          factor: float = 3.0, found: float = 1.0) -> pd.DataFrame:
    """A UTKFace-like predictions table: gender read wrong for 10% of faces, age errors Laplace (skewed absolute
    errors, like a real model's), the same everywhere but in the ``planted`` cell, whose gender error rate and
    age errors are ``factor`` times the others'. ``extra`` more group columns (site0 with 3 values, site1 with
    4, ...); ``found``: the share of images with a face found."""
    rng = np.random.default_rng(seed)
    age = rng.integers(ages[0], ages[1], n).astype(float)
    female = rng.random(n) < 0.5
    df = pd.DataFrame({"file": [f"f{i}.jpg" for i in range(n)], "age": age,
                       "gender": np.where(female, "female", "male"), "race": rng.choice(RACES, n)})
    for j in range(extra):
        df[f"site{j}"] = rng.choice([f"s{k}" for k in range(3 + j)], n)
    bad = np.logical_and.reduce([df[c] == v for c, v in (planted or {}).items()]) if planted else np.zeros(n, bool)
    scale = np.where(bad, factor, 1.0)
    wrong = rng.random(n) < 0.1 * scale
    df["pred_age"] = age + rng.laplace(0, 3, n) * scale
    df["p_female"] = np.where(female ^ wrong, 0.9, 0.1)
    df["found"] = rng.random(n) < found
    return df


def of(found, metric: str) -> pd.DataFrame:
    return found.table[found.table["metric"] == metric].reset_index(drop=True)


def mask(df: pd.DataFrame, sl: dict) -> np.ndarray:
    return np.logical_and.reduce([df[c].astype(str) == str(v) for c, v in sl.items()])


# --- what the search finds ------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_planted_slice_ranks_first(seed):
    # every age in one bucket: the planted cell has no smaller slice inside it that could outrank it by chance
    found = find_slices(table(seed=seed, ages=(30, 40), planted=PLANTED))
    for metric in ("age_mae", "gender_error_rate"):
        top = of(found, metric).iloc[0]
        assert top["slice"] == PLANTED and top["description"] == "Indian · female", metric
        assert top["q"] < 0.01 and top["gap_lo"] > 0
        assert top["same_rows"] == ["Indian · female · 30-39"]  # the constant age bucket adds no rows


def test_a_planted_slice_is_found_among_age_buckets():
    # with ages spread, the planted cell's age buckets are worse than the rest too and may rank above it by
    # noise: the worst discovery lies inside the cell, and the cell leads every slice of one or two columns
    found = find_slices(table(seed=3, planted=PLANTED))
    for metric in ("age_mae", "gender_error_rate"):
        t = of(found, metric)
        assert PLANTED.items() <= t.iloc[0]["slice"].items() and t.iloc[0]["q"] < 0.05
        assert t[t["order"] <= 2].iloc[0]["slice"] == PLANTED
        assert t[t["order"] <= 2].iloc[0]["q"] < 0.001


def test_a_null_table_has_few_false_discoveries():
    """No slice is worse in truth, so any discovery is false and the false discovery rate is the share of seeds
    with any: BH keeps it at or below 5% per metric (the tests are conservative: Fisher's is discrete, Welch's on
    skewed errors see _welch; 200 seeds gave 0.5% for the MAE, 3% for gender). Across 50 independent seeds,
    9 or more seeds with a discovery would happen with probability 0.0008 at a 5% rate."""
    hits = {"age_mae": 0, "gender_error_rate": 0}
    for seed in range(50):
        found = find_slices(table(1000, seed=100 + seed, extra=2))
        assert found.columns == ["race", "site0", "site1", "gender", "age_bucket"]
        for metric in hits:
            hits[metric] += bool((of(found, metric)["q"] < 0.05).any())
    assert hits["age_mae"] <= 8 and hits["gender_error_rate"] <= 8, hits


def test_bh_q_values_by_hand():
    p = [0.01, 0.04, 0.03, 0.005, 0.5]
    # sorted 0.005 0.01 0.03 0.04 0.5 -> p*m/rank 0.025 0.025 0.05 0.05 0.5, already monotone
    assert bh(p) == pytest.approx([0.025, 0.05, 0.05, 0.025, 0.5])
    # p*m/rank 0.08 0.042 0.0293 0.9: the smaller later value carries down to the earlier ranks
    assert bh([0.02, 0.021, 0.9, 0.022]) == pytest.approx([0.088 / 3, 0.088 / 3, 0.9, 0.088 / 3])
    assert bh([0.9, 0.95, 1.0]) == pytest.approx([1.0, 1.0, 1.0])
    rng = np.random.default_rng(0)
    p = np.concatenate([rng.random(200), rng.random(20) * 1e-4])
    q = bh(p)
    assert q == pytest.approx(stats.false_discovery_control(p))
    order = np.argsort(p)
    assert (np.diff(q[order]) >= 0).all() and (q <= 1).all() and (q >= p).all()


def test_every_slice_tried_counts_in_bh():
    found = find_slices(table(seed=4, planted=PLANTED))
    for metric, tried in found.tried.items():
        t = of(found, metric)
        assert len(t) == tried and (t["tried"] == tried).all()
        assert t["q"].to_numpy() == pytest.approx(bh(t["p"].to_numpy()))


def test_tests_values_and_intervals_match_scipy_on_the_slice_mask():
    df = table(1500, seed=5, planted=PLANTED, found=0.9)
    found = find_slices(df, max_order=2)
    hit = df[df["found"]].reset_index(drop=True)
    prepared = prepare(hit)
    wrong = (hit["p_female"] >= 0.5) != (hit["gender"] == "female")
    abs_err = (hit["pred_age"] - hit["age"]).abs()
    for metric in ("age_mae", "gender_error_rate"):
        t = of(found, metric)
        assert t["n"].sum() < len(df) * 9  # counted over the faces found only
        for r in t.iloc[[0, 1, len(t) // 2, -1]].to_dict("records"):
            inside = mask(prepared, r["slice"])
            assert (r["n"], r["rest_n"]) == (inside.sum(), (~inside).sum())
            if metric == "age_mae":
                a, b = abs_err[inside], abs_err[~inside]
                want = stats.ttest_ind(a, b, equal_var=False, alternative="greater")
                assert r["p"] == pytest.approx(want.pvalue, rel=1e-6)
                ci = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
                assert (r["gap_lo"], r["gap_hi"]) == pytest.approx((ci.low, ci.high), rel=1e-6)
            else:
                a, b = wrong[inside], wrong[~inside]
                _, want = stats.fisher_exact([[a.sum(), (~a).sum()], [b.sum(), (~b).sum()]], alternative="greater")
                assert r["p"] == pytest.approx(want, rel=1e-6)
            assert (r["value"], r["rest_value"]) == pytest.approx((a.mean(), b.mean()))
            assert r["gap"] == pytest.approx(a.mean() - b.mean())


def test_intervals_contain_the_gap():
    found = find_slices(table(seed=6, extra=1, planted=PLANTED))
    t = found.table
    assert len(t) > 100
    assert ((t["gap_lo"] <= t["gap"]) & (t["gap"] <= t["gap_hi"]) & (t["gap_lo"] < t["gap_hi"])).all()


def test_newcombe_interval_is_newcombes():
    # Newcombe (1998), Statistics in Medicine 17:873, table II example (a): 56/70 against 48/80, method 10
    lo, hi = slices._newcombe(np.array([56.0]), np.array([70.0]), np.array([48.0]), np.array([80.0]))
    assert (lo[0], hi[0]) == pytest.approx((0.0524, 0.3339), abs=1e-4)


def test_min_count_is_respected():
    df = table(2000, seed=7, extra=2)
    df.loc[:9, "site0"] = "rare"  # 10 rows: never a slice at 30
    loose, strict = find_slices(df, min_count=30), find_slices(df, min_count=100)
    for found, least in ((loose, 30), (strict, 100)):
        assert (found.table["n"] >= least).all() and (found.table["rest_n"] >= least).all()
    assert sum(strict.tried.values()) < sum(loose.tried.values())
    assert not any(sl.get("site0") == "rare" for sl in loose.table["slice"])
    assert find_slices(df, min_count=10, max_order=1).table["slice"].apply(lambda s: s.get("site0") == "rare").any()


def test_max_order_is_respected():
    df = table(2000, seed=8, extra=1)
    one, two = find_slices(df, max_order=1), find_slices(df, max_order=2)
    assert set(one.table["order"]) == {1} and set(two.table["order"]) == {1, 2}
    assert one.table["slice"].map(len).max() == 1 and two.table["slice"].map(len).max() == 2
    # one column at a time: every value of every column (age buckets of 30 and more) once per metric
    buckets = prepare(df)["age_bucket"].value_counts()
    assert one.tried["age_mae"] == 5 + 3 + 2 + int((buckets >= 30).sum())
    assert one.combinations == 4 and two.combinations == 4 + 6


def test_the_same_rows_under_two_descriptions_are_one_slice():
    df = table(2000, seed=9)
    df.loc[df["race"] == "Indian", "gender"] = "female"  # every Indian face is a woman's
    found = find_slices(df, max_order=2)
    t = of(found, "gender_error_rate")
    indian = t[t["description"] == "Indian"].iloc[0]
    assert "Indian · female" in indian["same_rows"]  # tested once, under the shorter name
    assert "Indian · female" not in set(t["description"])
    assert found.duplicates["gender_error_rate"] >= 1
    assert t["description"].is_unique


def test_many_columns_stop_at_the_cap_lowest_orders_first():
    df = table(3000, seed=10, extra=8)  # 11 columns: 231 combinations up to three
    found = find_slices(df, max_combinations=40)
    assert found.truncated and found.combinations == 40
    assert set(found.table["order"]) == {1, 2}  # 11 singles and 29 of the 55 pairs
    assert "stopped after the first 40 column combinations" in found.summary()
    full = find_slices(df)
    assert not full.truncated and full.combinations == 11 + 55 + 165
    assert full.seconds < 10


def test_a_table_of_age_bins_slices_the_bin_error_rate():
    df = table(2000, seed=11, planted=PLANTED)
    bins = prepare(df)
    df = df.assign(age=np.nan, age_bin=bins["age_bin"], pred_age_bin=bins["pred_age_bin"])
    found = find_slices(df, max_order=1)
    assert list(found.tried) == ["age_bin_error_rate", "gender_error_rate"]
    r = of(found, "age_bin_error_rate").iloc[0]
    miss = df["age_bin"] != df["pred_age_bin"]
    inside = mask(prepare(df), r["slice"])
    assert r["value"] == pytest.approx(miss[inside].mean()) and r["rest_value"] == pytest.approx(miss[~inside].mean())


def test_errors_name_the_fix():
    df = table(500, seed=12)
    with pytest.raises(ValueError) as e:
        find_slices(df, min_count=5)
    assert str(e.value) == ERR_MIN_COUNT.format(floor=MIN_FLOOR, got=5)
    with pytest.raises(ValueError) as e:
        find_slices(df, max_order=0)
    assert str(e.value) == ERR_MAX_ORDER.format(got=0)
    with pytest.raises(ValueError) as e:
        find_slices(df, metrics=["age_auc"])
    assert str(e.value) == ERR_UNKNOWN_METRIC.format(name="age_auc", known="age_mae, age_bin_error_rate, "
                                                                           "gender_error_rate")
    with pytest.raises(ValueError) as e:
        find_slices(df, columns=["race", "shoe"])
    assert str(e.value) == ERR_UNKNOWN_COLUMN.format(missing="shoe", known="race, gender, age_bucket")


def test_display_writes_slices_readably():
    found = find_slices(table(seed=0, ages=(30, 40), planted=PLANTED))
    shown = slices.display(slices.shown(found, top=1))
    assert list(shown.columns) == ["slice", "metric", "value", "rest", "gap [95% interval]", "n", "q"]
    assert list(shown["slice"]) == ["Indian · female"] * 2 and list(shown["q"]) == ["<0.001"] * 2
    mae, rate = shown.iloc[0], shown.iloc[1]
    assert mae["value"].endswith(" y") and mae["gap [95% interval]"].startswith("+")
    assert rate["value"].endswith("%") and rate["gap [95% interval]"].count(" pp") == 3
    assert slices.describe({"site": "007", "gender": "male"}) == "site 007 · male"
    numbered = find_slices(table(600, seed=1).assign(site=lambda d: np.arange(len(d)) % 3), max_order=1)
    sites = [e for e in numbered.entries() if "site" in e["slice"]]
    assert sites and json.loads(json.dumps(sites))[0]["slice"]["site"] in (0, 1, 2)
    assert sites[0]["description"].startswith("site ")
    assert len(slices.shown(found, show_all=True)) == len(found.table) > len(found.significant())


# --- the report and the page ----------------------------------------------------------------------------------

def test_report_carries_the_slices(tmp_path, capsys):
    csv = tmp_path / "p.csv"
    table(2000, seed=0, ages=(30, 40), planted=PLANTED).to_csv(csv, index=False)
    js, page = tmp_path / "r.json", tmp_path / "r.html"
    assert report_main(["--predictions", str(csv), "--by", "race", "--n-boot", "20", "--json", str(js),
                        "--html", str(page), "--slices-order", "2"]) == 0
    data = json.loads(js.read_text())
    search = data["slice_search"]
    assert search["max_order"] == 2 and search["min_count"] == 30
    assert len(data["slices"]) == sum(search["tried"].values())
    top = data["slices"][0]
    assert top["slice"] == PLANTED and top["q"] < 0.05 and top["gap_lo"] <= top["gap"] <= top["gap_hi"]
    assert {"metric", "value", "n", "rest_value", "gap", "gap_lo", "gap_hi", "p", "q", "tried"} <= set(top)
    text = page.read_text()
    assert "<h2>Worst slices</h2>" in text and "Indian · female" in text and "Benjamini-Hochberg" in text
    assert f"Slices tried: {search['tried']['age_mae']} for age MAE" in text
    assert "worst slices, q < 0.05" in capsys.readouterr().out
    assert report_main(["--predictions", str(csv), "--min-slice", "5"]) == 2
    assert capsys.readouterr().err == f"error: {ERR_MIN_COUNT.format(floor=MIN_FLOOR, got=5)}\n"


@pytest.fixture
def bias_page(monkeypatch, tiny_checkpoint, tmp_path):
    def open_page(rows: pd.DataFrame | None):
        root = tmp_path / "ck"
        shutil.copytree(tiny_checkpoint, root / "tiny")
        if rows is not None:
            write_predictions(rows.assign(split="val"), predictions_path(root / "tiny", "val"))
        monkeypatch.setenv("AGEGENDER_CHECKPOINTS", str(root))
        at = AppTest.from_file(str(ROOT / "dashboard" / "app.py"), default_timeout=60).run()
        return at.switch_page("pages/bias.py").run()
    return open_page


def test_bias_page_shows_the_worst_slices(bias_page):
    at = bias_page(table(1200, seed=0, ages=(30, 40), planted=PLANTED).drop(columns="found"))
    assert not at.exception
    assert "Worst slices" in [h.value for h in at.subheader]
    worst = next(d.value for d in at.dataframe if "slice" in d.value.columns)
    assert worst.groupby("metric", sort=False)["slice"].first().to_dict() == {
        "age MAE": "Indian · female", "gender error rate": "Indian · female"}
    assert len(worst) < 20  # the discoveries only
    assert any("Benjamini-Hochberg" in c.value for c in at.caption)
    at.toggle(key="bias_slices_all").set_value(True).run()
    assert not at.exception and len(next(d.value for d in at.dataframe if "slice" in d.value.columns)) > len(worst)


def test_bias_page_without_slices_says_so(bias_page):
    at = bias_page(None)  # the tiny checkpoint's split: no slice of 30 faces
    assert not at.exception and "Worst slices" in [h.value for h in at.subheader]
    assert any(i.value.startswith("No slice has 30 faces") for i in at.info)
