import json
import shutil

import numpy as np
import pandas as pd
import pytest

from agegender.faces import quality
from agegender.fairness.shift import (
    AGE_GENDER,
    BOTH,
    ERR_NO_FACES,
    ERR_NO_OVERLAP,
    NOTE_NO_POSE,
    POSE,
    closed,
    explain,
    main,
    rebin,
    standardised,
)
from agegender.predictions import complete

FRONTAL, HALF, TURNED = quality.POSE_LABELS
YAW = {FRONTAL: 5.0, HALF: 20.0, TURNED: 45.0}


def photo_set(cells: list[tuple[str, str, str, int, float]]) -> pd.DataFrame:
    """A predictions table of a labelled photo set: per (gender, age bin, pose, count, share right) that many
    faces, the first share of them called right (gender and age bin alike)."""
    rows = []
    for gender, age_bin, pose, n, right in cells:
        for i in range(n):
            ok = i < round(right * n)
            female = (gender == "female") == ok
            rows.append({"file": f"{len(rows)}.jpg", "age_bin": age_bin, "gender": gender,
                         "pred_age": 25.0 if age_bin == "20-29" else 65.0, "p_female": 0.9 if female else 0.1,
                         "pred_age_bin": age_bin if ok else "10-19", "yaw": YAW[pose], "found": True})
    return complete(pd.DataFrame(rows))


def chips(cells: list[tuple[str, float, int]]) -> pd.DataFrame:
    """A checkpoint's held-out predictions: per (gender, exact age, count) that many faces, all right."""
    rows = [{"file": f"c{i}-{g}-{a}.jpg", "age": a, "gender": g, "pred_age": a, "p_female": 0.9 if g == "female"
             else 0.1} for g, a, n in cells for i in range(n)]
    return complete(pd.DataFrame(rows))


REFERENCE = chips([("female", 25, 60), ("male", 25, 60), ("female", 65, 20), ("male", 65, 20),
                   ("female", 5, 50)])  # the children lie outside the set's bins


def test_standardised_recovers_a_known_mix():
    # right on every frontal face, on half the turned: at a mix of 3 frontal to 1 turned the accuracy is 7/8
    correct = np.r_[np.ones(10), np.ones(5), np.zeros(5)].astype(bool)
    cells = np.array(["f"] * 10 + ["t"] * 10)
    r = standardised(correct, cells, pd.Series({"f": 0.75, "t": 0.25}), n_boot=200)
    assert r["value"] == pytest.approx(0.875)
    assert r["lo"] <= r["value"] <= r["hi"] and r["coverage"] == 1.0 and r["n"] == 20
    # the set's own mix gives the plain accuracy; a cell the faces lack is left out and coverage says so
    assert standardised(correct, cells, pd.Series({"f": 0.5, "t": 0.5}), 0)["value"] == pytest.approx(0.75)
    part = standardised(correct, cells, pd.Series({"f": 0.6, "t": 0.2, "x": 0.2}), 0)
    assert part["value"] == pytest.approx(0.875) and part["coverage"] == pytest.approx(0.8)


def test_pose_standardisation_closes_a_drop_that_pose_alone_makes():
    # right on 100% of frontal faces and 50% of turned ones, half the set turned: 75% as measured; at a
    # reference mix with (almost) no turned faces the pose figure is close to 100%, the age x gender one stays
    cells = [(g, b, p, 20, 1.0 if p == FRONTAL else 0.5) for g in ("female", "male") for b in ("20-29", "60-69")
             for p in (FRONTAL, TURNED)]
    table, notes = explain(photo_set(cells), REFERENCE, {FRONTAL: 0.99, HALF: 0.0, TURNED: 0.01}, n_boot=200)
    t = table.set_index("figure")
    assert notes == []
    assert t.loc["reference", "gender_accuracy"] == 1.0 and t.loc["reference", "n"] == 160  # no children
    assert t.loc["as measured", "gender_accuracy"] == pytest.approx(0.75)
    assert t.loc[AGE_GENDER, "gender_accuracy"] == pytest.approx(0.75)
    assert t.loc[POSE, "gender_accuracy"] == pytest.approx(0.995)
    assert t.loc[BOTH, "gender_accuracy"] == pytest.approx(0.995)
    assert closed(table)[POSE] == pytest.approx(0.98)
    for m in ("gender_accuracy", "age_bin_accuracy"):
        assert (table[f"{m}_lo"] <= table[m] + 1e-12).all() and (table[m] <= table[f"{m}_hi"] + 1e-12).all()


