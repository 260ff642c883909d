"""agegender.fairness.genderband: AUC against a pairwise count, DeLong's coverage, ECE on calibrated and miscalibrated
models, the band's what-if counted by hand, and the Gender threshold page."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

from agegender.fairness import genderband as gb
from agegender.fairness.groups import metric_columns, prepare
from agegender.fairness.measures import METRICS
from agegender.labels import GENDERS

from ..conftest import ROOT


def table(female, p_female, **groups) -> pd.DataFrame:
    """A predictions table of exact ages with the given truth, P(female) and group columns."""
    female = np.asarray(female, bool)
    return pd.DataFrame({"age": 30.0, "gender": np.where(female, GENDERS[1], GENDERS[0]), **groups,
                         "pred_age": 30.0, "p_female": np.asarray(p_female, float)})


def pairwise_auc(female, p) -> float:
    pos, neg = p[female], p[~female]
    diff = pos[:, None] - neg[None, :]
    return ((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size


def test_auc_is_the_pairwise_count_with_ties_half():
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(5, 300))
        female = rng.random(n) < 0.4
        female[:2] = [True, False]
        p = rng.integers(0, 8, n) / 7  # few distinct values: many ties
        p = np.where(female, np.minimum(p + 0.1 * rng.random(n).round(), 1), p)
        auc, lo, hi = gb.auc_delong(female, p)
        assert auc == pytest.approx(pairwise_auc(female, p), abs=1e-12)
        assert lo <= auc <= hi
        # the same figure as the bias report's gender_auc, and the ROC curve's area
        df = table(female, p)
        assert auc == pytest.approx(METRICS["gender_auc"].fn(metric_columns(prepare(df))), abs=1e-12)
        curve = gb.roc_by_group(df, None).curves
        assert np.trapezoid(curve["tpr"], curve["fpr"]) == pytest.approx(auc, abs=1e-12)


def test_delong_interval_covers_the_true_auc():
    """Binormal scores: women N(d, 1), men N(0, 1), so AUC = Phi(d / sqrt 2); 95% intervals cover it ~95%."""
    rng = np.random.default_rng(1)
    d, truth, hits, reps = 1.0, norm.cdf(1.0 / np.sqrt(2)), 0, 300
    for _ in range(reps):
        female = np.r_[np.ones(150, bool), np.zeros(200, bool)]
        score = rng.normal(0, 1, len(female)) + d * female
        _, lo, hi = gb.auc_delong(female, 1 / (1 + np.exp(-score)))
        hits += lo <= truth <= hi
    assert 0.91 <= hits / reps <= 0.99


def test_a_group_with_one_gender_has_no_auc_and_says_so():
    df = table([1, 1, 0, 0, 1, 1], [0.9, 0.2, 0.3, 0.1, 0.8, 0.7], race=["A", "A", "A", "A", "B", "B"])
    roc = gb.roc_by_group(df, "race")
    b = roc.by_group.set_index("group").loc["B"]
    assert np.isnan(b["gender_auc"]) and np.isnan(b["gender_auc_lo"]) and b["note"] == "only female faces: no ROC " \
                                                                                        "curve or AUC"
    assert (b["n"], b["n_female"], b["n_male"]) == (2, 2, 0)
    assert "B" not in set(roc.curves["group"])
    a = roc.by_group.set_index("group").loc["A"]
    assert a["gender_auc"] == 0.75 and a["note"] == ""  # 0.9 above both men, 0.2 above 0.1 only: 3 of 4 pairs
    json.dumps(gb.summary(df, "race"))  # NaN as null, numpy types as plain numbers


def test_reliability_of_a_calibrated_and_a_miscalibrated_model():
    rng = np.random.default_rng(2)
    n, bins = 40_000, 10
    p = rng.random(n)
    calibrated = table(rng.random(n) < p, p)
    rel = gb.reliability_by_group(calibrated, None, bins)
    ece = rel.by_group["gender_ece"].iloc[0]
    # each bin's |gap| is about |N(0, sd)| with sd <= 0.5 / sqrt(n / bins): its mean is under 0.8 sd
    bound = 3 * 0.5 / np.sqrt(n / bins)
    assert ece < bound
    assert rel.bins["n"].sum() == n and len(rel.bins) == bins
    b = rel.bins
    assert ((b["share_female_lo"] <= b["p_female"]) & (b["p_female"] <= b["share_female_hi"])).mean() >= 0.8
    over = table(rng.random(n) < p, np.clip(0.5 + 1.6 * (p - 0.5), 0, 1))  # over-confident either way
    assert gb.reliability_by_group(over, None, bins).by_group["gender_ece"].iloc[0] > 3 * bound  # about 0.095
    # with 10 bins, the bias report's gender_ece
    assert ece == pytest.approx(METRICS["gender_ece"].fn(metric_columns(prepare(calibrated))), abs=1e-12)


def test_band_what_if_counted_by_hand():
    #                 woman  woman  woman  woman  man    man    man    man    man    woman
    p = np.array([0.90, 0.52, 0.47, 0.20, 0.10, 0.50, 0.55, 0.80, 0.44, 0.60])
    female = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 1], bool)
    df = table(female, p, site=["x"] * 5 + ["y"] * 5)
    df.loc[len(df)] = df.iloc[0]  # a face not found is not counted
    df["found"] = [True] * 10 + [False]
    w = gb.band_what_if(df, "site", threshold=0.5, band=(0.45, 0.55), min_count=1)
    t = w.by_group.set_index(["group", "setting"])
    # overall, plain threshold: women 0.90 0.52 0.60 right, 0.47 0.20 wrong; men 0.10 0.44 right, 0.50 0.55 0.80 wrong
    o = t.loc[("overall", gb.PLAIN)]
    assert (o["n"], o["n_decided"], o["abstained"]) == (10, 10, 0)
    assert (o["gender_accuracy"], o["female_as_male"], o["male_as_female"]) == (0.5, 2 / 5, 3 / 5)
    # the band [0.45, 0.55] holds 0.52, 0.47, 0.50, 0.55: decided are women 0.90 0.20 0.60, men 0.10 0.80 0.44
    b = t.loc[("overall", gb.BANDED)]
    assert (b["n_decided"], b["abstained"]) == (6, 0.4)
    assert (b["gender_accuracy"], b["female_as_male"], b["male_as_female"]) == (4 / 6, 1 / 3, 1 / 3)
    assert (b["abstained_lo"], b["abstained_hi"]) == pytest.approx((0.16818, 0.68732), abs=1e-4)  # Wilson
    lo = t.loc[("overall", gb.LOWER_EDGE)]  # 0.45: 0.47 becomes female too
    assert (lo["threshold"], lo["female_as_male"], lo["male_as_female"]) == (0.45, 1 / 5, 3 / 5)
    hi = t.loc[("overall", gb.UPPER_EDGE)]  # 0.55: 0.52 is male, 0.55 still female (P >= threshold)
    assert (hi["female_as_male"], hi["male_as_female"], hi["gender_accuracy"]) == (3 / 5, 2 / 5, 0.5)
    # per group: x holds 0.52 0.47 in the band (2 of 5), y holds 0.50 0.55 (2 of 5)
    x, y = t.loc[("x", gb.BANDED)], t.loc[("y", gb.BANDED)]
    assert (x["abstained"], y["abstained"]) == (0.4, 0.4)
    # x decides 0.90 (woman, right), 0.20 (woman, wrong), 0.10 (man, right); y 0.80 (man, wrong), 0.44 (man,
    # right), 0.60 (woman, right)
    assert (x["gender_accuracy"], y["gender_accuracy"]) == (2 / 3, 2 / 3)
    assert (x["female_as_male"], x["male_as_female"], y["female_as_male"], y["male_as_female"]) == (0.5, 0, 0, 0.5)
    assert w.gap["gap"] == 0 and w.gap["groups_judged"] == 2
    assert gb.abstention(w)["group"].tolist() == ["x", "y"]
    with pytest.raises(ValueError, match=r"must hold the threshold 0.6"):
        gb.band_what_if(df, "site", threshold=0.6, band=(0.45, 0.55))


def test_the_band_follows_the_threshold():
    # moved by the threshold's move, keeping its place around it
    assert gb.band_following(0.35, (0.45, 0.55), previous=0.5) == pytest.approx((0.30, 0.40))
    assert gb.band_following(0.6, (0.3, 0.7), previous=0.4) == pytest.approx((0.5, 0.9))  # 0.1 below, 0.3 above
    # shifted back inside [0, 1] at an end, its width kept
    assert gb.band_following(0.9, (0.2, 0.8), previous=0.5) == pytest.approx((0.4, 1.0))
    assert gb.band_following(0.02, (0.45, 0.55), previous=0.5) == pytest.approx((0.0, 0.10))
    assert gb.band_following(1.0, (0.0, 1.0), previous=0.5) == (0.0, 1.0)
    # no previous threshold: a band that holds the threshold stays, one that does not is centred on it
    assert gb.band_following(0.47, (0.45, 0.55)) == (0.45, 0.55)
    assert gb.band_following(0.35, (0.45, 0.55)) == pytest.approx((0.30, 0.40))
    assert gb.band_following(0.35, (0.45, 0.55), previous=0.9) == pytest.approx((0.30, 0.40))  # did not hold 0.9
    # a zero-width band is the threshold itself
    assert gb.band_following(0.7, (0.5, 0.5), previous=0.5) == pytest.approx((0.7, 0.7))
    # rounded to a slider's steps: no 0.30000000000000004 in a widget
    assert gb.band_following(0.35, (0.45, 0.55), previous=0.5, decimals=2) == (0.3, 0.4)
    assert gb.band_following(0.98, (0.45, 0.55), previous=0.5, decimals=2) == (0.9, 1.0)
    with pytest.raises(ValueError) as e:
        gb.band_following(1.2, (0.45, 0.55))
    assert str(e.value) == "the threshold 1.2 and the band [0.45, 0.55] must lie in [0, 1], with lo <= hi"


def test_a_moved_band_always_holds_its_threshold_and_keeps_its_width():
    rng = np.random.default_rng(5)
    for _ in range(2000):
        lo, hi = np.sort(rng.random(2)) if rng.random() < 0.8 else np.sort(rng.integers(0, 101, 2) / 100)
        previous = rng.uniform(lo, hi)
        t = rng.random(50) if rng.random() < 0.8 else rng.integers(0, 101, 50) / 100
        new_lo, new_hi = gb.moved_bands(t, (lo, hi), previous)
        assert ((0 <= new_lo) & (new_lo <= t) & (t <= new_hi) & (new_hi <= 1)).all()
        np.testing.assert_allclose(new_hi - new_lo, hi - lo, atol=1e-12)
        for one in t[:5]:  # the scalar is the same band, and with slider steps still holds the threshold
            assert gb.band_following(one, (lo, hi), previous) == (new_lo[t == one][0], new_hi[t == one][0])
            r_lo, r_hi = gb.band_following(round(one, 2), (round(lo, 2), round(hi, 2)), None, decimals=2)
            assert r_lo <= round(one, 2) <= r_hi
    with pytest.raises(ValueError, match=r"must hold the threshold 0.9"):
        gb.moved_bands([0.5], (0.45, 0.55), 0.9)


def test_a_band_moved_off_the_threshold_takes_it_to_its_nearer_edge():
    assert gb.threshold_within(0.5, (0.6, 0.8)) == 0.6
    assert gb.threshold_within(0.5, (0.1, 0.3)) == 0.3
    assert gb.threshold_within(0.5, (0.45, 0.55)) == 0.5
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        gb.threshold_within(0.5, (0.6, 0.4))


def brute_sweep(df, grouping, threshold, band, grid) -> pd.DataFrame:
    """threshold_sweep the slow way: band_what_if's band rows at each threshold, the band moved by
    band_following from ``threshold``."""
    rows = []
    for t in grid:
        moved = gb.band_following(t, band, threshold)
        by = gb.band_what_if(df, grouping, t, moved, min_count=1).by_group
        for _, r in by[by["setting"] == gb.BANDED].iterrows():
            rows.append({"group": r["group"], "threshold": t, "band_lo": moved[0], "band_hi": moved[1], "n": r["n"],
                         **{rate: r[rate] for rate in gb.SWEEP_RATES}})
    out = pd.DataFrame(rows)
    order = out["group"].map({g: i for i, g in enumerate(dict.fromkeys(out["group"]))})  # the groups as listed
    return out.iloc[np.lexsort([out["threshold"], order])].reset_index(drop=True)


@pytest.mark.parametrize(("threshold", "band"), [(0.5, (0.45, 0.55)), (0.35, (0.3, 0.5)), (0.9, (0.2, 0.95)),
                                                 (0.0, (0.0, 0.0)), (0.5, (0.0, 1.0))])
def test_threshold_sweep_is_the_band_what_if_at_each_threshold(threshold, band):
    rng = np.random.default_rng(6)
    n = 120
    female = rng.random(n) < 0.45
    p = np.where(female, rng.integers(6, 21, n), rng.integers(0, 15, n)) / 20  # on the grid: ties at the band's edges
    df = table(female, p, race=rng.choice(["A", "B", "C"], n, p=[0.5, 0.45, 0.05]))
    df.loc[df.index[:3], "race"] = "D"
    df.loc[df.index[:3], "gender"] = GENDERS[1]  # a group with no man: NaN for men called women
    grid = gb.sweep_grid(threshold, 21)
    got = gb.threshold_sweep(df, "race", threshold, band, grid)
    want = brute_sweep(df, "race", threshold, band, grid)
    assert got["group"].tolist() == want["group"].tolist() and got["group"].iloc[0] == gb.OVERALL
    for column in ("threshold", "band_lo", "band_hi", "n", *gb.SWEEP_RATES):
        np.testing.assert_allclose(got[column].to_numpy(float), want[column].to_numpy(float), atol=1e-12,
                                   err_msg=column)
    assert got[got["group"] == "D"]["male_as_female"].isna().all()
    at = got[np.isclose(got["threshold"], threshold)]
    assert (at["band_lo"] == band[0]).all() and (at["band_hi"] == band[1]).all()  # the band as the sliders have it
    assert ((got["band_lo"] <= got["threshold"]) & (got["threshold"] <= got["band_hi"])).all()


def test_threshold_sweep_by_hand():
    #                 woman  woman  woman  man   man   man
    df = table([1, 1, 1, 0, 0, 0], [0.9, 0.5, 0.2, 0.1, 0.45, 0.8])
    s = gb.threshold_sweep(df, None, 0.5, (0.4, 0.6), grid=[0.5, 0.15]).set_index("threshold")
    # at 0.5 the band [0.4, 0.6] holds 0.5 and 0.45: women 0.9 (right) 0.2 (called man); men 0.1 (right) 0.8 (woman)
    assert s.loc[0.5, ["abstained", "female_as_male", "male_as_female"]].tolist() == [2 / 6, 1 / 2, 1 / 2]
    # at 0.15 the band is [0.05, 0.25]: it holds 0.2 and 0.1; every face left is called female
    assert s.loc[0.15, ["band_lo", "band_hi"]].tolist() == pytest.approx([0.05, 0.25])
    assert s.loc[0.15, ["abstained", "female_as_male", "male_as_female"]].tolist() == [2 / 6, 0, 1]


def test_the_gap_is_between_the_groups_abstaining_most_and_least():
    rng = np.random.default_rng(3)
    n = 600
    race = np.repeat(["A", "B", "C"], n // 3)
    p = np.where(race == "B", rng.uniform(0.3, 0.7, n), rng.uniform(0, 1, n))  # B sits near the threshold
    df = table(rng.random(n) < p, p, race=race)
    w = gb.band_what_if(df, "race")
    assert w.gap["highest_group"] == "B"
    assert w.gap["gap"] == pytest.approx(w.gap["highest"] - w.gap["lowest"]) and w.gap["gap"] > 0.1
    small = gb.band_what_if(df, "race", min_count=1000).gap  # no group is big enough to judge
    assert small["groups_judged"] == 0 and np.isnan(small["gap"])


def test_shipped_checkpoint_by_race():
    from agegender.predictions import load_predictions

    df = load_predictions(ROOT / "checkpoints" / "dlib-resnet29-utkface", "test")
    roc = gb.roc_by_group(df, "race").by_group
    assert roc["group"].tolist() == ["overall", "Asian", "Black", "Indian", "Others", "White"]
    assert (roc["gender_auc"] > 0.9).all() and (roc["gender_auc_lo"] < roc["gender_auc"]).all()
    assert roc["n"].iloc[0] == roc["n"].iloc[1:].sum() == len(df)


def test_the_report_json_carries_the_summary_per_single_grouping(tmp_path):
    from agegender.report.command import main as report_main

    rng = np.random.default_rng(4)
    female = rng.random(400) < 0.5
    df = table(female, np.clip(female * 0.6 + rng.random(400) * 0.4, 0, 1),
               race=rng.choice(["A", "B"], 400)).assign(file=[f"f{i}.jpg" for i in range(400)])
    csv = tmp_path / "p.csv"
    df.to_csv(csv, index=False)
    assert report_main(["--predictions", str(csv), "--by", "race,gender,race:gender", "--n-boot", "20",
                        "--json", str(tmp_path / "r.json")]) == 0
    got = json.loads((tmp_path / "r.json").read_text())["gender_threshold"]
    assert list(got) == ["race"]  # gender has one class per group, an intersection is the slice search's
    assert got["race"] == json.loads(json.dumps(gb.summary(df, "race")))


# ---- the page ----------------------------------------------------------------------------------------------

@pytest.fixture
def gender_app(monkeypatch, tmp_path, tiny_checkpoint):
    from streamlit.testing.v1 import AppTest

    def make(edit=None):
        root = tmp_path / "ck"
        shutil.copytree(tiny_checkpoint, root / "tiny")
        if edit:
            for split in ("val", "test"):
                path = root / "tiny" / f"predictions-{split}.csv"
                edit(pd.read_csv(path)).to_csv(path, index=False)
        monkeypatch.setenv("AGEGENDER_CHECKPOINTS", str(root))
        at = AppTest.from_file(str(ROOT / "dashboard" / "app.py"), default_timeout=60).run()
        return at.switch_page("pages/gender.py").run()
    return make


def spread(df: pd.DataFrame) -> pd.DataFrame:
    """A tiny model's P(female) sits near 0.5: spread it so that the band has something to split."""
    return df.assign(p_female=np.linspace(0.05, 0.95, len(df)))


