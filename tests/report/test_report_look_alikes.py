"""python -m agegender.report --exclude-look-alikes: every figure without the faces the leakage check flagged."""

import json
import shutil

import pytest

from agegender import lookalikes as L
from agegender.labels import image_key
from agegender.predictions import load_predictions
from agegender.report.command import ERR_LOOK_ALIKES_FILE, main

from ..conftest import ROOT

SHIPPED = ROOT / "checkpoints" / "dlib-resnet29-utkface"


@pytest.fixture
def ck(tmp_path):
    out = tmp_path / SHIPPED.name
    shutil.copytree(SHIPPED, out)
    return out


def test_the_flag_recomputes_every_figure_without_the_flagged_faces(ck, tmp_path):
    args = ["--checkpoint", str(ck), "--split", "test", "--n-boot", "50", "--by", "race", "--no-label-audit"]
    assert main([*args, "--json", str(tmp_path / "all.json")]) == 0
    assert main([*args, "--exclude-look-alikes", "--json", str(tmp_path / "without.json")]) == 0
    every, without = (json.loads((tmp_path / f).read_text()) for f in ("all.json", "without.json"))
    df = load_predictions(ck, "test")
    flagged = df["file"].map(image_key).isin(L.flagged(L.read_leakage(ck / "leakage.json")))
    assert 0 < flagged.sum() < len(df)
    look = without["look_alikes"]
    assert (look["n_before"], look["n_excluded"]) == (len(df), int(flagged.sum()))
    assert "look_alikes" not in every
    assert look["text"] in without["source"]
    kept = df[~flagged]
    assert (every["overall"]["n"], without["overall"]["n"]) == (len(df), len(kept))
    n = {r["race"]: r["n"] for r in without["groupings"]["race"]["groups"]}
    assert n == kept.groupby("race").size().to_dict()
    assert without["overall"]["age_mae"] == pytest.approx((kept["pred_age"] - kept["age"]).abs().mean())


def test_without_a_leakage_file_the_flag_says_what_to_run(ck, tmp_path, capsys):
    (ck / "leakage.json").unlink()
    assert main(["--checkpoint", str(ck), "--exclude-look-alikes", "--json", str(tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: no leakage file for these faces at {ck / 'leakage.json'}: write it with "
                          "python -m agegender.leakage")
    assert not (tmp_path / "r.json").exists()
    csv = tmp_path / "p.csv"
    load_predictions(SHIPPED, "test").to_csv(csv, index=False)
    assert main(["--predictions", str(csv), "--exclude-look-alikes"]) == 2
    assert capsys.readouterr().err.strip() == f"error: {ERR_LOOK_ALIKES_FILE}"
    assert main(["--predictions", str(csv), "--exclude-look-alikes", str(SHIPPED / "leakage.json"), "--n-boot", "20",
                 "--no-label-audit"]) == 0
    assert "without " in capsys.readouterr().out
