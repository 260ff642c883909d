"""Calibrated age intervals: the conformal guarantee on generated data, the quantiles, the record in meta.json,
the columns of the predictions table, and the interval through evaluate, predict and the predict page."""

import json
import math
import shutil
import time
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

from agegender.evaluation import intervals as iv
from agegender.evaluation.evaluate import main as evaluate_main
from agegender.explain.predict import main as predict_main
from agegender.fairness import coverage
from agegender.fairness.groups import prepare, wilson
from agegender.labels import AGE_BUCKET_EDGES
from agegender.meta import META
from agegender.models import interval
from agegender.models.checkpoint import load_checkpoint, read_meta
from agegender.models.inference import distribution_quantiles
from agegender.predictions import INTERVAL, load_predictions
from agegender.report.command import main as report_main

from ..conftest import tiny_config
from ..explain.test_predict import HOPPER, no_face_image

BINS = 121
COVERAGE = 0.8


# ---- generated data with a known noise model --------------------------------------------------------------

def generated(n: int, rng: np.random.Generator, model_sd: float, true_sd: float = 5.0):
    """n faces: true whole-year ages around a centre mu with noise of sd ``true_sd``, and the model's age
    distribution a Gaussian over the years 0..120 around the same mu with sd ``model_sd``: too narrow when
    model_sd < true_sd (under-dispersed), too wide when above."""
    mu = rng.uniform(15, 80, n)
    y = np.clip(np.round(mu + rng.normal(0, true_sd, n)), 0, BINS - 1)
    z = (np.arange(BINS)[None, :] - mu[:, None]) / model_sd
    p = np.exp(-0.5 * z * z)
    return y, p / p.sum(1, keepdims=True)


def se(n_cal: int, n_test: int, c: float = COVERAGE) -> float:
    """The standard error of a test split's coverage: the calibration draw's spread plus the test's."""
    return math.sqrt(c * (1 - c) / n_cal + c * (1 - c) / n_test)


def calibrated_on(y, p, coverage=COVERAGE) -> iv.Calibration:
    q = distribution_quantiles(p, iv.levels(coverage))
    return iv.calibrate(y, q[:, 0], q[:, 1], coverage)


def covered(cal, y, p) -> float:
    lo, hi = interval.apply(cal, None, distribution_quantiles(p, cal.quantiles), (0, BINS - 1))
    return float(np.mean((lo <= y) & (y <= hi)))


def test_quantiles_of_a_distribution_by_hand():
    # year k's mass spread over k +- 0.5; cdf at 0.5: 0.2, at 1.5: 0.7, at 2.5: 1
    p = np.array([[0.2, 0.5, 0.3], [0.0, 1.0, 0.0]])
    q = distribution_quantiles(p, [0.1, 0.5, 0.9])
    np.testing.assert_allclose(q[0], [-0.5 + 0.1 / 0.2, 0.5 + 0.3 / 0.5, 1.5 + 0.2 / 0.3])
    np.testing.assert_allclose(q[1], [0.6, 1.0, 1.4])  # all mass on year 1: spread over 0.5..1.5
    # unnormalised input is normalised; the median of a symmetric distribution is its centre
    np.testing.assert_allclose(distribution_quantiles(np.array([[1.0, 2.0, 1.0]]), [0.5]), [[1.0]])


def test_the_finite_sample_quantile_and_too_few_scores():
    s = np.arange(1.0, 21.0)[::-1]  # 20 scores, any order
    assert iv.conformal_quantile(s, 0.8) == 17.0  # ceil(21 * 0.8) = 17th smallest, not the 16th
    assert iv.conformal_quantile(np.arange(4.0), 0.8) == 3.0  # (4 + 1) * 0.8 is 4, not 4.000000000000001
    with pytest.raises(ValueError) as e:
        iv.conformal_quantile(np.arange(3.0), 0.8)
    assert str(e.value) == iv.ERR_TOO_FEW.format(coverage=0.8, n=3, need=4)
    with pytest.raises(ValueError) as e:
        iv.conformal_quantile(s, 1.0)
    assert str(e.value) == iv.ERR_COVERAGE.format(coverage=1.0)


@pytest.mark.parametrize("model_sd", [2.0, 5.0, 10.0])
def test_coverage_on_fresh_data_is_the_target_within_a_binomial_bound(model_sd):
    n, m = 1000, 2000
    for seed in range(5):
        rng = np.random.default_rng(seed)
        cal = calibrated_on(*generated(n, rng, model_sd))
        c = covered(cal, *generated(m, rng, model_sd))
        # >= target by the guarantee; <= target + 1/(n + 1) as the scores have no ties; 3 SE either way
        assert COVERAGE - 3 * se(n, m) <= c <= COVERAGE + 1 / (n + 1) + 3 * se(n, m), (model_sd, seed, c)


