import numpy as np
import pandas as pd
import pytest

from agegender.fairness.compare import (
    ERR_ALREADY_SPLIT,
    ERR_FEW_GROUPS,
    ERR_NOTHING_SHARED,
    agreement,
    default_metrics,
    gap_change,
    gaps,
    pair,
    paired_columns,
    paired_deltas,
)
from agegender.fairness.compare import main as compare_main
from agegender.fairness.groups import ERR_BAD_GROUPING
from agegender.predictions import load_predictions, write_predictions
from agegender.report import charts

from .test_agebins import BINS, fairface_predictions
from .test_fairness import fake_predictions


@pytest.fixture(scope="module")
def two():
    a = fake_predictions(900, seed=1)
    b = a.copy()
    b["pred_age"] = (b["pred_age"] + np.where(b["race"] == "Asian", 4.0, 0.0)).round(2)  # worse on one group
    b.loc[::4, "p_female"] = 1 - b.loc[::4, "p_female"]
    return a, b.sample(frac=1, random_state=0).iloc[:800]  # b scored a subset, in another order


def test_pairs_only_shared_images(two):
    a, b = two
    m = pair(a, b)
    assert len(m) == 800 and set(m["file"]) == set(b["file"])
    with pytest.raises(ValueError, match="share no scored image") as e:
        pair(a.iloc[:5], a.iloc[5:10])
    assert str(e.value) == ERR_NOTHING_SHARED


def test_identical_checkpoints_have_zero_deltas(two):
    a, _ = two
    d = paired_deltas(pair(a, a), "race", n_boot=200)
    assert np.allclose(d["age_mae_delta"], 0) and np.allclose(d["age_mae_delta_lo"], 0)
    assert np.allclose(d["age_mae_delta_hi"], 0)


def test_deltas_match_direct_computation_and_find_the_worse_group(two):
    a, b = two
    m = pair(a, b)
    d = paired_deltas(m, "race", n_boot=300).set_index("race")
    for race, g in m.groupby("race"):
        mae_a = (g["pred_age_a"] - g["age"]).abs().mean()
        mae_b = (g["pred_age_b"] - g["age"]).abs().mean()
        assert d.loc[race, "age_mae_delta"] == pytest.approx(mae_b - mae_a)
        assert d.loc[race, "age_mae_delta_lo"] <= d.loc[race, "age_mae_delta"] <= d.loc[race, "age_mae_delta_hi"]
    assert d["age_mae_delta"].idxmax() == "Asian" and d.loc["Asian", "age_mae_delta_lo"] > 0


def test_agreement(two):
    a, b = two
    ag = agreement(pair(a, b), "race")
    m = pair(a, b)
    expected = ((m["p_female_a"] >= 0.5) != (m["p_female_b"] >= 0.5)).mean()
    assert ag["gender_disagreement"] == pytest.approx(expected)
    assert 0.15 < expected < 0.35
    assert ag["by_group"]["n"].sum() == 800


def test_gap_change_matches_direct_computation():
    # 3000 images, not 900: after the change the gap is the spread of four near-equal groups, which resampling
    # only widens, so on 900 the interval reached above zero for 7 seeds in 100, and missed the estimate for 2
    # (on 3000: none in 100; the interval's top at most -0.39)
    a = fake_predictions(3000, seed=1)
    b = a.copy()
    black = b["race"] == "Black"  # the hardest group gets twice as close to the truth
    b.loc[black, "pred_age"] = (b.loc[black, "age"] + (b.loc[black, "pred_age"] - b.loc[black, "age"]) / 2).round(2)
    m = pair(a, b)
    g = gap_change(m, "race", n_boot=300).set_index("metric")

    def gap(pred):
        mae = (m[pred] - m["age"]).abs().groupby(m["race"]).mean()
        return mae.max() - mae.min()

    r = g.loc["age_mae"]
    assert r["gap_a"] == pytest.approx(gap("pred_age_a")) and r["gap_b"] == pytest.approx(gap("pred_age_b"))
    assert r["change"] == pytest.approx(gap("pred_age_b") / gap("pred_age_a") - 1)
    assert r["change_lo"] <= r["change"] <= r["change_hi"] < 0  # clearly smaller
    same = gap_change(pair(a, a), "race", n_boot=100).set_index("metric")
    assert np.allclose(same[["change", "change_lo", "change_hi"]].to_numpy(), 0)
    with pytest.raises(ValueError, match="fewer than two groups"):
        gap_change(m, "race", min_count=10_000)


