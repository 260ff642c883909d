"""The bias report's faithfulness section: whether each Grad-CAM method beats a random map, per head, and the
groups it is not shown to, read from the checkpoint's faithfulness report (python -m agegender.faithfulness)."""

import json
import shutil

from agegender.fairness import faithful
from agegender.report.command import main

from ..conftest import ROOT

SHIPPED = ROOT / "checkpoints" / "dlib-resnet29-utkface"


def row(grouping, group, beats):
    return {"grouping": grouping, "group": group, "n": 40, "beats_random": beats}


REPORT = {"source": "test", "n": 200, "sign": faithful.SIGN, "heads": {
    "age": {"methods": {"GradCAM": {"overall": {"beats_random": True},
                                    "by_group": [row("race", "Asian", False), row("race", "White", True)]}}},
    "gender": {"methods": {"GradCAM": {"overall": {"beats_random": False},
                                       "by_group": [row("gender", "female", False)]}}}}}


def test_the_checkpoints_faithfulness_report_reaches_the_json(tmp_path, capsys):
    ck = tmp_path / SHIPPED.name
    shutil.copytree(SHIPPED, ck)
    args = ["--checkpoint", str(ck), "--split", "test", "--n-boot", "10", "--no-label-audit"]
    # the shipped baseline carries its own report: it reaches the JSON as it says
    assert main([*args, "--json", str(tmp_path / "shipped.json")]) == 0
    shipped = faithful.read_report(ck)
    got = json.loads((tmp_path / "shipped.json").read_text())["faithfulness"]
    assert got["n"] == shipped["n"] and {h: r["GradCAM"]["beats_random"] for h, r in got["heads"].items()} == {
        h: shipped["heads"][h]["methods"]["GradCAM"]["beats_random"] for h in faithful.HEAD_MAPS}
    faithful.report_path(ck, "test").unlink()
    assert main([*args, "--json", str(tmp_path / "none.json")]) == 0
    assert "faithfulness" not in json.loads((tmp_path / "none.json").read_text())
    faithful.report_path(ck, "test").write_text(json.dumps(REPORT))
    assert main([*args, "--json", str(tmp_path / "r.json")]) == 0
    got = json.loads((tmp_path / "r.json").read_text())["faithfulness"]
    assert got["heads"] == {"age": {"GradCAM": {"beats_random": True, "fails_for": ["race Asian"]}},
                            "gender": {"GradCAM": {"beats_random": False, "fails_for": ["gender female"]}}}
    assert (got["n"], got["sign"]) == (200, faithful.SIGN)
    out = capsys.readouterr().out
    assert "age GradCAM beats random (not for 1 group(s)); gender GradCAM not shown better" in out


def test_a_named_report_that_is_not_one_is_one_line(tmp_path, capsys):
    bad = tmp_path / "f.json"
    bad.write_text("[]")
    assert main(["--checkpoint", str(SHIPPED), "--faithfulness", str(bad), "--n-boot", "10"]) == 2
    assert capsys.readouterr().err.startswith(f"error: {bad} is not a faithfulness report")
