"""The predictions table: one name, one writer, one reader, one check, one conversion to the
arrays the metrics read; and no torch on the way."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from agegender import metrics
from agegender.compare import _side, pair
from agegender.labels import GENDERS
from agegender.meta import ERR_NO_META, META, REQUIRED_META, CheckpointError
from agegender.predictions import (
    COLUMNS,
    ERR_MISSING_COLUMNS,
    ERR_NO_PREDICTIONS,
    ERR_UNREADABLE,
    IMAGE_KEYS,
    PREDICTED,
    REQUIRED,
    load_predictions,
    metric_arrays,
    metric_columns,
    predictions_path,
    validate,
    write_predictions,
)

from .conftest import ROOT
from .test_fairness import fake_predictions


def table(n: int = 300, seed: int = 0) -> pd.DataFrame:
    return fake_predictions(n, seed).assign(split="val")[list(COLUMNS)]


def checkpoint_folder(path):
    """A folder that reads as a checkpoint (its meta.json), with no weights: enough for predictions."""
    path.mkdir()
    (path / META).write_text(json.dumps({k: "x" for k in REQUIRED_META}))
    return path


def test_the_columns_are_declared_once_and_agree():
    assert set(IMAGE_KEYS) <= set(COLUMNS) and set(REQUIRED) <= set(COLUMNS) and set(PREDICTED) <= set(REQUIRED)
    assert not set(IMAGE_KEYS) & set(PREDICTED)  # pairing two checkpoints keeps both sides' predictions


def test_naming(tmp_path):
    assert predictions_path(tmp_path, "val") == tmp_path / "predictions-val.csv"
    assert predictions_path(str(tmp_path), "test") == tmp_path / "predictions-test.csv"


def test_write_then_read_round_trip(tmp_path):
    folder = checkpoint_folder(tmp_path / "ck")
    df = table()
    write_predictions(df.iloc[:, ::-1], predictions_path(folder, "val"))  # any column order in, COLUMNS out
    back = load_predictions(folder, "val")
    assert list(back.columns) == list(COLUMNS)
    pd.testing.assert_frame_equal(back, df)
    pd.testing.assert_frame_equal(load_predictions(path=predictions_path(folder, "val")), df)
    assert sorted(p.name for p in folder.iterdir()) == [META, "predictions-val.csv"]  # no temporary left


def test_a_table_short_of_a_column_is_not_written_and_the_old_file_stays(tmp_path):
    path = tmp_path / "p.csv"
    write_predictions(table(), path)
    before = path.read_bytes()
    with pytest.raises(ValueError) as e:
        write_predictions(table().drop(columns=["split", "race"]), path)
    assert str(e.value) == ERR_MISSING_COLUMNS.format(missing="split, race", expected=", ".join(COLUMNS))
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
    assert str(e.value) == ("the predictions lack column(s) gender, p_female; "
                            "expected age, gender, race, pred_age, p_female")


def test_validate_names_what_is_needed():
    df = table()
    assert validate(df) is df
    with pytest.raises(ValueError) as e:
        validate(df.drop(columns=["file"]), IMAGE_KEYS)
    assert str(e.value) == ERR_MISSING_COLUMNS.format(missing="file", expected="file, age, gender, race")
    with pytest.raises(ValueError, match="lack column"):
        pair(df.drop(columns=["file"]), df)  # pairing needs the file as well as the labels


# What fairness.metric_columns and metrics.summary built, each its own way, before both read this module.
def old_fairness_columns(df):
    female = (df["gender"].astype(str) == GENDERS[1]).to_numpy()
    p = df["p_female"].to_numpy(np.float64)
    return {"err": (df["pred_age"].to_numpy(np.float64) - df["age"].to_numpy(np.float64)), "female": female,
            "p_female": p, "correct": (p >= 0.5) == female}


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
    assert_same_columns(metric_columns(df), old_fairness_columns(df))
    gender = (df["gender"] == "female").to_numpy(int)  # as training holds labels: 1 = female
    old = old_summary_columns(df["age"].to_numpy(), df["pred_age"].to_numpy(), gender, df["p_female"].to_numpy())
    assert_same_columns(metric_arrays(df["age"], df["pred_age"], gender == 1, df["p_female"]), old)
    assert_same_columns(metric_columns(df.astype({"gender": "category"})), old)  # as prepare may hand it over
    assert metrics.summary(df["age"].to_numpy(), df["pred_age"].to_numpy(), gender, df["p_female"].to_numpy()) \
        == metrics.summary_of(df)


def test_each_side_of_a_paired_table_reads_its_own_predictions():
    a = table(400, 1)
    b = a.assign(pred_age=a["pred_age"] + 2, p_female=1 - a["p_female"])
    m = pair(a, b)
    for side, frame in (("a", a), ("b", b)):
        want = old_fairness_columns(m.assign(pred_age=m[f"pred_age_{side}"], p_female=m[f"p_female_{side}"]))
        assert_same_columns(_side(m, side), want)
        assert_same_columns(_side(m, side), metric_columns(frame.set_index("file").loc[m["file"]].reset_index()))


def test_reading_a_table_imports_no_torch(tmp_path):
    path = tmp_path / "p.csv"
    table().to_csv(path, index=False)
    code = ("import sys; from agegender import predictions as p; "
            f"df = p.load_predictions(path={str(path)!r}); p.metric_columns(df); "
            "assert 'torch' not in sys.modules, sorted(k for k in sys.modules if 'torch' in k)")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