def test_gender_page_renders_and_follows_the_band(gender_app):
    at = gender_app(spread)
    assert not at.exception
    assert at.title[0].value == "Gender threshold"
    assert len(at.get("plotly_chart")) == 4  # ROC, reliability, abstention, rates against the threshold
    what_if = at.dataframe[-1].value
    before = what_if[what_if["setting"] == gb.BANDED].set_index("group")["abstained"]
    at.slider(key="gender_band").set_value((0.2, 0.8)).run()
    assert not at.exception
    what_if = at.dataframe[-1].value
    after = what_if[what_if["setting"] == gb.BANDED].set_index("group")["abstained"]
    assert after["overall"] > before["overall"]
    at.slider(key="gender_threshold").set_value(0.9).run()  # outside the band: the band follows, and says so
    assert not at.exception and not at.error
    assert at.slider(key="gender_band").value == (0.4, 1.0)  # moved by 0.4, then shifted back inside, width 0.6
    assert at.caption[0].value == gb.BAND_MOVED.format(lo=0.4, hi=1.0, was_lo=0.2, was_hi=0.8)
    at.selectbox(key="gender_split").set_value("test").run()
    at.selectbox(key="gender_grouping").set_value("gender").run()  # one gender per group: no AUC, no error
    assert not at.exception


def test_gender_page_without_labels_says_so(gender_app):
    at = gender_app(lambda df: df.assign(p_female=np.nan))
    assert not at.exception
    assert at.info[0].value == gb.NO_SCORES
