import json
import logging
import shutil

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, roc_auc_score

from agegender.data.utkface import scan, split_of
from agegender.evaluation.evaluate import main as evaluate_main


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
    from ..conftest import make_dataset
    from ..data.test_data import damage

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


def test_into_checkpoint_stores_the_scored_datas_figures_and_the_audit_reuses_them(tiny_checkpoint, tiny_data,
                                                                                   tmp_path, capsys):
    """A checkpoint scored on another copy of its data (the shipped pair: trained on a packed zip, scored on the
    original chips) records that copy's fingerprint, so the audit reads its predictions rather than the model."""
    from types import SimpleNamespace

    from agegender.evaluation.evaluate import ERR_INTO, NOTE_RECALIBRATE, scored_fingerprint
    from agegender.evaluation.intervals import main as intervals_main
    from agegender.models.checkpoint import read_meta
    from agegender.review import audit_run as audit

    ck, copy = tmp_path / "ck", tmp_path / "UTKFace"
    shutil.copytree(tiny_checkpoint, ck)
    shutil.copytree(tiny_data, copy)
    next(p for p in sorted(copy.iterdir()) if split_of(p.name) == "train").unlink()
    theirs, ours = scan(tiny_data).fingerprint, scan(copy).fingerprint
    assert theirs != ours and read_meta(ck)["dataset_fingerprint"] == theirs
    known = SimpleNamespace(predictions=None, checkpoint=ck)
    assert audit._known(known, scan(copy), ("val", "test")) is None  # stored predictions are of other data
    assert run(["--data", str(copy), "--into-checkpoint"], ck) == 0
    out = capsys.readouterr().out
    meta = read_meta(ck)
    for split in ("val", "test"):
        assert scored_fingerprint(meta, split) == ours and f"{split}: n=" in out
        df = pd.read_csv(ck / f"predictions-{split}.csv")
        assert sorted(df["file"]) == sorted(s.member for s in scan(copy).samples if s.split == split)
        assert meta["metrics"][split]["n"] == len(df)
        assert np.isclose(meta["metrics"][split]["age_mae"], (df["pred_age"] - df["age"]).abs().mean())
    assert meta["dataset_fingerprint"] == theirs  # what it was trained on does not change
    assert audit._known(known, scan(copy), ("val", "test")) is not None
    assert audit._known(known, scan(tiny_data), ("val",)) is None

    # intervals calibrated on other images than those scored: said, with the commands that mend it
    assert intervals_main(["--checkpoint", str(ck), "--data", str(tiny_data),
                           "--cache-dir", str(tiny_checkpoint.parent / "cache")]) == 0
    capsys.readouterr()
    assert run(["--data", str(copy), "--into-checkpoint"], ck) == 0
    assert "note: " + NOTE_RECALIBRATE.format(path=ck, data=copy) + "\n" in capsys.readouterr().err
    assert run(["--data", str(tiny_data), "--into-checkpoint"], ck) == 0
    assert "note:" not in capsys.readouterr().err

    for extra in (["--out", str(tmp_path / "p.csv")], ["--split", "val"], ["--limit", "5"]):
        assert run(["--data", str(copy), "--into-checkpoint", *extra], ck) == 2
        assert capsys.readouterr().err == f"error: {ERR_INTO}\n"


def test_a_checkpoint_without_the_record_scored_what_it_trained_on():
    from agegender.evaluation.evaluate import scored_fingerprint

    assert scored_fingerprint({"dataset_fingerprint": "a", "metrics": {"val": {"n": 3}}}, "val") == "a"
    assert scored_fingerprint({"dataset_fingerprint": "a", "metrics": {"val": {"dataset_fingerprint": "b"}}},
                              "val") == "b"
    assert scored_fingerprint({"dataset_fingerprint": "a"}, "test") == "a"
