import json
import logging

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, roc_auc_score

from agegender.data import scan
from agegender.evaluate import main as evaluate_main


def run(args, tiny_checkpoint):
    return evaluate_main(["--checkpoint", str(tiny_checkpoint), *args,
                          "--cache-dir", str(tiny_checkpoint.parent / "cache")])


def test_json_metrics_match_the_predictions(tiny_checkpoint, tiny_data, tmp_path):
    out, js = tmp_path / "p.csv", tmp_path / "m.json"
    assert run(["--data", str(tiny_data), "--split", "test", "--out", str(out), "--json", str(js)],
               tiny_checkpoint) == 0
    m, df = json.loads(js.read_text()), pd.read_csv(out)
    for key in ("n", "age_mae", "age_cs5", "age_bias", "gender_accuracy", "gender_auc"):
        assert key in m
    assert m["n"] == len(df) == sum(s.split == "test" for s in scan(tiny_data).samples)
    err = df["pred_age"] - df["age"]
    assert np.isclose(m["age_mae"], err.abs().mean())
    assert np.isclose(m["age_bias"], err.mean())
    assert np.isclose(m["age_cs5"], (err.abs() <= 5).mean())
    female = (df["gender"] == "female").astype(int)
    assert np.isclose(m["gender_accuracy"], accuracy_score(female, df["p_female"] >= 0.5))
    if female.nunique() == 2:
        assert np.isclose(m["gender_auc"], roc_auc_score(female, df["p_female"]))
    assert (df["pred_age"] >= 0).all() and df["p_female"].between(0, 1).all()
    assert df[["pred_age_lo", "pred_age_hi"]].isna().all().all()  # the tiny checkpoint is not calibrated
    assert df["age_label_tail"].isna().all()  # nor has it an age distribution: the audit's fallback needs no column


def test_split_all_scores_every_image_and_tta_changes_little(tiny_checkpoint, tiny_data, tmp_path):
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    assert run(["--data", str(tiny_data), "--split", "all", "--out", str(a)], tiny_checkpoint) == 0
    assert run(["--data", str(tiny_data), "--split", "all", "--out", str(b), "--no-tta"], tiny_checkpoint) == 0
    tta, plain = pd.read_csv(a), pd.read_csv(b)
    assert len(tta) == len(scan(tiny_data).samples) == len(plain) and list(tta["file"]) == list(plain["file"])
    # TTA is applied (ages move) and averages in the mirror rather than replacing the image: it moves
    # ages by much less than their error. Gender is not compared: the generated data marks it with a
    # stripe on the left edge, which the mirror moves.
    moved = (tta["pred_age"] - plain["pred_age"]).abs()
    mae = (plain["pred_age"] - plain["age"]).abs().mean()
    assert moved.max() > 0 and moved.mean() < 0.5 * mae, (moved.mean(), mae)


def test_errors_exit_2_with_one_line(tiny_data, tmp_path, capsys):
    assert evaluate_main(["--checkpoint", str(tmp_path / "none"), "--data", str(tiny_data)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: checkpoint folder") and "Traceback" not in err


def test_damaged_dataset_files_are_counted_reported_and_skipped(tiny_checkpoint, tmp_path, caplog):
    from .conftest import make_dataset
    from .test_data import damage

    names = make_dataset(tmp_path / "d", n=20)
    expected = damage(tmp_path / "d", names)
    for attempt in ("decoded", "from the cache"):
        caplog.clear()
        out, js = tmp_path / f"p-{attempt}.csv", tmp_path / f"m-{attempt}.json"
        with caplog.at_level(logging.WARNING):
            code = evaluate_main(["--checkpoint", str(tiny_checkpoint), "--data", str(tmp_path / "d"), "--split", "all",
                                  "--out", str(out), "--json", str(js), "--cache-dir", str(tmp_path / "cache")])
        assert code == 0, attempt
        df, m = pd.read_csv(out), json.loads(js.read_text())
        assert len(df) == m["n"] == 17 and not set(df["file"]) & set(expected)
        assert m["unreadable"] == 3
        [report] = [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()]
        assert report.startswith("skipped 3 unreadable image(s), e.g. ")
        assert all(msg in report for msg in expected.values())
