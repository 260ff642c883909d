import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, mean_absolute_error, median_absolute_error, roc_auc_score

from agegender.fairness.groups import (
    DEFAULT_GROUPINGS,
    ERR_BAD_GROUPING,
    GroupReport,
    grouping_columns,
    groupings_for,
    parse_grouping,
    prepare,
)
from agegender.fairness.measures import METRICS
from agegender.labels import RACES
from agegender.predictions import ERR_MISSING_COLUMNS
from agegender.report.command import main as report_main


def fake_predictions(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    age = rng.integers(0, 90, n)
    race = rng.choice(RACES, n, p=[0.45, 0.2, 0.15, 0.15, 0.05])
    female = rng.random(n) < 0.5
    noise = np.where(race == "Black", 9, 5)  # one group is harder, as real data would have it
    logit = np.where(female, 2.0, -2.0) + rng.normal(0, 2, n)
    return pd.DataFrame({
        "file": [f"f{i}.jpg" for i in range(n)], "age": age,
        "gender": np.where(female, "female", "male"), "race": race,
        "pred_age": np.clip(age + rng.normal(1, noise), 0, None).round(2),
        "p_female": (1 / (1 + np.exp(-logit))).round(4),
    })


def ece_reference(p, y, bins=10):
    total = 0.0
    for b in range(bins):
        m = (np.minimum((p * bins).astype(int), bins - 1) == b)
        if m.any():
            total += m.sum() * abs(p[m].mean() - y[m].mean())
    return total / len(p)


@pytest.fixture(scope="module")
def table():
    return prepare(fake_predictions(1500))


@pytest.mark.parametrize("grouping", ["race", "age_bucket", "race:gender", "age_bucket:gender"])
def test_every_group_matches_sklearn_on_its_mask(table, grouping):
    rep = GroupReport(table, grouping, n_boot=20, min_count=1)
    cols = parse_grouping(grouping)
    assert rep.by_group["n"].sum() == len(table)
    for _, row in rep.by_group.iterrows():
        mask = np.ones(len(table), bool)
        for c in cols:
            mask &= table[c].astype(str).to_numpy() == row[c]
        g = table[mask]
        y = (g["gender"] == "female").to_numpy()
        pred = g["p_female"].to_numpy() >= 0.5
        err = g["pred_age"] - g["age"]
        assert row["n"] == mask.sum()
        assert row["age_mae"] == pytest.approx(mean_absolute_error(g["age"], g["pred_age"]))
        assert row["age_medae"] == pytest.approx(median_absolute_error(g["age"], g["pred_age"]))
        assert row["age_cs5"] == pytest.approx((err.abs() <= 5).mean())
        assert row["age_bias"] == pytest.approx(err.mean())
        assert row["gender_accuracy"] == pytest.approx(accuracy_score(y, pred))
        if 0 < y.sum() < len(y):
            assert row["gender_auc"] == pytest.approx(roc_auc_score(y, g["p_female"]))
        else:
            assert np.isnan(row["gender_auc"])
        if y.any():
            assert row["female_as_male"] == pytest.approx((~pred[y]).mean())
        if (~y).any():
            assert row["male_as_female"] == pytest.approx(pred[~y].mean())
        assert row["gender_ece"] == pytest.approx(ece_reference(g["p_female"].to_numpy(), y.astype(float)))


def test_intervals_contain_the_estimate_and_narrow_with_more_data():
    small = GroupReport(prepare(fake_predictions(200)), n_boot=300).overall
    large = GroupReport(prepare(fake_predictions(5000)), n_boot=300).overall
    for m in METRICS:
        for o in (small, large):
            if m == "gender_ece" and o is small:
                # ECE sums |mean p - mean y| over bins, so resampling noise only adds to it: on 200 images the
                # percentile interval can lie wholly above the estimate (16 of 100 seeds), never below it
                assert o[f"{m}_lo"] <= o[f"{m}_hi"] and o[m] <= o[f"{m}_hi"], m
            else:
                assert o[f"{m}_lo"] <= o[m] <= o[f"{m}_hi"], m
        assert large[f"{m}_hi"] - large[f"{m}_lo"] < small[f"{m}_hi"] - small[f"{m}_lo"], m


def test_large_groups_use_rescaled_subsamples_with_the_same_width():
    df = prepare(fake_predictions(40_000, seed=3))
    exact = GroupReport(df, n_boot=200, exact_n=40_000, metrics=["age_mae", "gender_accuracy"]).overall
    sub = GroupReport(df, n_boot=200, exact_n=2_000, metrics=["age_mae", "gender_accuracy"]).overall
    for m in ("age_mae", "gender_accuracy"):
        w_exact, w_sub = exact[f"{m}_hi"] - exact[f"{m}_lo"], sub[f"{m}_hi"] - sub[f"{m}_lo"]
        assert w_sub == pytest.approx(w_exact, rel=0.3), m
        assert sub[f"{m}_lo"] <= sub[m] <= sub[f"{m}_hi"]


def test_small_groups_are_flagged_not_hidden(table):
    rep = GroupReport(table, "race:gender", n_boot=20, min_count=60)
    small = rep.by_group[rep.by_group["too_small"]]
    assert len(small) > 0 and (small["n"] < 60).all()
    assert (rep.by_group[~rep.by_group["too_small"]]["n"] >= 60).all()
    judged = set(rep.group_names[~rep.by_group["too_small"]])
    d = rep.disparity()
    assert set(d["worst_group"]) <= judged and set(d["best_group"]) <= judged
    mae = d.set_index("metric").loc["age_mae"]
    assert "Black" in mae["worst_group"]  # the harder group surfaces
    assert mae["gap"] == pytest.approx(mae["worst"] - mae["best"])


def test_seeded(table):
    a = GroupReport(table, "race", n_boot=100, seed=4).by_group
    b = GroupReport(table, "race", n_boot=100, seed=4).by_group
    pd.testing.assert_frame_equal(a, b)


def test_errors(table):
    known = "age_bucket, gender, age_bin, race"
    for bad in ("race:shoe", "race:race", "race:gender:age_bucket"):
        with pytest.raises(ValueError) as e:
            parse_grouping(bad, grouping_columns(table))
        assert str(e.value) == ERR_BAD_GROUPING.format(grouping=bad, known=known)
        with pytest.raises(ValueError) as e:
            GroupReport(table, bad, n_boot=10)
        assert str(e.value) == ERR_BAD_GROUPING.format(grouping=bad, known=known)
    with pytest.raises(ValueError) as e:
        prepare(pd.DataFrame({"age": [1]}))
    assert str(e.value) == ERR_MISSING_COLUMNS.format(missing="gender, pred_age, p_female",
                                                      expected="gender, pred_age, p_female")


def test_utkface_tables_group_as_before(table):
    assert grouping_columns(table) == ["age_bucket", "gender", "age_bin", "race"]
    assert groupings_for(table) == list(DEFAULT_GROUPINGS)  # the names the dashboard pages import
    assert parse_grouping("age_bin:race", grouping_columns(table)) == ["age_bin", "race"]


def test_missed_faces_leave_the_metrics_of_the_faces_found_alone(table):
    """A face not found is a result: the metrics are those of the found faces alone, and each group's miss
    count and rate are its own."""
    missed = table.assign(found=np.arange(len(table)) % 7 != 3)
    missed.loc[~missed["found"], ["pred_age", "p_female"]] = np.nan
    with_missed = GroupReport(missed, "race", n_boot=50)
    alone = GroupReport(missed[missed["found"]], "race", n_boot=50)
    metric_cols = [c for m in METRICS for c in (m, f"{m}_lo", f"{m}_hi")]
    pd.testing.assert_frame_equal(with_missed.by_group[["race", "n", "too_small", *metric_cols]],
                                  alone.by_group[["race", "n", "too_small", *metric_cols]])
    counts = missed.groupby("race")["found"].agg(["size", "sum"])
    for _, r in with_missed.by_group.iterrows():
        size, hit = counts.loc[r["race"]]
        assert (r["n_images"], r["n"], r["n_missed"]) == (size, hit, size - hit)
        assert r["missed_rate"] == pytest.approx((size - hit) / size)
        assert r["missed_rate_lo"] <= r["missed_rate"] <= r["missed_rate_hi"]
    assert "missed_rate" in set(with_missed.disparity()["metric"])
    assert "missed_rate" not in set(alone.disparity()["metric"])  # nothing missed: no miss-rate disparity


def test_report_cli_writes_json_and_html(tmp_path, capsys):
    csv = tmp_path / "p.csv"
    fake_predictions(800).to_csv(csv, index=False)
    js, page = tmp_path / "r.json", tmp_path / "r.html"
    assert report_main(["--predictions", str(csv), "--by", "race,race:gender", "--n-boot", "200",
                        "--json", str(js), "--html", str(page)]) == 0
    data = json.loads(js.read_text())
    assert data["overall"]["n"] == 800
    groups = data["groupings"]["race:gender"]["groups"]
    assert sum(g["n"] for g in groups) == 800
    for g in groups:
        for m in [*METRICS, "missed_rate"]:
            assert m in g and f"{m}_lo" in g and f"{m}_hi" in g
        assert g["n_images"] == g["n"] and g["n_missed"] == 0 and g["missed_rate"] == 0
    text = page.read_text()
    assert text.startswith("<!doctype html>") and text.rstrip().endswith("</html>")
    assert text.count("Plotly.newPlot") >= 4 and 'src="http' not in text  # plotly inlined, works offline
    assert "too small" not in capsys.readouterr().err


def test_report_cli_errors(tmp_path, capsys):
    assert report_main(["--checkpoint", str(tmp_path)]) == 2
    assert "meta.json is missing" in capsys.readouterr().err
    csv = tmp_path / "p.csv"
    fake_predictions(50).to_csv(csv, index=False)
    assert report_main(["--predictions", str(csv), "--by", "race,shoe"]) == 2
    err = ERR_BAD_GROUPING.format(grouping="shoe", known="age_bucket, gender, age_bin, race")
    assert capsys.readouterr().err == f"error: {err}\n"