def test_age_gender_standardisation_weights_by_the_references_cells():
    # old women called right half the time, everyone else always; the set holds as many old women as young
    # ones, the reference three young to one old: at its mix, women are right 7/8 of the time
    cells = [("female", "20-29", FRONTAL, 20, 1.0), ("female", "60-69", FRONTAL, 20, 0.5),
             ("male", "20-29", FRONTAL, 20, 1.0), ("male", "60-69", FRONTAL, 20, 1.0)]
    t = explain(photo_set(cells), REFERENCE, n_boot=0)[0].set_index("figure")
    assert t.loc["as measured", "gender_accuracy"] == pytest.approx(70 / 80)
    assert t.loc[AGE_GENDER, "gender_accuracy"] == pytest.approx(0.375 + 0.375 + 0.125 * 0.5 + 0.125)
    # every face frontal: the pose mix changes nothing the set has
    assert t.loc[POSE, "gender_accuracy"] == pytest.approx(70 / 80)
    mix = quality.UTKFACE_POSE_MIX
    assert t.loc[POSE, "coverage"] == pytest.approx(mix[FRONTAL] / sum(mix.values()))


def test_reference_is_binned_on_the_sets_scale():
    labels = pd.Series(["20-29", "60-69"])
    r = rebin(REFERENCE, labels)
    assert set(r["age_bin"]) == {"20-29", "60-69"} and len(r) == 160
    assert (r["pred_age_bin"] == r["age_bin"]).all()


def test_a_set_without_pose_or_faces_or_overlap_says_so():
    cells = [("female", "20-29", FRONTAL, 10, 1.0), ("male", "20-29", FRONTAL, 10, 1.0)]
    no_pose = photo_set(cells).drop(columns="yaw")
    table, notes = explain(no_pose, REFERENCE, n_boot=0)
    assert notes == [NOTE_NO_POSE] and list(table["figure"]) == ["reference", "as measured", AGE_GENDER]
    with pytest.raises(ValueError, match="nothing to measure") as e:
        explain(no_pose.assign(found=False), REFERENCE, n_boot=0)
    assert str(e.value) == ERR_NO_FACES
    with pytest.raises(ValueError) as e:
        explain(photo_set(cells), chips([("male", 5, 10)]), n_boot=0)
    assert str(e.value) == ERR_NO_OVERLAP.format(bins="20-29")


def test_cli(tiny_checkpoint, tmp_path, capsys):
    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, folder)
    (folder / "predictions-test.csv").unlink(missing_ok=True)
    REFERENCE.to_csv(folder / "predictions-val.csv", index=False)  # no test split: val alone serves
    cells = [(g, "20-29", p, 10, 0.8) for g in ("female", "male") for p in (FRONTAL, TURNED)]
    photo_set(cells).to_csv(tmp_path / "set.csv", index=False)
    out = tmp_path / "shift.json"
    assert main(["--checkpoint", str(folder), "--predictions", str(tmp_path / "set.csv"), "--json", str(out),
                 "--n-boot", "50"]) == 0
    printed = capsys.readouterr().out
    assert "set at the reference's pose mix" in printed and "closes" in printed
    rows = json.loads(out.read_text())["rows"]
    assert [r["figure"] for r in rows] == ["reference", "as measured", AGE_GENDER, POSE, BOTH]
    assert main(["--checkpoint", str(folder), "--predictions", str(tmp_path / "missing.csv")]) == 2
    assert capsys.readouterr().err.startswith("error: cannot read predictions")


def test_report_carries_the_set_at_the_training_mix(tiny_checkpoint, tmp_path, capsys):
    from agegender.report import command as report

    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, folder)
    REFERENCE.to_csv(folder / "predictions-val.csv", index=False)
    REFERENCE.to_csv(folder / "predictions-test.csv", index=False)
    cells = [(g, b, p, 10, 0.8) for g in ("female", "male") for b in ("20-29", "60-69") for p in (FRONTAL, TURNED)]
    photo_set(cells).assign(race="A").to_csv(tmp_path / "set.csv", index=False)
    js, page = tmp_path / "r.json", tmp_path / "r.html"
    assert report.main(["--predictions", str(tmp_path / "set.csv"), "--reference", str(folder), "--n-boot", "50",
                        "--json", str(js), "--html", str(page), "--no-label-audit"]) == 0
    section = json.loads(js.read_text())["shift"]
    assert [r["figure"] for r in section["rows"]] == ["reference", "as measured", AGE_GENDER, POSE, BOTH]
    assert section["rows"][0]["n"] == 320  # val and test, no children
    assert "Why lower than on the training data" in page.read_text()
    assert "this set at UTKFace's pose mix" in capsys.readouterr().out
    # a reference that cannot serve is a note, and the report stands
    assert report.main(["--predictions", str(tmp_path / "set.csv"), "--reference", str(tmp_path / "nothing"),
                        "--n-boot", "20", "--json", str(js), "--no-label-audit"]) == 0
    assert "no comparison with the training mix" in capsys.readouterr().err
    assert "shift" not in json.loads(js.read_text())
    with pytest.raises(SystemExit):
        report.main(["--checkpoint", str(folder), "--reference", str(folder)])
    assert report.ERR_REFERENCE in capsys.readouterr().err
