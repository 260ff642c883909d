"""Age-threshold errors per group (agegender.fairness.thresholds, issue 34 item 4): counts by hand on a small table,
each group's figures against its own mask on a generated one, Wilson intervals against scipy's, what a buffer
moves, groups with nobody on one side, ages known only as bins, and the refusals word for word."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binomtest

from agegender.fairness import thresholds as T
from agegender.fairness.groups import ERR_BAD_GROUPING, prepare

# race A (women): four minors and three adults at 18, with the edges (17 -> 18.0 is called adult, 18 -> 17.9 minor);
# race B (men): adults only, and one child whose face was not found (no prediction: left out)
HAND = pd.DataFrame({
    "age": [10, 12, 17, 17, 18, 22, 30, 25, 40, 60, 5],
    "pred_age": [19, 11, 18.0, 17.99, 17.9, 23, 40, 30, 35, 16, np.nan],
    "race": ["A"] * 7 + ["B"] * 4,
    "gender": ["female"] * 7 + ["male"] * 4,
    "found": [True] * 10 + [False],
    "p_female": [0.9] * 7 + [0.1] * 4,
})


def row(frame: pd.DataFrame, threshold: int, grouping: str, group: str) -> dict:
    picked = frame[(frame["threshold"] == threshold) & (frame["grouping"] == grouping) & (frame["group"] == group)]
    assert len(picked) == 1, (threshold, grouping, group)
    return picked.iloc[0].to_dict()


def counts(r: dict) -> tuple[int, int, int, int]:
    return r["n_minors"], r["false_adults"], r["n_adults"], r["false_minors"]


def test_counts_by_hand_at_18_and_13():
    f = T.threshold_errors(HAND, (18, 13), 0, ["race"])
    assert counts(row(f, 18, "race", "A")) == (4, 2, 3, 1)
    assert counts(row(f, 18, "race", "B")) == (0, 0, 3, 1)
    assert counts(row(f, 18, T.OVERALL, T.OVERALL)) == (4, 2, 6, 2)  # the missed child counts nowhere
    assert counts(row(f, 13, "race", "A")) == (2, 1, 5, 0)
    assert counts(row(f, 13, "race", "B")) == (0, 0, 3, 0)
    assert row(f, 18, "race", "A")["false_adult_rate"] == pytest.approx(0.5)
    assert row(f, 18, "race", "A")["false_minor_rate"] == pytest.approx(1 / 3)
    assert list(f.columns) == list(T.COLUMNS)
    assert list(f["threshold"].unique()) == [18, 13]  # in the order asked


def test_wilson_intervals_are_scipys():
    f = T.threshold_errors(HAND, (13, 18), 0, ["race", "gender"])
    checked = 0
    for r in f.to_dict("records"):
        for share, k, n in (("false_adult_rate", "false_adults", "n_minors"),
                            ("false_minor_rate", "false_minors", "n_adults")):
            if r[n] == 0:
                continue
            ci = binomtest(int(r[k]), int(r[n])).proportion_ci(confidence_level=0.95, method="wilson")
            assert (r[f"{share}_lo"], r[f"{share}_hi"]) == pytest.approx((ci.low, ci.high), abs=1e-9)
            checked += 1
    assert checked >= 10


def test_a_buffer_moves_the_call_and_not_the_truth():
    plain = row(T.threshold_errors(HAND, (18,), 0, ["race"]), 18, "race", "A")
    buffered = row(T.threshold_errors(HAND, (18,), 7, ["race"]), 18, "race", "A")
    assert (plain["decision"], buffered["decision"]) == (18, 25)
    assert (buffered["n_minors"], buffered["n_adults"]) == (plain["n_minors"], plain["n_adults"])  # same truth
    assert plain["false_adult_rate"] == pytest.approx(0.5) and buffered["false_adult_rate"] == 0.0
    assert counts(buffered) == (4, 0, 3, 2)  # 22 -> 23 is now under 25: a false minor


def test_a_group_with_nobody_on_one_side_has_no_share_and_no_division():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a 0 / 0 would warn
        f = T.threshold_errors(HAND, (18,), 0, ["race"])
        sec = T.section(HAND, (18,), 0, ["race"])
    b = row(f, 18, "race", "B")
    assert b["n_minors"] == 0 and b["false_adults"] == 0
    assert all(np.isnan(b[c]) for c in ("false_adult_rate", "false_adult_rate_lo", "false_adult_rate_hi"))
    assert b["false_minor_rate"] == pytest.approx(1 / 3)
    rec = next(r for r in sec["rows"] if r["group"] == "B")
    assert rec["false_adult_rate"] is None and rec["false_adult_rate_lo"] is None and rec["n_minors"] == 0
    json.dumps(sec, allow_nan=False)  # no NaN reaches the JSON


def generated(n: int = 600, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    age = rng.integers(1, 70, n)
    race = rng.choice(["White", "Black", "Asian"], n)
    bias = np.where(race == "Black", 4.0, 0.0)  # one group read older: more false adults
    return pd.DataFrame({"age": age, "pred_age": (age + bias + rng.normal(0, 4, n)).round(2), "race": race,
                         "gender": rng.choice(["female", "male"], n), "p_female": rng.random(n).round(3)})


@pytest.mark.parametrize("buffer", [0, 3])
def test_each_group_is_its_own_mask(buffer):
    df = generated()
    f = T.threshold_errors(df, (13, 18, 25), buffer, ["race", "gender"])
    for r in f.to_dict("records"):
        t = r["threshold"]
        mask = np.ones(len(df), bool) if r["grouping"] == T.OVERALL else (df[r["grouping"]] == r["group"]).to_numpy()
        minor, adult = mask & (df["age"] < t).to_numpy(), mask & (df["age"] >= t).to_numpy()
        over = (df["pred_age"] >= t + buffer).to_numpy()
        assert counts(r) == (minor.sum(), (minor & over).sum(), adult.sum(), (adult & ~over).sum())
        assert r["n_unknown"] == 0
    black, white = row(f, 18, "race", "Black"), row(f, 18, "race", "White")
    assert black["false_adult_rate"] > white["false_adult_rate"]


def test_default_groupings_are_the_reports_single_columns_with_age_buckets():
    f = T.threshold_errors(generated())
    assert list(f["threshold"].unique()) == list(T.DEFAULT_THRESHOLDS)
    assert list(dict.fromkeys(f["grouping"])) == [T.OVERALL, "age_bucket", "gender", "race"]
    kids = row(f, 18, "age_bucket", "3-9")
    assert kids["n_adults"] == 0 and np.isnan(kids["false_minor_rate"]) and kids["n_minors"] > 0


def test_an_intersection_is_grouped_and_a_bad_grouping_refused():
    df = generated()
    f = T.threshold_errors(df, (18,), 0, ["race:gender"])
    r = row(f, 18, "race:gender", "Black · female")
    mask = ((df["race"] == "Black") & (df["gender"] == "female")).to_numpy()
    assert r["n_minors"] + r["n_adults"] == mask.sum()
    with pytest.raises(ValueError) as e:
        T.threshold_errors(df, (18,), 0, ["ethnicity"])
    known = ", ".join(["age_bucket", "gender", "age_bin", "race"])
    assert str(e.value) == ERR_BAD_GROUPING.format(grouping="ethnicity", known=known)


def test_ages_known_only_as_bins_count_where_the_bin_is_on_one_side():
    df = pd.DataFrame({"age_bin": ["3-9", "10-19", "10-19", "20-29", "more than 70"],
                       "pred_age": [20.0, 25.0, 12.0, 15.0, 80.0], "gender": ["male"] * 5, "p_female": [0.2] * 5})
    at18 = row(T.threshold_errors(df, (18,), 0, []), 18, T.OVERALL, T.OVERALL)
    assert counts(at18) == (1, 1, 2, 1) and at18["n_unknown"] == 2  # 10-19 straddles 18
    at20 = row(T.threshold_errors(prepare(df), (20,), 0, []), 20, T.OVERALL, T.OVERALL)
    assert counts(at20) == (3, 2, 2, 1) and at20["n_unknown"] == 0  # 10-19 lies under 20


def test_section_round_trips_through_frame():
    sec = T.section(generated(), (16, 21), 2, ["race"])
    assert (sec["thresholds"], sec["buffer"], sec["groupings"]) == ([16, 21], 2, ["race"])
    pd.testing.assert_frame_equal(T.frame(sec), T.threshold_errors(generated(), (16, 21), 2, ["race"]),
                                  check_dtype=False)


@pytest.mark.parametrize("text", ["", "18,x", "0,18", "-13", "18.5"])
def test_bad_thresholds_are_refused_word_for_word(text):
    with pytest.raises(ValueError) as e:
        T.parse_thresholds(text)
    assert str(e.value) == T.ERR_THRESHOLDS.format(text=text)


def test_thresholds_parse_in_order_once_and_a_negative_buffer_is_refused():
    assert T.parse_thresholds(" 21, 13,21 ,18") == (21, 13, 18)
    with pytest.raises(ValueError) as e:
        T.threshold_errors(HAND, (18,), -2)
    assert str(e.value) == T.ERR_BUFFER.format(buffer=-2)
    with pytest.raises(ValueError) as e:
        T.threshold_errors(HAND, (18, 0))
    assert str(e.value) == T.ERR_THRESHOLDS.format(text="18,0")
