"""The predictions table: one name, one writer, one reader, one check, one conversion to the
arrays the metrics read; and no torch on the way."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from agegender.fairness import metrics
from agegender.fairness.compare import _side, pair
from agegender.labels import FAIRFACE_BINS, GENDERS
from agegender.meta import ERR_NO_META, META, REQUIRED_META, CheckpointError
from agegender.predictions import (
    ERR_MISSING_COLUMNS,
    ERR_NO_AGE,
    ERR_NO_PREDICTIONS,
    ERR_UNREADABLE,
    IMAGE_KEYS,
    INTERVAL,
    KNOWN,
    LABELS,
    PREDICTED,
    REQUIRED,
    bin_errors,
    bin_scale,
    complete,
    group_columns,
    load_predictions,
    metric_arrays,
    metric_columns,
    predictions_path,
    validate,
    write_predictions,
)

from .conftest import ROOT
from .fairness.test_fairness import fake_predictions

OLD_COLUMNS = ("file", "split", "age", "gender", "race", "pred_age", "p_female")  # the table before age bins


def table(n: int = 300, seed: int = 0) -> pd.DataFrame:
    return complete(fake_predictions(n, seed).assign(split="val")[list(OLD_COLUMNS)])


def checkpoint_folder(path):
    """A folder that reads as a checkpoint (its meta.json), with no weights: enough for predictions."""
    path.mkdir()
    sound = {"format": "x", "arch": "x", "age_offset": 0, "age_scale": 1, "labels": {}, "weights_sha256": "0" * 64,
             "preprocess": {"cache_size": 32, "input_size": 32, "mean": [0] * 3, "std": [1] * 3}}
    assert set(sound) == set(REQUIRED_META)  # the schema's required fields, each sound
    (path / META).write_text(json.dumps(sound))
    return path


def test_the_columns_are_declared_once_and_agree():
    assert set(IMAGE_KEYS) <= set(LABELS) and set(REQUIRED) <= set(KNOWN) and KNOWN == (*LABELS, *PREDICTED)
    assert not set(IMAGE_KEYS) & set(PREDICTED)  # pairing two checkpoints keeps both sides' predictions


def test_a_table_written_before_age_bins_is_completed_and_scores_the_same(tmp_path):
    old = fake_predictions(200, 3).assign(split="test")[list(OLD_COLUMNS)].astype({"age": float})
    old.loc[0, "age"], old.loc[0, "pred_age"] = 29.5, 30.2  # 29.5 is in 20-29; 30.2 in 30-39
    path = tmp_path / "old.csv"
    old.to_csv(path, index=False)
    df = load_predictions(path=path)
    assert list(df.columns) == [*LABELS, "race", *PREDICTED] and df["found"].all()
    assert df[list(INTERVAL)].isna().all().all()  # no interval: the shipped checkpoints' tables
    assert (df.loc[0, "age_bin"], df.loc[0, "pred_age_bin"]) == ("20-29", "30-39")
    assert metric_columns(df)["bin_err"][0] == 1
    for k in ("err", "female", "p_female", "correct"):
        np.testing.assert_array_equal(metric_columns(df)[k], metric_columns(old)[k], err_msg=k)


def test_group_columns_are_the_datasets_own_in_table_order():
    df = table().assign(site="a", age_bucket="20-29", pred_age_a=1.0)
    assert group_columns(df) == ["race", "site"]  # not the derived age_bucket, not a prediction
    assert list(complete(df).columns) == [*LABELS, "race", "site", *PREDICTED, "age_bucket", "pred_age_a"]


def test_bins_are_counted_on_fairfaces_scale_unless_the_labels_use_others():
    assert bin_scale(["20-29", "70+", ""]) == list(FAIRFACE_BINS)
    assert bin_scale(["18-24", "25-34", "55+"]) == [(18, 24), (25, 34), (55, None)]
    true = pd.Series(["20-29", "20-29", "70+", ""])
    pred = pd.Series(["40-49", "10-19", "60-69", "20-29"])  # 30-39 named nowhere: still a bin between
    np.testing.assert_array_equal(bin_errors(true, pred), [2, -1, -1, np.nan])
    np.testing.assert_array_equal(bin_errors(pd.Series(["18-24", "55+"]), pd.Series(["55+", "25-34"])), [2, -1])


def test_naming(tmp_path):
    assert predictions_path(tmp_path, "val") == tmp_path / "predictions-val.csv"
    assert predictions_path(str(tmp_path), "test") == tmp_path / "predictions-test.csv"


def test_write_then_read_round_trip(tmp_path):
    folder = checkpoint_folder(tmp_path / "ck")
    df = table()
    write_predictions(df.iloc[:, ::-1], predictions_path(folder, "val"))  # any column order in, KNOWN's out
    back = load_predictions(folder, "val")
    assert list(back.columns) == [*LABELS, "race", *PREDICTED]
    pd.testing.assert_frame_equal(back, df)
    pd.testing.assert_frame_equal(load_predictions(path=predictions_path(folder, "val")), df)
    assert sorted(p.name for p in folder.iterdir()) == [META, "predictions-val.csv"]  # no temporary left


def test_the_age_interval_round_trips_and_stays_empty_where_there_is_none(tmp_path):
    df = table(50)
    assert PREDICTED.index("pred_age") + 1 == PREDICTED.index("pred_age_lo") == PREDICTED.index("pred_age_hi") - 1
    df["pred_age_lo"], df["pred_age_hi"] = np.floor(df["pred_age"] - 6.5), np.ceil(df["pred_age"] + 7.25)
    df.loc[:4, list(INTERVAL)] = np.nan  # a face without one
    path = tmp_path / "p.csv"
    write_predictions(df, path)
    assert path.read_text().splitlines()[0].split(",") == [*LABELS, "race", *PREDICTED]
    back = load_predictions(path=path)
    pd.testing.assert_frame_equal(back, df)
    assert back[list(INTERVAL)].dtypes.eq(np.float64).all() and back.loc[:4, "pred_age_lo"].isna().all()


def test_a_table_short_of_a_column_is_not_written_and_the_old_file_stays(tmp_path):
    path = tmp_path / "p.csv"
    write_predictions(table(), path)
    before = path.read_bytes()
    with pytest.raises(ValueError) as e:
        write_predictions(table().drop(columns=["p_female"]), path)
    assert str(e.value) == ERR_MISSING_COLUMNS.format(missing="p_female", expected=", ".join(REQUIRED))
    with pytest.raises(ValueError) as e:
        write_predictions(table().drop(columns=["age", "age_bin"]), path)
    assert str(e.value) == ERR_NO_AGE
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["p.csv"]


def test_reading_errors_word_for_word(tmp_path):
    folder = checkpoint_folder(tmp_path / "ck")
    with pytest.raises(ValueError) as e:
        load_predictions(folder, "test")
    assert str(e.value) == ERR_NO_PREDICTIONS.format(path=folder, split="test")
    assert str(e.value) == (f"{folder} has no predictions-test.csv: run python -m agegender.evaluate --checkpoint "
                            f"{folder} --data PATH --split test")
    (tmp_path / "plain").mkdir()
    with pytest.raises(CheckpointError) as e:
        load_predictions(tmp_path / "plain", "val")
    assert str(e.value) == ERR_NO_META.format(path=tmp_path / "plain", META=META)
    with pytest.raises(ValueError) as e:
        load_predictions(path=tmp_path)  # a folder, not a file
    assert str(e.value).startswith(ERR_UNREADABLE.format(path=tmp_path, detail="")) and "directory" in str(e.value)
    short = tmp_path / "short.csv"
    table().drop(columns=["gender", "p_female"]).to_csv(short, index=False)
    with pytest.raises(ValueError) as e:
        load_predictions(path=short)
    assert str(e.value) == ERR_MISSING_COLUMNS.format(missing="gender, p_female", expected=", ".join(REQUIRED))
    assert str(e.value) == "the predictions lack column(s) gender, p_female; expected gender, pred_age, p_female"


def test_validate_names_what_is_needed():
    df = table()
    assert validate(df) is df
    with pytest.raises(ValueError) as e:
        validate(df.drop(columns=["file"]), IMAGE_KEYS)
    assert str(e.value) == ERR_MISSING_COLUMNS.format(missing="file", expected="file, age, age_bin, gender")
    with pytest.raises(ValueError, match="lack column"):
        pair(df.drop(columns=["file"]), df)  # pairing needs the file as well as the labels


# What fairness.metric_columns and metrics.summary built, each its own way, before both read this module.
def old_fairness_columns(df):
    female = (df["gender"].astype(str) == GENDERS[1]).to_numpy()
    p = df["p_female"].to_numpy(np.float64)
    return {"err": (df["pred_age"].to_numpy(np.float64) - df["age"].to_numpy(np.float64)), "female": female,
            "p_female": p, "correct": (p >= 0.5) == female}


def without_bins(cols: dict) -> dict:
    return {k: v for k, v in cols.items() if k != "bin_err"}


def old_summary_columns(age, pred_age, gender, p_female):
    p = np.asarray(p_female, np.float64)
    female = np.asarray(gender, int) == 1
    return {"err": np.asarray(pred_age, np.float64) - np.asarray(age, np.float64), "female": female,
            "p_female": p, "correct": (p >= 0.5) == female}


def assert_same_columns(got, want):
    assert got.keys() == want.keys()
    for k in want:
        assert got[k].dtype == want[k].dtype, k
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metric_columns_are_what_fairness_and_metrics_built(seed):
    df = table(500, seed)
    df.loc[::7, "p_female"] = 0.5  # the boundary: 0.5 calls female
    assert_same_columns(without_bins(metric_columns(df)), old_fairness_columns(df))
    gender = (df["gender"] == "female").to_numpy(int)  # as training holds labels: 1 = female
    old = old_summary_columns(df["age"].to_numpy(), df["pred_age"].to_numpy(), gender, df["p_female"].to_numpy())
    assert_same_columns(without_bins(metric_arrays(df["age"], df["pred_age"], gender == 1, df["p_female"])), old)
    assert_same_columns(without_bins(metric_columns(df.astype({"gender": "category"}))), old)  # as prepare hands it
    assert metrics.summary(df["age"].to_numpy(), df["pred_age"].to_numpy(), gender, df["p_female"].to_numpy()) \
        == metrics.summary_of(df)


def test_each_side_of_a_paired_table_reads_its_own_predictions():
    a = table(400, 1)
    b = a.assign(pred_age=a["pred_age"] + 2, p_female=1 - a["p_female"])
    m = pair(a, b)
    for side, frame in (("a", a), ("b", b)):
        want = old_fairness_columns(m.assign(pred_age=m[f"pred_age_{side}"], p_female=m[f"p_female_{side}"]))
        assert_same_columns(without_bins(_side(m, side)), want)
        assert_same_columns(_side(m, side), metric_columns(frame.set_index("file").loc[m["file"]].reset_index()))


def test_reading_a_table_imports_no_torch(tmp_path):
    path = tmp_path / "p.csv"
    table().to_csv(path, index=False)
    code = ("import sys; from agegender import predictions as p; "
            f"df = p.load_predictions(path={str(path)!r}); p.metric_columns(df); "
            "assert 'torch' not in sys.modules, sorted(k for k in sys.modules if 'torch' in k)")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