def test_an_under_dispersed_distribution_is_widened_and_an_over_dispersed_one_narrowed():
    rng = np.random.default_rng(0)
    narrow, right, wide = (calibrated_on(*generated(2000, rng, sd)) for sd in (2.0, 5.0, 10.0))
    assert narrow.t > 2 and wide.t < -2 and abs(right.t) < 1, (narrow.t, right.t, wide.t)
    y, p = generated(2000, rng, 2.0)
    raw = distribution_quantiles(p, iv.levels(COVERAGE))
    assert np.mean((raw[:, 0] <= y) & (y <= raw[:, 1])) < 0.5  # what the widening repairs


def test_the_finite_sample_correction_covers_on_average():
    """Continuous scores of a known law, so each calibration's coverage of a fresh face is exact: the mean over
    2,000 calibration sets of 20 is k / (n + 1) = 17 / 21 with the correction, 16 / 21 without it."""
    rng = np.random.default_rng(1)
    n, z, model_sd, true_sd = 20, norm.ppf(0.9), 3.0, 5.0
    s = np.abs(rng.normal(0, true_sd, (2000, n))) - z * model_sd  # |y - mu| beyond the base interval mu +- z sd

    def coverage_of(t):
        return 2 * norm.cdf((z * model_sd + t) / true_sd) - 1

    corrected = np.array([coverage_of(iv.conformal_quantile(row, COVERAGE)) for row in s])
    naive = np.array([coverage_of(np.sort(row)[math.ceil(n * COVERAGE) - 1]) for row in s])
    bound = 3 * corrected.std() / math.sqrt(len(s))
    assert corrected.mean() >= COVERAGE - bound and abs(corrected.mean() - 17 / 21) < bound
    assert naive.mean() < COVERAGE - bound  # the plain empirical quantile under-covers


def test_the_residual_interval_of_a_regression_head_is_pred_plus_minus_t():
    rng = np.random.default_rng(2)
    pred = rng.uniform(10, 70, 500)
    y = np.round(pred + rng.normal(0, 6, 500))
    cal = iv.calibrate(y, pred, pred, COVERAGE, iv.RESIDUAL)
    assert cal.t == iv.conformal_quantile(np.abs(y - pred), COVERAGE) and cal.quantiles == ()
    lo, hi = interval.apply(cal, pred, None, (0, 116))
    np.testing.assert_allclose(lo, np.floor((pred - cal.t) * 100) / 100)
    np.testing.assert_allclose(hi, np.ceil((pred + cal.t) * 100) / 100)


def test_intervals_are_clipped_to_the_age_range_rounded_outward_and_never_crossed():
    cal = iv.Calibration(iv.CQR, 0.8, (0.1, 0.9), 3.0, 100, "val", "UTKFace", "f", "w", True)
    q = np.array([[1.0, 5.0], [110.0, 119.0], [30.123, 40.001]])
    lo, hi = interval.apply(cal, None, q, (0.0, 120.0))
    np.testing.assert_allclose(lo, [0.0, 107.0, 27.12])  # floor(27.123 * 100) / 100
    np.testing.assert_allclose(hi, [8.0, 120.0, 43.01])  # 43.001 rounded up, not to 43.0
    narrowed = iv.Calibration(iv.CQR, 0.8, (0.1, 0.9), -3.0, 100, "val", "UTKFace", "f", "w", True)
    lo, hi = interval.apply(narrowed, None, np.array([[40.0, 44.0], [40.0, 50.0]]), (0.0, 120.0))
    np.testing.assert_allclose(lo, [42.0, 43.0])  # 43 and 41 cross: the middle, 42
    np.testing.assert_allclose(hi, [42.0, 47.0])


def test_age_text():
    assert interval.age_text(62.4, 55.3, 70.6) == "62 y (56-70)"  # the whole years the interval holds
    assert interval.age_text(62.4) == "62 y" and interval.age_text(62.4, np.nan, np.nan) == "62 y"
    assert interval.age_text(55.5, 55.2, 55.8) == "56 y (55.2-55.8)"  # holds no whole year


# ---- coverage per group -----------------------------------------------------------------------------------