def test_standardised_gap_removes_the_age_mix():
    """Two groups whose error depends on age alone, one of them older: the raw MAE gap is large,
    the age-standardised gap is zero; halving one group's errors is measured against the overall mix."""
    rng = np.random.default_rng(0)
    a = fake_predictions(3000, seed=2)
    race = np.where(rng.random(len(a)) < 0.5, "White", "Asian")
    old = rng.random(len(a)) < np.where(race == "White", 0.7, 0.2)
    a["race"], a["age"] = race, np.where(old, rng.integers(60, 85, len(a)), rng.integers(20, 30, len(a)))
    sign = rng.choice([-1.0, 1.0], len(a))
    a["pred_age"] = a["age"] + sign * np.where(old, 8.0, 2.0)
    b = a.copy()
    b.loc[b["race"] == "White", "pred_age"] = b["age"] + (a["pred_age"] - a["age"]) / 2
    m = pair(a, b)
    raw = gap_change(m, "race", n_boot=100).set_index("metric").loc["age_mae"]
    std = gap_change(m, "race", n_boot=100, standardise="age_bucket").set_index("metric").loc["age_mae"]
    assert raw["gap_a"] > 2.5 and std["gap_a"] == pytest.approx(0, abs=1e-9)

    mix = m["age_bucket"].value_counts(normalize=True)
    per = (m["pred_age_b"] - m["age"]).abs().groupby([m["race"], m["age_bucket"]], observed=True).mean()
    direct = {r: sum(mix[k] * v for k, v in per[r].items()) / sum(mix[k] for k in per[r].index)
              for r in ("White", "Asian")}
    assert std["gap_b"] == pytest.approx(direct["Asian"] - direct["White"])
    with pytest.raises(ValueError, match="already split"):
        gap_change(m, "age_bucket:race", standardise="age_bucket")


def test_gaps_give_each_standardisation_or_why_not(two):
    m = pair(*two)
    g = gaps(m, "race", n_boot=50)
    assert list(g) == [None, "age_bucket"]
    for std, table in g.items():
        pd.testing.assert_frame_equal(table, gap_change(m, "race", n_boot=50, standardise=std))
    by_age = gaps(m, "age_bucket", n_boot=50)
    assert isinstance(by_age[None], pd.DataFrame)
    assert by_age["age_bucket"] == ERR_ALREADY_SPLIT.format(grouping="age_bucket", standardise="age_bucket")
    assert gaps(m, "race", min_count=10_000)[None] == ERR_FEW_GROUPS.format(grouping="race", min_count=10_000)


def test_delta_bars_draw_the_paired_deltas(two):
    m = pair(*two)
    d = paired_deltas(m, "race:gender", n_boot=50, min_count=100)
    fig = charts.delta_bars(d, "age_mae", "race:gender", "A", "B")
    bar = fig.data[0]
    assert list(bar.x) == [f"{r} · {g}" for r, g in zip(d["race"], d["gender"], strict=True)]
    np.testing.assert_allclose(bar.y, d["age_mae_delta"])
    np.testing.assert_allclose(np.asarray(bar.y) - bar.error_y.arrayminus, d["age_mae_delta_lo"])
    np.testing.assert_allclose(np.asarray(bar.y) + bar.error_y.array, d["age_mae_delta_hi"])
    assert list(bar.marker.color) == [charts.SMALL_COLOUR if s else charts.COLOUR for s in d["too_small"]]
    assert d["too_small"].any() and not d["too_small"].all()
    assert fig.layout.title.text == "age MAE: B − A by race:gender (grey: too small)"


