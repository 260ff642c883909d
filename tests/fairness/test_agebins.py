"""Metrics when ages are bins (FairFace) and reports over whatever group columns a table has: the bin
metrics against hand counts, the miss rate of photos without a face found, and a report on a FairFace-like
table whose figures equal an independent pandas computation from the CSV it was written to."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binomtest

from agegender.fairness import metrics
from agegender.fairness.groups import (
    ERR_BAD_GROUPING,
    MIN_COUNT,
    GroupReport,
    grouping_columns,
    groupings_for,
    prepare,
    wilson,
)
from agegender.fairness.measures import METRICS
from agegender.labels import FAIRFACE_BINS, bin_label
from agegender.predictions import load_predictions, write_predictions
from agegender.report.bias import build, to_html
from agegender.report.bias import to_json as report_json
from agegender.report.command import main as report_main

from ..conftest import ROOT

# no metric may warn where ages are bins or a group lost every face
pytestmark = pytest.mark.filterwarnings("error")

BINS = [bin_label(b) for b in FAIRFACE_BINS]  # "0-2" ... "70+", in age order
BIN_METRICS = ("age_bin_accuracy", "age_bin_within1", "age_bin_error")
AGE_METRICS = ("age_mae", "age_medae", "age_cs5", "age_bias")
RACES = ("White", "Black", "Indian", "East Asian", "Southeast Asian", "Middle Eastern", "Latino_Hispanic")
# images per group and how many of them have no face found: Black is missed most, Middle Eastern too few to judge
SIZES = {"White": 500, "Black": 300, "Indian": 250, "East Asian": 250, "Southeast Asian": 200, "Middle Eastern": 12,
         "Latino_Hispanic": 188}
MISSED = {"White": 5, "Black": 60, "Indian": 5, "East Asian": 5, "Southeast Asian": 5, "Middle Eastern": 2,
          "Latino_Hispanic": 5}
SITES = ("north", "south", "east")


def fairface_predictions(seed: int = 0) -> pd.DataFrame:
    """A FairFace-like predictions table: ages as bins only, seven groups of fixed sizes, an extra site column,
    and a fixed number of photos per group without a face found (no predictions there)."""
    rng = np.random.default_rng(seed)
    race = np.concatenate([[r] * k for r, k in SIZES.items()])
    missed = np.concatenate([np.arange(k) < MISSED[r] for r, k in SIZES.items()])
    order = rng.permutation(len(race))
    race, missed = race[order], missed[order]
    n = len(race)
    true = rng.integers(0, len(BINS), n)
    lo = np.array([b[0] for b in FAIRFACE_BINS])[true]
    width = np.array([(b[1] if b[1] is not None else 85) - b[0] + 1 for b in FAIRFACE_BINS])[true]
    actual = lo + rng.random(n) * width
    pred = np.clip(actual + rng.normal(0, np.where(race == "Black", 9, 5)), 0, None).round(2)
    female = rng.random(n) < 0.5
    p = 1 / (1 + np.exp(-(np.where(female, 2.0, -2.0) + rng.normal(0, 2, n))))
    return pd.DataFrame({
        "file": [f"ff/{i}.jpg" for i in range(n)], "split": "all", "age_bin": np.array(BINS)[true],
        "gender": np.where(female, "female", "male"), "race": race, "site": np.array(SITES)[np.arange(n) % 3],
        "found": ~missed, "pred_age": np.where(missed, np.nan, pred), "p_female": np.where(missed, np.nan, p.round(4)),
    })


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    path = tmp_path_factory.mktemp("ff") / "predictions-all.csv"
    write_predictions(fairface_predictions(), path)
    return path


@pytest.fixture(scope="module")
def table(written):
    return prepare(load_predictions(path=written))


# --- bin metrics by hand ---------------------------------------------------------------------------------

def tiny() -> pd.DataFrame:
    """Six faces found and one photo without: the bin errors are 0, +1, -1, +4, 0, -2 (3-9 read as 40-49 is
    four bins off; every bin between is named in the table, as on FairFace)."""
    return pd.DataFrame({
        "file": [f"t{i}.jpg" for i in range(7)],
        "age_bin": ["20-29", "20-29", "30-39", "3-9", "70+", "10-19", "50-59"],
        "gender": ["female", "male", "female", "male", "female", "male", "female"],
        "site": ["a", "a", "a", "b", "b", "b", "b"],
        "found": [True, True, True, True, True, True, False],
        "pred_age": [25.0, 35.0, 22.0, 45.0, 90.0, 1.0, np.nan],
        "p_female": [0.9, 0.2, 0.4, 0.6, 0.7, 0.1, np.nan],
    })


def test_bin_metrics_by_hand():
    t = prepare(tiny())
    assert list(t["pred_age_bin"]) == ["20-29", "30-39", "20-29", "40-49", "70+", "0-2", ""]
    o = GroupReport(t, n_boot=0).overall
    assert o["age_bin_accuracy"] == pytest.approx(2 / 6)
    assert o["age_bin_within1"] == pytest.approx(4 / 6)
    assert o["age_bin_error"] == pytest.approx((0 + 1 - 1 + 4 + 0 - 2) / 6)
    assert o["gender_accuracy"] == pytest.approx(4 / 6)  # the 30-39 woman at 0.4 and the 3-9 boy at 0.6 are wrong
    for m in AGE_METRICS:
        assert np.isnan(o[m])  # no exact age: undefined, not zero
    assert (o["n"], o["n_images"], o["n_missed"]) == (6, 7, 1)
    assert METRICS["age_bin_error"].unit == "bins" and METRICS["age_bin_error"].higher_is_better is None


def test_a_group_counts_the_bins_between_even_where_it_holds_none_of_them():
    """Site b alone names no bin between 3-9 and 40-49: its error is still four bins, as in the whole table."""
    by_site = GroupReport(prepare(tiny()), "site", n_boot=0, min_count=1).by_group.set_index("site")
    assert by_site.loc["b", "age_bin_error"] == pytest.approx((4 + 0 - 2) / 3)
    assert by_site.loc["b", "age_bin_accuracy"] == pytest.approx(1 / 3)
    assert by_site.loc["a", "age_bin_error"] == pytest.approx(0)
    assert (by_site.loc["b", "n"], by_site.loc["b", "n_missed"]) == (3, 1)


def test_summary_of_bins_and_of_exact_ages():
    s = metrics.summary_of(tiny())
    assert (s["n"], s["n_found"]) == (7, 6)
    assert s["age_mae"] is None and s["age_cs5"] is None and s["age_bias"] is None
    assert s["age_bin_accuracy"] == pytest.approx(2 / 6) and s["age_bin_within1"] == pytest.approx(4 / 6)
    assert s["age_bin_error"] == pytest.approx(1 / 3) and s["gender_accuracy"] == pytest.approx(4 / 6)
    # exact ages, as training holds them: the same figures as the table evaluation writes of them
    age = np.array([1, 25, 31, 47, 72, 15.0])
    pred = np.array([2, 27, 24, 47, 60, 30.0])
    gender = np.array([0, 1, 0, 1, 0, 1])
    p = np.array([0.2, 0.8, 0.6, 0.9, 0.1, 0.3])
    s = metrics.summary(age, pred, gender, p)
    assert s["n"] == s["n_found"] == 6
    assert s["age_mae"] == pytest.approx(np.abs(pred - age).mean())
    assert s["age_bin_accuracy"] == pytest.approx(3 / 6)  # 0-2, 20-29, 40-49 right; 30-39, 70+, 10-19 not
    assert s["age_bin_error"] == pytest.approx((0 + 0 - 1 + 0 - 1 + 2) / 6)  # 15 read as 30: two bins up
    assert s["gender_accuracy"] == pytest.approx(4 / 6)


def test_a_group_whose_every_face_was_missed_is_reported_not_dropped():
    t = tiny()
    t.loc[t["site"] == "b", ["found", "pred_age", "p_female"]] = (False, np.nan, np.nan)
    rep = GroupReport(prepare(t), "site", n_boot=20, min_count=1)
    b = rep.by_group.set_index("site").loc["b"]
    assert (b["n"], b["n_images"], b["n_missed"], b["missed_rate"]) == (0, 4, 4, 1.0)
    assert b["too_small"] and all(np.isnan(b[m]) for m in METRICS)
    d = rep.disparity().set_index("metric").loc["missed_rate"]  # judged on images, not on faces found
    assert (d["worst_group"], d["best_group"], d["worst"], d["best"]) == ("b", "a", 1.0, 0.0)


@pytest.mark.parametrize(("k", "n"), [(0, 12), (2, 12), (60, 300), (300, 300), (5, 500)])
def test_wilson_interval_is_scipys(k, n):
    want = binomtest(k, n).proportion_ci(method="wilson")
    assert wilson(k, n) == pytest.approx((want.low, want.high))


# --- a FairFace-like report ----------------------------------------------------------------------------------

def test_groupings_of_a_fairface_table(table):
    assert grouping_columns(table) == ["age_bucket", "gender", "age_bin", "race", "site"]
    assert groupings_for(table) == ["age_bucket", "gender", "race", "race:gender", "site", "site:gender",
                                    "age_bucket:race"]
    # a bin-only row's age bucket is its FairFace bin, ordered by age
    assert (table["age_bucket"].astype(str) == table["age_bin"]).all()
    assert list(table["age_bucket"].cat.categories) == BINS
    with pytest.raises(ValueError) as e:
        build(table, ["race", "race:shoe"], n_boot=10)
    assert str(e.value) == ERR_BAD_GROUPING.format(grouping="race:shoe",
                                                   known="age_bucket, gender, age_bin, race, site")


def independent(path) -> pd.DataFrame:
    """Per race, from the CSV alone: images, faces found, and the bin and gender figures over the found."""
    raw = pd.read_csv(path)
    index = {label: i for i, label in enumerate(BINS)}
    raw["found"] = raw["found"].astype(str) == "True"
    hit = raw[raw["found"]].copy()
    hit["bin_err"] = hit["pred_age_bin"].map(index) - hit["age_bin"].map(index)
    hit["right"] = (hit["p_female"] >= 0.5) == (hit["gender"] == "female")
    out = raw.groupby("race").size().rename("n_images").to_frame()
    out["n"] = hit.groupby("race").size()
    out["age_bin_accuracy"] = hit.groupby("race")["bin_err"].apply(lambda e: (e == 0).mean())
    out["age_bin_within1"] = hit.groupby("race")["bin_err"].apply(lambda e: (e.abs() <= 1).mean())
    out["age_bin_error"] = hit.groupby("race")["bin_err"].mean()
    out["gender_accuracy"] = hit.groupby("race")["right"].mean()
    return out


def test_report_on_a_fairface_table_matches_pandas_on_its_csv(written, table):
    reports = build(load_predictions(path=written), ["race", "site", "race:site", "age_bin:gender"], n_boot=200)
    rep = reports["race"]
    got = rep.by_group.set_index("race")
    want = independent(written)
    assert list(got.index) == sorted(RACES)
    for race, w in want.iterrows():
        g = got.loc[race]
        assert (g["n_images"], g["n"], g["n_missed"]) == (SIZES[race], SIZES[race] - MISSED[race], MISSED[race])
        assert (g["n_images"], g["n"]) == (w["n_images"], w["n"])
        assert g["too_small"] == (g["n"] < MIN_COUNT)
        for m in (*BIN_METRICS, "gender_accuracy"):
            assert g[m] == pytest.approx(w[m]), (race, m)
        for m in AGE_METRICS:
            assert np.isnan(g[m]) and np.isnan(g[f"{m}_lo"]) and np.isnan(g[f"{m}_hi"])
        assert g["missed_rate"] == pytest.approx(MISSED[race] / SIZES[race])
        assert (g["missed_rate_lo"], g["missed_rate_hi"]) == pytest.approx(wilson(MISSED[race], SIZES[race]))
        if not g["too_small"]:
            for m in (*BIN_METRICS, "gender_accuracy"):
                assert g[f"{m}_lo"] <= g[m] <= g[f"{m}_hi"], (race, m)
    assert got.loc["Middle Eastern", "too_small"] and not got.drop(index="Middle Eastern")["too_small"].any()

    d = rep.disparity().set_index("metric")
    assert not set(AGE_METRICS) & set(d.index)  # undefined on bins: no disparity to show
    judged = set(got.index[~got["too_small"]])
    for m in (*BIN_METRICS, "gender_accuracy"):
        assert {d.loc[m, "worst_group"], d.loc[m, "best_group"]} <= judged
    assert d.loc["missed_rate", "worst_group"] == "Black" and d.loc["missed_rate", "worst"] == pytest.approx(0.2)

    o = rep.overall
    assert (o["n_images"], o["n_missed"]) == (sum(SIZES.values()), sum(MISSED.values()))
    assert o["age_bin_accuracy"] == pytest.approx((want["age_bin_accuracy"] * want["n"]).sum() / want["n"].sum())
    sites = reports["site"].by_group.set_index("site")
    assert list(sites.index) == sorted(SITES) and sites["n_images"].sum() == o["n_images"]
    cross = reports["race:site"].by_group
    assert len(cross) == len(RACES) * len(SITES) and cross["n_missed"].sum() == o["n_missed"]
    assert reports["age_bin:gender"].by_group["age_bin"].tolist()[::2] == BINS  # bins in age order

    js = report_json(reports, str(written))
    assert js["overall"]["age_mae"] is None  # NaN is no JSON
    assert js["overall"]["age_bin_accuracy"] == pytest.approx(o["age_bin_accuracy"])
    page = to_html(reports, load_predictions(path=written), str(written))
    assert "no face found" in page and "age bin accuracy" in page and f"of {o['n_images']} images" in page


def test_report_command_on_a_fairface_csv(written, tmp_path):
    out = tmp_path / "out.json"
    r = subprocess.run([sys.executable, "-m", "agegender.report", "--predictions", str(written), "--by", "race",
                        "--json", str(out), "--n-boot", "100"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    data = json.loads(out.read_text())
    assert list(data["groupings"]) == ["race"]
    groups = {g["race"]: g for g in data["groupings"]["race"]["groups"]}
    assert set(groups) == set(RACES)
    for race, g in groups.items():
        assert (g["n_images"], g["n_missed"]) == (SIZES[race], MISSED[race])
        assert g["age_mae"] is None and g["age_bin_accuracy"] is not None
        assert g["too_small"] == (g["n"] < MIN_COUNT)
    assert "missed_rate" in {d["metric"] for d in data["groupings"]["race"]["disparity"]}
    assert f"no face found {sum(MISSED.values())}/{sum(SIZES.values())}" in r.stdout


def test_report_command_defaults_to_the_tables_own_groupings(written, tmp_path, capsys):
    out = tmp_path / "out.json"
    assert report_main(["--predictions", str(written), "--n-boot", "20", "--json", str(out)]) == 0
    assert list(json.loads(out.read_text())["groupings"]) == groupings_for(load_predictions(path=written))
    assert "age bin accuracy" in capsys.readouterr().out