def intervals_table(n=600, seed=3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    age = rng.integers(1, 90, n).astype(float)
    pred = age + rng.normal(0, 6, n)
    width = np.where(rng.random(n) < 0.5, 8.0, 16.0)
    df = pd.DataFrame({"file": [f"f{i}.jpg" for i in range(n)], "age": age,
                       "gender": rng.choice(["male", "female"], n), "race": rng.choice(["A", "B", "C"], n),
                       "pred_age": pred, "pred_age_lo": pred - width / 2, "pred_age_hi": pred + width / 2,
                       "p_female": rng.random(n), "found": rng.random(n) > 0.05})
    df.loc[:9, "pred_age_lo"] = np.nan  # no interval
    df.loc[10:19, "age"] = np.nan  # a bin only
    df.loc[10:19, "age_bin"] = "20-29"
    return df


def test_coverage_by_group_is_the_direct_computation_on_each_group():
    df = intervals_table()
    for columns in (["race"], "race:gender", ["age_bucket"], []):
        got = coverage.coverage_by_group(df, columns)
        cols = columns.split(":") if isinstance(columns, str) else columns
        t = prepare(df)
        t = t[t["found"] & t["age"].notna() & t["pred_age_lo"].notna()]
        t = t.assign(hit=(t["pred_age_lo"] <= t["age"]) & (t["age"] <= t["pred_age_hi"]),
                     width=t["pred_age_hi"] - t["pred_age_lo"])
        groups = t.groupby(cols, observed=True) if cols else [((), t)]
        expected = {k if isinstance(k, tuple) else (k,): g for k, g in groups}
        assert len(got) == len(expected) and got["n"].sum() == len(t)
        for _, row in got.iterrows():
            g = expected[tuple(row[c] for c in cols)]
            k, n = int(g["hit"].sum()), len(g)
            assert (row["n"], row["covered"]) == (n, k) and row["coverage"] == pytest.approx(k / n)
            assert (row["coverage_lo"], row["coverage_hi"]) == pytest.approx(wilson(k, n))
            assert row["median_width"] == pytest.approx(g["width"].median())
    assert list(coverage.coverage_by_group(df, "age_bucket")["age_bucket"])[:2] == ["0-2", "3-9"]  # age order


def test_no_coverage_without_intervals_or_exact_ages():
    df = intervals_table()
    assert coverage.coverage_by_group(df.drop(columns=list(INTERVAL)), "race").empty
    bins_only = df.assign(age=np.nan, age_bin="20-29")
    assert list(coverage.coverage_by_group(bins_only, "race").columns) == ["race", *coverage.COVERAGE_COLUMNS]
    assert coverage.coverage_by_group(bins_only, "race").empty


def test_the_report_gives_the_coverage_per_group_and_says_nothing_without_intervals(tmp_path, capsys):
    df = intervals_table()
    csv = tmp_path / "p.csv"
    df.to_csv(csv, index=False)
    assert report_main(["--predictions", str(csv), "--by", "race,race:gender", "--n-boot", "50",
                        "--json", str(tmp_path / "r.json"), "--html", str(tmp_path / "r.html")]) == 0
    got = json.loads((tmp_path / "r.json").read_text())["age_interval_coverage"]
    assert set(got) == {"overall", "race"}  # single columns only: intersections are the slice search's job
    pd.testing.assert_frame_equal(pd.DataFrame(got["race"]), coverage.coverage_by_group(df, "race"), rtol=1e-6)
    assert got["overall"][0]["n"] == coverage.coverage_by_group(df)["n"].iloc[0]
    assert "age interval coverage, race" in capsys.readouterr().out
    assert "Age interval coverage" in (tmp_path / "r.html").read_text()
    df.drop(columns=list(INTERVAL)).to_csv(csv, index=False)
    assert report_main(["--predictions", str(csv), "--n-boot", "50", "--json", str(tmp_path / "r.json")]) == 0
    assert "age_interval_coverage" not in json.loads((tmp_path / "r.json").read_text())


# ---- one t per bucket of the predicted age (Mondrian) -----------------------------------------------------

def growing(n: int, rng: np.random.Generator, model_sd: float = 4.0):
    """n faces whose true age's noise grows with age (sd 0.5 + 0.12 mu: half a year at birth, 11 at 90) while
    the model's distribution keeps one sd: too wide for children, too narrow for the old. Returns the true
    ages, the distributions and the predicted ages (their expectations)."""
    mu = rng.uniform(0, 90, n)
    y = np.clip(np.round(mu + rng.normal(0, 0.5 + 0.12 * mu)), 0, BINS - 1)
    z = (np.arange(BINS)[None, :] - mu[:, None]) / model_sd
    p = np.exp(-0.5 * z * z)
    p /= p.sum(1, keepdims=True)
    return y, p, p @ np.arange(BINS)


def coverage_by_bucket(cal, y, p, age, edges) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = interval.apply(cal, age, distribution_quantiles(p, iv.levels(COVERAGE)), (0, BINS - 1))
    b = iv.bucket_of(age, edges)
    hit = (lo <= y) & (y <= hi)
    return np.array([hit[b == i].mean() for i in range(len(edges))]), np.bincount(b, minlength=len(edges))


def test_one_t_per_predicted_age_bucket_covers_every_bucket_where_one_t_does_not():
    rng = np.random.default_rng(0)
    y, p, age = growing(6000, rng)
    q = distribution_quantiles(p, iv.levels(COVERAGE))
    by_age = iv.calibrate_by_age(y, q[:, 0], q[:, 1], age, COVERAGE)
    single = iv.calibrate(y, q[:, 0], q[:, 1], COVERAGE)
    edges = by_age.edges
    # few predicted ages under 3 (a distribution's mean near 0 is pulled up by its clipped tail): 0-2 is merged
    assert edges == (0, *AGE_BUCKET_EDGES[2:]) and by_age.method == iv.BY_AGE[iv.CQR] and by_age.t is None
    assert sum(by_age.n_by_bucket) == by_age.n_cal == 6000 and np.all(np.diff(by_age.t_by_bucket[2:]) > 0)
    n_cal = np.bincount(iv.bucket_of(age, edges), minlength=len(edges))
    assert list(by_age.n_by_bucket) == list(n_cal)

    y, p, age = growing(12000, rng)
    bound = np.array([3 * se(n, m) for n, m in zip(n_cal, coverage_by_bucket(by_age, y, p, age, edges)[1],
                                                   strict=True)])
    got, _ = coverage_by_bucket(by_age, y, p, age, edges)
    assert np.all(got >= COVERAGE - bound) and np.all(got <= COVERAGE + 1 / (n_cal + 1) + bound), got
    flat, _ = coverage_by_bucket(single, y, p, age, edges)
    assert flat[0] > COVERAGE + 1 / (n_cal[0] + 1) + bound[0] and flat[-1] < COVERAGE - bound[-1], flat
    assert np.sum(np.abs(flat - COVERAGE) > bound + 1 / (n_cal + 1)) >= 4  # most buckets off, both ways


def test_each_bucket_gets_the_conformal_quantile_of_its_own_scores_by_hand():
    pred = np.array([1.0, 2, 3, 4, 5, 6, 7, 8, 9, 20, 30, 40, 50])
    err = np.array([1.0, 2, 3, 4, 5, 6, 7, 8, 9, 0.5, 0.25, 1.0, 0.75])  # |y - pred|, signs alternating
    y = pred + err * np.where(np.arange(13) % 2, 1, -1)
    cal = iv.calibrate_by_age(y, pred, pred, pred, COVERAGE, iv.RESIDUAL, edges=(0, 10), min_count=4)
    # below 10: 9 scores, ceil(10 * 0.8) = 8th smallest, 8; from 10: 4 scores, the 4th, 1.0
    assert (cal.method, cal.edges, cal.t_by_bucket, cal.n_by_bucket) == (iv.BY_AGE[iv.RESIDUAL], (0, 10),
                                                                        (8.0, 1.0), (9, 4))
    assert iv.calibrate(y, pred, pred, COVERAGE, iv.RESIDUAL).t == 8.0  # one t: the 12th of 13, 8 for all
    lo, hi = interval.apply(cal, np.array([5.0, 9.5, 10.0, 60.0]), None, (0, 116))
    np.testing.assert_allclose(lo, [0.0, 1.5, 9.0, 59.0])  # 5 - 8 clipped to 0
    np.testing.assert_allclose(hi, [13.0, 17.5, 11.0, 61.0])
    q = np.array([[2.0, 6.0], [30.0, 40.0]])  # CQR: the quantiles moved by their predicted age's bucket's t
    cqr = replace(cal, method=iv.BY_AGE[iv.CQR], quantiles=(0.1, 0.9))
    lo, hi = interval.apply(cqr, np.array([4.0, 35.0]), q, (0, 120))
    np.testing.assert_allclose(lo, [0.0, 29.0])  # 2 - 8 clipped; 30 - 1
    np.testing.assert_allclose(hi, [14.0, 41.0])


@pytest.mark.parametrize("counts,edges,merged", [
    ([5, 100, 3, 100, 60], (0, 3, 10, 20, 30), (0, 20, 30)),  # 3 joins its younger equal, then 5 its one neighbour
    ([100, 30, 60], (0, 10, 20), (0, 10)),  # the smaller neighbour: the older one here
    ([60, 0, 60, 70], (0, 10, 20, 30), (0, 20, 30)),  # an empty bucket too
    ([10, 20, 15], (0, 10, 20), (0,)),  # too few for two buckets: one
    ([50, 50], (0, 10), (0, 10)),  # 50 is enough
])
def test_small_buckets_are_merged_into_their_smaller_neighbour(counts, edges, merged):
    age = np.concatenate([np.full(n, e + 0.5) for n, e in zip(counts, edges, strict=True)])
    assert iv.merged_edges(age, edges, 50) == merged


def test_merging_to_one_bucket_gives_the_single_t_record_and_bad_edges_are_refused():
    rng = np.random.default_rng(5)
    y, p, age = growing(300, rng)
    q = distribution_quantiles(p, iv.levels(COVERAGE))
    assert iv.calibrate_by_age(y, q[:, 0], q[:, 1], age, min_count=301) == iv.calibrate(y, q[:, 0], q[:, 1])
    cal = iv.calibrate_by_age(y, q[:, 0], q[:, 1], age, min_count=100)
    assert len(cal.edges) > 1 and min(cal.n_by_bucket) >= 100 and set(cal.edges) <= set(AGE_BUCKET_EDGES)
    assert iv.calibrate_by_age(y, q[:, 0], q[:, 1], age, 0.99, min_count=2).n_by_bucket[0] >= 99  # a quantile's need
    for bad in ((3, 10), (0, 10, 10), ()):
        with pytest.raises(ValueError) as e:
            iv.calibrate_by_age(y, q[:, 0], q[:, 1], age, edges=bad)
        assert str(e.value) == iv.ERR_EDGES.format(edges=list(bad))


SHIPPED = {"method": "cqr", "coverage": 0.8, "quantiles": [0.1, 0.9], "t": 0.22936572401982147, "n_cal": 2117,
           "split": "val", "data": "UTKFace", "dataset_fingerprint": "8b7738dc" * 8, "weights_sha256": "5bef1ac6" * 8,
           "tta": True}  # the single-t record shipped before buckets, as it stood in meta.json


def test_a_single_t_record_still_loads_and_gives_the_same_intervals():
    cal = iv.Calibration.from_json(SHIPPED, "ck")
    assert cal.to_json() == SHIPPED and list(cal.to_json()) == list(SHIPPED)  # written back unchanged
    assert (cal.method, cal.t, cal.edges) == (iv.CQR, SHIPPED["t"], ())
    rng = np.random.default_rng(6)
    q = np.sort(rng.uniform(-0.5, 120, (500, 2)), axis=1)
    age = q.mean(1)
    lo, hi = interval.apply(cal, age, q, (0.0, 120.0))
    t = SHIPPED["t"]  # the intervals as they were computed before buckets
    old_lo, old_hi = q[:, 0] - t, q[:, 1] + t
    mid = (old_lo + old_hi) / 2
    old_lo, old_hi = np.where(old_lo > old_hi, mid, old_lo), np.where(old_lo > old_hi, mid, old_hi)
    np.testing.assert_array_equal(lo, np.clip(np.floor(old_lo * 100) / 100, 0, 120))
    np.testing.assert_array_equal(hi, np.clip(np.ceil(old_hi * 100) / 100, 0, 120))
    np.testing.assert_array_equal(lo, interval.apply(cal, None, q, (0.0, 120.0))[0])  # the age plays no part


# ---- the record in meta.json ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def dldl_checkpoint(tiny_data, tmp_path_factory):
    from agegender.train.loop import train

    return train(tiny_config(tiny_data, tmp_path_factory.mktemp("dldl") / "tiny-dldl", age_loss="dldl"))


@pytest.fixture
def dldl(dldl_checkpoint, tmp_path):
    """A private copy of the DLDL checkpoint, to calibrate and tamper with."""
    return shutil.copytree(dldl_checkpoint, tmp_path / "dldl")


def a_record(folder, **changes) -> dict:
    meta = read_meta(folder)
    cal = iv.Calibration(iv.CQR, 0.8, (0.1, 0.9), 1.5, 50, "val", "UTKFace", "f" * 64, meta["weights_sha256"], True)
    return {**cal.to_json(), **changes}


def test_writing_the_calibration_changes_nothing_else_and_the_checkpoint_still_loads(dldl):
    before = json.loads((dldl / META).read_text())
    rec = a_record(dldl)
    iv.write_calibration(dldl, iv.Calibration.from_json(rec, dldl))
    after = json.loads((dldl / META).read_text())
    assert after.pop(iv.KEY) == rec and after == before
    assert list(json.loads((dldl / META).read_text())) == [*before, iv.KEY]  # key order kept, the record last
    ckpt = load_checkpoint(dldl)  # the weights' checksum still holds
    assert iv.calibration_of(ckpt.meta, ckpt.path) == iv.Calibration.from_json(rec, dldl)
    assert not [p.name for p in dldl.iterdir() if p.name.startswith(".")]  # no temporary left


TAMPERED = [
    ("t", "1.5", "t must be a finite number of years"),
    ("n_cal", 0, "n_cal must be a positive integer"),
    ("method", "magic", "method must be cqr or residual"),
    ("coverage", 0.9, "quantiles [0.1, 0.9] do not match a cqr interval of coverage 0.9: expected [0.05, 0.95]"),
    ("tta", "yes", "tta must be true or false"),
]


@pytest.mark.parametrize("key,value,detail", TAMPERED)
def test_a_tampered_record_is_refused_word_for_word(dldl, capsys, key, value, detail):
    meta = read_meta(dldl)
    meta[iv.KEY] = a_record(dldl, **{key: value})
    (dldl / META).write_text(json.dumps(meta))
    expected = iv.ERR_MALFORMED.format(path=dldl, detail=detail)
    ckpt = load_checkpoint(dldl)  # the checkpoint itself loads; its interval is refused
    with pytest.raises(iv.IntervalError) as e:
        iv.calibration_of(ckpt.meta, ckpt.path)
    assert str(e.value) == expected
    assert predict_main([str(HOPPER), "--checkpoint", str(dldl), "--json"]) == 2
    assert capsys.readouterr().err == f"error: {expected}\n"


@pytest.mark.parametrize("change,detail", [
    (lambda r: r.pop("n_cal"), "missing n_cal"),
    (lambda r: r.update(note="hi"), "unknown note"),
])
def test_a_malformed_record_is_refused(dldl, change, detail):
    rec = a_record(dldl)
    change(rec)
    with pytest.raises(iv.IntervalError) as e:
        iv.calibration_of({**read_meta(dldl), iv.KEY: rec}, dldl)
    assert str(e.value) == iv.ERR_MALFORMED.format(path=dldl, detail=detail)
    with pytest.raises(iv.IntervalError) as e:
        iv.calibration_of({**read_meta(dldl), iv.KEY: [1, 2]}, dldl)
    assert str(e.value) == iv.ERR_MALFORMED.format(path=dldl, detail="not a JSON object")


def test_a_record_for_other_weights_or_another_head_is_refused(dldl):
    meta = read_meta(dldl)
    with pytest.raises(iv.IntervalError) as e:
        iv.calibration_of({**meta, iv.KEY: a_record(dldl, weights_sha256="0" * 64)}, dldl)
    assert str(e.value) == iv.ERR_STALE.format(path=dldl, theirs="0" * 64, ours=meta["weights_sha256"])
    with pytest.raises(iv.IntervalError) as e:  # a residual record on a distribution head
        iv.calibration_of({**meta, iv.KEY: a_record(dldl, method=iv.RESIDUAL, quantiles=[])}, dldl)
    assert str(e.value) == iv.ERR_MALFORMED.format(path=dldl, detail="method residual, but the age head calls for cqr")
    with pytest.raises(iv.IntervalError):  # writing one is refused too
        iv.write_calibration(dldl, iv.Calibration.from_json(a_record(dldl, weights_sha256="0" * 64), dldl))
    assert iv.KEY not in read_meta(dldl)


def a_by_age_record(folder, **changes) -> dict:
    rec = {**a_record(folder), "method": iv.BY_AGE[iv.CQR], "n_cal": 100}
    del rec["t"]
    rec = {**rec, "edges": [0, 20, 40], "t_by_bucket": [-1.0, 0.5, 2.0], "n_by_bucket": [40, 35, 25]}
    return {k: rec[k] for k in iv.FIELDS_BY_AGE} | changes


TAMPERED_BY_AGE = [
    ("method", "cqr", "method must be cqr-by-predicted-age or residual-by-predicted-age"),
    ("edges", [0, 40, 20], "edges must be a list of increasing ages in years, from 0"),
    ("edges", [3, 20, 40], "edges must be a list of increasing ages in years, from 0"),
    ("edges", "0-20-40", "edges must be a list of increasing ages in years, from 0"),
    ("t_by_bucket", [-1.0, 0.5], "t_by_bucket must hold a finite number of years for each of the edges"),
    ("t_by_bucket", [-1.0, "wide", 2.0], "t_by_bucket must hold a finite number of years for each of the edges"),
    ("n_by_bucket", [40, 35, 20], "n_by_bucket must hold a positive count for each of the edges, adding up to n_cal"),
    ("n_by_bucket", [65, 35, 0], "n_by_bucket must hold a positive count for each of the edges, adding up to n_cal"),
    ("t", 0.5, "unknown t"),
    ("coverage", 0.9, "quantiles [0.1, 0.9] do not match a cqr-by-predicted-age interval of coverage 0.9: "
                      "expected [0.05, 0.95]"),
]


def test_a_by_age_record_round_trips_and_its_intervals_follow_the_predicted_age(dldl, tiny_data, tmp_path, capsys):
    rec = a_by_age_record(dldl)
    iv.write_calibration(dldl, iv.Calibration.from_json(rec, dldl))
    assert read_meta(dldl)[iv.KEY] == rec and list(read_meta(dldl)[iv.KEY]) == list(iv.FIELDS_BY_AGE)
    cal = iv.calibration_of(read_meta(dldl), dldl)
    assert (cal.t, cal.edges, cal.t_by_bucket, cal.n_by_bucket) == (None, (0, 20, 40), (-1.0, 0.5, 2.0),
                                                                    (40, 35, 25))
    assert cal.buckets() == ["0-19", "20-39", "40+"]
    crop = str(no_face_image(tmp_path / "crop.png"))

    def face(rec):
        meta = read_meta(dldl)
        (dldl / META).write_text(json.dumps({**meta, iv.KEY: rec}))
        capsys.readouterr()
        assert predict_main([crop, "--checkpoint", str(dldl), "--cropped", "--json"]) == 0
        return json.loads(capsys.readouterr().out)[0]["faces"][0]

    base = face(a_record(dldl, t=0.0))
    # the JSON rounds the age to 0.1 y; the bucket follows the unrounded one, so no edge may lie within
    # 0.05 y of the shown value (an edge 0.01 y below it put 57.96, shown as 58.0, in the other bucket)
    age = base["age"]
    assert age > 1, "the edges below need room under the predicted age"
    for edges, shift in (([0, age + 1, age + 2], -1.0), ([0, age - 0.5, age + 1], 0.5)):
        got = face(a_by_age_record(dldl, edges=edges))
        assert got["age_lo"] == pytest.approx(max(0, base["age_lo"] - shift), abs=0.011)
        assert got["age_hi"] == pytest.approx(base["age_hi"] + shift, abs=0.011)


@pytest.mark.parametrize("key,value,detail", TAMPERED_BY_AGE)
def test_a_tampered_by_age_record_is_refused_word_for_word(dldl, capsys, key, value, detail):
    meta = read_meta(dldl)
    meta[iv.KEY] = a_by_age_record(dldl, **{key: value})
    (dldl / META).write_text(json.dumps(meta))
    expected = iv.ERR_MALFORMED.format(path=dldl, detail=detail)
    with pytest.raises(iv.IntervalError) as e:
        iv.calibration_of(load_checkpoint(dldl).meta, dldl)
    assert str(e.value) == expected
    assert predict_main([str(HOPPER), "--checkpoint", str(dldl), "--json"]) == 2
    assert capsys.readouterr().err == f"error: {expected}\n"


def test_a_by_age_record_missing_its_buckets_or_for_another_head_is_refused(dldl):
    meta = read_meta(dldl)
    rec = a_by_age_record(dldl)
    del rec["edges"]
    with pytest.raises(iv.IntervalError) as e:
        iv.calibration_of({**meta, iv.KEY: rec}, dldl)
    assert str(e.value) == iv.ERR_MALFORMED.format(path=dldl, detail="missing edges")
    with pytest.raises(iv.IntervalError) as e:
        iv.calibration_of({**meta, iv.KEY: a_by_age_record(dldl, method=iv.BY_AGE[iv.RESIDUAL], quantiles=[])}, dldl)
    assert str(e.value) == iv.ERR_MALFORMED.format(
        path=dldl, detail="method residual-by-predicted-age, but the age head calls for cqr")


# ---- end to end on a tiny checkpoint ----------------------------------------------------------------------

def calibrate_cli(folder, data, *extra, cache=None):
    cache = cache or folder.parent / "cache"
    return iv.main(["--checkpoint", str(folder), "--data", str(data), "--cache-dir", str(cache), *map(str, extra)])


def test_a_calibrated_tiny_checkpoint_puts_intervals_in_predictions_and_predict_json(dldl, tiny_data, tmp_path,
                                                                                        capsys):
    assert calibrate_cli(dldl, tiny_data) == 0
    out = capsys.readouterr().out
    cal = iv.calibration_of(read_meta(dldl), dldl)
    n_val = (pd.read_csv(dldl / iv.MANIFEST)["split"] == "val").sum()
    assert (cal.method, cal.coverage, cal.n_cal, cal.split, cal.data, cal.tta) == (iv.CQR, 0.8, n_val, "val",
                                                                                     tiny_data.name, True)
    assert out.startswith(f"80% interval, calibrated on {tiny_data.name} val (n={n_val}, cqr, TTA on)")
    load_checkpoint(dldl)

    csv = tmp_path / "p.csv"
    assert evaluate_main(["--checkpoint", str(dldl), "--data", str(tiny_data), "--split", "all", "--out", str(csv),
                          "--cache-dir", str(dldl.parent / "cache")]) == 0
    df = load_predictions(path=csv)
    assert df[list(INTERVAL)].notna().all().all()
    assert (df["pred_age_lo"] <= df["pred_age_hi"]).all() and df["pred_age_lo"].ge(0).all()
    assert df["pred_age_hi"].le(BINS - 1).all()
    val = df[df["split"] == "val"]  # the calibration split: covered at least as often as asked, by construction
    assert ((val["pred_age_lo"] <= val["age"]) & (val["age"] <= val["pred_age_hi"])).mean() >= 0.8

    capsys.readouterr()
    crop = str(no_face_image(tmp_path / "crop.png"))  # --cropped: no face detector to load
    assert predict_main([crop, "--checkpoint", str(dldl), "--cropped", "--json"]) == 0
    [face] = json.loads(capsys.readouterr().out)[0]["faces"]
    assert face["age_coverage"] == 0.8 and face["age_lo"] <= face["age_hi"]
    assert predict_main([crop, "--checkpoint", str(dldl), "--cropped"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"age: 80% interval, calibrated on {tiny_data.name} val"
    assert f" y ({math.ceil(face['age_lo'])}-{math.floor(face['age_hi'])}), P(female)" in lines[1]


def test_a_regression_checkpoint_gets_the_residual_interval(tiny_checkpoint, tiny_data, tmp_path, capsys):
    folder = shutil.copytree(tiny_checkpoint, tmp_path / "reg")
    assert calibrate_cli(folder, tiny_data, "--coverage", "0.5") == 0
    cal = iv.calibration_of(read_meta(folder), folder)
    assert (cal.method, cal.coverage, cal.quantiles) == (iv.RESIDUAL, 0.5, ())
    capsys.readouterr()
    assert predict_main([str(no_face_image(tmp_path / "c.png")), "--checkpoint", str(folder), "--cropped",
                         "--json"]) == 0
    [face] = json.loads(capsys.readouterr().out)[0]["faces"]
    assert face["age_lo"] == pytest.approx(max(0, face["age"] - cal.t), abs=0.06)
    assert face["age_hi"] == pytest.approx(face["age"] + cal.t, abs=0.06)


def test_calibration_errors_exit_2_with_one_line(dldl, tiny_data, tmp_path, capsys):
    from ..conftest import make_dataset

    other = tmp_path / "other"
    make_dataset(other, n=10, seed=9)
    assert calibrate_cli(dldl, other) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {other} lacks ") and "pass the UTKFace the checkpoint was trained on" in err
    (dldl / iv.MANIFEST).unlink()
    assert calibrate_cli(dldl, tiny_data) == 2
    assert capsys.readouterr().err == f"error: {iv.ERR_NO_MANIFEST.format(path=dldl)}\n"
    assert iv.KEY not in read_meta(dldl)


def test_without_a_calibration_the_columns_are_empty_and_the_command_says_how_once(tiny_checkpoint, tmp_path,
                                                                                    capsys):
    crop = str(no_face_image(tmp_path / "crop.png"))
    assert predict_main([crop, crop, "--checkpoint", str(tiny_checkpoint), "--cropped"]) == 0
    out = capsys.readouterr().out
    note = f"age: {interval.NO_INTERVAL.format(path=tiny_checkpoint)}"
    assert out.splitlines()[0] == note and out.count("no calibrated interval") == 1 and len(out.splitlines()) == 3
    assert predict_main([crop, "--checkpoint", str(tiny_checkpoint), "--cropped", "--json"]) == 0
    [face] = json.loads(capsys.readouterr().out)[0]["faces"]
    assert (face["age_lo"], face["age_hi"], face["age_coverage"]) == (None, None, None)


# ---- the predict page -------------------------------------------------------------------------------------

def predict_page(monkeypatch, root):
    from streamlit.testing.v1 import AppTest

    from ..conftest import ROOT

    monkeypatch.setenv("AGEGENDER_CHECKPOINTS", str(root))
    return AppTest.from_file(str(ROOT / "dashboard" / "app.py"), default_timeout=120).run()


def test_the_predict_page_shows_the_interval_or_says_how_to_get_one(dldl, tiny_data, monkeypatch, tmp_path):
    root = tmp_path / "ck"
    root.mkdir()
    shutil.copytree(dldl, root / "plain")
    at = predict_page(monkeypatch, root)
    assert not at.exception
    assert [i.value for i in at.info] == [f"plain: {interval.NO_INTERVAL.format(path=root / 'plain')}"]

    assert calibrate_cli(root / "plain", tiny_data, cache=tmp_path / "cache") == 0
    time.sleep(0.01)
    at = predict_page(monkeypatch, root)
    assert not at.exception and not at.info
    text = " ".join(m.value for m in at.markdown)
    assert f"80% interval, calibrated on {tiny_data.name} val" in text and " y (" in text

    meta = read_meta(root / "plain")
    meta[iv.KEY]["t"] = "wide"
    (root / "plain" / META).write_text(json.dumps(meta))
    at = predict_page(monkeypatch, root)
    assert not at.exception
    assert [e.value for e in at.error] == [iv.ERR_MALFORMED.format(path=root / "plain",
                                                                   detail="t must be a finite number of years")]


# ---- the shipped checkpoint on real UTKFace ---------------------------------------------------------------

def test_the_shipped_checkpoint_covers_80_percent_of_test_faces(real_data):
    """Calibrated on an evenly spaced 400 of its val split, without TTA to halve the time (the calibration is
    for that setting then), it covers 80% of an evenly spaced 400 of test within 3 standard errors."""
    from agegender.data.utkface import evenly_spaced, load_images, scan
    from agegender.models.inference import predict_quantiles
    from agegender.models.model import age_range

    from ..conftest import ROOT

    ckpt = load_checkpoint(ROOT / "checkpoints" / "dlib-resnet29-utkface")
    sc = scan(real_data)
    n = 400
    split = {s: evenly_spaced([x for x in sc.samples if x.split == s], n) for s in ("val", "test")}
    images = {s: load_images(sc, picked, ckpt.preprocess.cache_size, progress=False) for s, picked in split.items()}
    qs, ys = {}, {}
    for s, im in images.items():
        ys[s] = np.array([x.age for x in im.samples], float)
        qs[s] = predict_quantiles(ckpt, im.pixels, iv.levels(COVERAGE), tta=False)
    y = ys["val"]
    cal = iv.calibrate(y, qs["val"][2][:, 0], qs["val"][2][:, 1], COVERAGE, tta=False)
    assert abs(cal.t) < 3  # the DLDL distribution is close to calibrated already
    lo, hi = interval.apply(cal, qs["test"][0], qs["test"][2], age_range(ckpt.meta))
    c = np.mean((lo <= ys["test"]) & (ys["test"] <= hi))
    m = len(ys["test"])
    assert COVERAGE - 3 * se(len(y), m) <= c <= COVERAGE + 1 / (len(y) + 1) + 3 * se(len(y), m), c