def test_compare_cli_prints_deltas_and_gaps(tiny_checkpoint, tmp_path, capsys):
    assert compare_main([str(tiny_checkpoint), str(tiny_checkpoint), "--split", "val", "--by", "gender",
                         "--n-boot", "50", "--min-count", "1"]) == 0
    out = capsys.readouterr().out
    assert "delta +0.0000 [+0.0000, +0.0000]" in out and "best-to-worst gap over gender" in out
    assert "gap over gender, each group given the overall age_bucket mix:" in out
    assert "note: The intervals resample images, not training runs" in out  # seeds move more than images do
    assert compare_main([str(tiny_checkpoint), str(tiny_checkpoint), "--split", "val", "--n-boot", "50"]) == 0
    assert "note: no gap to judge: fewer than two groups of race" in capsys.readouterr().out
    assert compare_main([str(tiny_checkpoint), str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err.startswith("error: ")


@pytest.fixture(scope="module")
def bins_pair():
    """Two checkpoints on a FairFace-like table (ages as bins, race and site): b misses other faces as well,
    and reads one site's ages a bin older."""
    a = fairface_predictions(seed=4)
    b = a.copy()
    b.loc[::9, ["found", "pred_age", "p_female"]] = (False, np.nan, np.nan)
    north = b["found"] & (b["site"] == "north")
    b.loc[north, "pred_age"] = b.loc[north, "pred_age"] + 10
    return a, b


def test_bin_only_tables_pair_on_the_faces_found_in_both(bins_pair):
    a, b = bins_pair
    m = pair(a, b)
    both = a["found"] & b["found"]
    assert len(m) == both.sum() and set(m["file"]) == set(a.loc[both, "file"])
    assert paired_columns(m) == ["age_bucket", "gender", "age_bin", "race", "site"]
    assert default_metrics(m) == ("age_bin_accuracy", "gender_accuracy")
    with pytest.raises(ValueError) as e:
        paired_deltas(m, "site:shoe")
    assert str(e.value) == ERR_BAD_GROUPING.format(grouping="site:shoe",
                                                   known="age_bucket, gender, age_bin, race, site")


def test_an_old_table_pairs_with_its_completed_self(tmp_path):
    """The shipped checkpoints' CSVs have no age_bin or found column: they pair, row for row, with a table
    that has them."""
    old = fake_predictions(300, seed=5)
    write_predictions(old, tmp_path / "p.csv")
    new = load_predictions(path=tmp_path / "p.csv")
    assert {"age_bin", "found"} <= set(new) and not {"age_bin", "found"} & set(old)
    m = pair(old, new)
    assert len(m) == 300
    np.testing.assert_allclose(m["pred_age_a"], m["pred_age_b"])


def test_bin_deltas_by_any_grouping_match_direct_computation(bins_pair):
    a, b = bins_pair
    m = pair(a, b)
    index = {label: i for i, label in enumerate(BINS)}
    d = paired_deltas(m, "site:gender", n_boot=200)
    assert d["n"].sum() == len(m) and list(d.columns[:2]) == ["site", "gender"]
    for _, r in d.iterrows():
        g = m[(m["site"] == r["site"]) & (m["gender"] == r["gender"])]
        right = {s: (g[f"pred_age_bin_{s}"].map(index) == g["age_bin"].map(index)).mean() for s in "ab"}
        assert r["n"] == len(g)
        for side in "ab":
            assert r[f"age_bin_accuracy_{side}"] == pytest.approx(right[side])
        assert r["age_bin_accuracy_delta_lo"] <= r["age_bin_accuracy_delta"] <= r["age_bin_accuracy_delta_hi"]
        # the site whose ages b reads older is the only one it gets clearly worse at
        assert (r["age_bin_accuracy_delta_hi"] < 0) == (r["site"] == "north")
    same = paired_deltas(pair(a, a), "race", n_boot=50)
    assert np.allclose(same[["age_bin_accuracy_delta", "age_bin_accuracy_delta_lo", "age_bin_accuracy_delta_hi"]], 0)


@pytest.mark.filterwarnings("error")
def test_age_in_years_on_bins_is_undefined_not_an_error(bins_pair):
    m = pair(*bins_pair)
    d = paired_deltas(m, "race", metrics=("age_mae", "age_bias"), n_boot=50)
    assert d[["age_mae_a", "age_mae_b", "age_mae_delta", "age_mae_delta_lo"]].isna().all().all()
    g = gap_change(m, "race", metrics=("age_mae", "age_bin_accuracy"), n_boot=50).set_index("metric")
    assert g.loc["age_mae", ["gap_a", "gap_b", "change", "change_lo"]].isna().all()
    assert np.isfinite(g.loc["age_bin_accuracy", ["gap_a", "gap_b", "change"]].astype(float)).all()


def test_standardising_on_age_bucket_works_on_bins(bins_pair):
    """A bin-only table's age bucket is its FairFace bin: the standardised gap weights each group's per-bin
    figures by the overall bin mix, as on exact ages."""
    m = pair(*bins_pair)
    std = gap_change(m, "site", n_boot=100, standardise="age_bucket").set_index("metric")
    assert list(std.index) == ["age_bin_accuracy", "gender_accuracy"]
    mix = m["age_bucket"].value_counts(normalize=True)
    for side in "ab":
        right = (m[f"pred_age_bin_{side}"] == m["age_bin"]).groupby([m["site"], m["age_bucket"]], observed=True).mean()
        per_site = {s: sum(mix[k] * v for k, v in right[s].items()) / sum(mix[k] for k in right[s].index)
                    for s in m["site"].unique()}
        want = max(per_site.values()) - min(per_site.values())
        assert std.loc["age_bin_accuracy", f"gap_{side}"] == pytest.approx(want)
    assert std.loc["age_bin_accuracy", "change_lo"] <= std.loc["age_bin_accuracy", "change"] \
        <= std.loc["age_bin_accuracy", "change_hi"]


def test_compare_cli_groups_by_any_column(tiny_checkpoint, capsys):
    assert compare_main([str(tiny_checkpoint), str(tiny_checkpoint), "--split", "val", "--by", "age_bin:gender",
                         "--n-boot", "20", "--min-count", "1"]) == 0
    out = capsys.readouterr().out
    assert "per group (age_bin:gender):" in out and "best-to-worst gap over age_bin:gender" in out
    assert compare_main([str(tiny_checkpoint), str(tiny_checkpoint), "--split", "val", "--by", "shoe"]) == 2
    assert capsys.readouterr().err.startswith("error: unknown grouping 'shoe'")


def test_compare_cli_takes_two_evaluation_sets_predictions_files(tmp_path, capsys):
    a = fairface_predictions()
    b = a.assign(p_female=1 - a["p_female"])  # every gender call flipped: accuracy a -> 1 - a
    write_predictions(a, tmp_path / "a.csv")
    write_predictions(b, tmp_path / "b.csv")
    assert compare_main([str(tmp_path / "a.csv"), str(tmp_path / "b.csv"), "--by", "race", "--n-boot", "50"]) == 0
    out = capsys.readouterr().out
    both = a["found"].astype(bool).sum()
    assert out.startswith(f"predictions files, {both} images scored by both")
    def acc(t):
        return ((t["p_female"] >= 0.5) == (t["gender"] == "female"))[t["found"].astype(bool)].mean()

    assert f"gender accuracy: A {acc(a):.4f}  B {acc(b):.4f}" in out
