"""The predict page's CAM method picker says, per head, whether each method beats a random map, from the report
python -m agegender.faithfulness wrote beside the checkpoint, and which groups it fails for."""

import json
import shutil

from streamlit.testing.v1 import AppTest

from agegender.explain.gradcam import METHODS
from agegender.fairness import faithful as ff

from ..conftest import ROOT

APP = str(ROOT / "dashboard" / "app.py")


def row(grouping, group, n, beats):
    return {"grouping": grouping, "group": group, "n": n, "score": 0.1, "random": 0.0, "difference": 0.1,
            "difference_lo": 0.05 if beats else -0.05, "difference_hi": 0.2, "beats_random": beats,
            "too_small": n < 30}


def result(beats, failing=()):
    groups = [row("race", "White", 80, True), *(row("race", g, 12, False) for g in failing)]
    return {"overall": row("overall", "overall", 200, beats), "by_group": groups, "beats_random": beats}


def written_report(folder):
    report = {"source": "UTKFace test", "n": 200, "heads": {
        "age": {"methods": {"GradCAM": result(True, failing=["Indian"]), "EigenCAM": result(False)}},
        "gender": {"methods": {"GradCAM": result(False), "EigenCAM": result(True)}}}}
    ff.report_path(folder, "test").write_text(json.dumps(report))


def page(tiny_checkpoint, tmp_path, monkeypatch, with_report: bool):
    folder = tmp_path / "ck" / "tiny"
    shutil.copytree(tiny_checkpoint, folder)
    if with_report:
        written_report(folder)
    monkeypatch.setenv("AGEGENDER_CHECKPOINTS", str(tmp_path / "ck"))
    return AppTest.from_file(APP, default_timeout=60).run()


def test_the_picker_shows_each_methods_verdict_and_the_failing_groups(tiny_checkpoint, tmp_path, monkeypatch):
    at = page(tiny_checkpoint, tmp_path, monkeypatch, with_report=True)
    assert not at.exception
    picker = at.selectbox(key="method")
    assert picker.options[0] == "GradCAM  age: beats random · gender: not shown better than random"
    assert picker.options[list(METHODS).index("EigenCAM")] == \
        "EigenCAM  age: not shown better than random · gender: beats random"
    assert picker.options[list(METHODS).index("LayerCAM")] == "LayerCAM  age: not checked · gender: not checked"
    captions = " ".join(c.value for c in at.caption)
    assert "GradCAM is not shown better than random for age in: race Indian (n=12, too few to judge)." in captions
    assert "for gender in: overall" in captions and "UTKFace test, 200 faces" in captions


def test_without_a_report_the_picker_names_the_methods_alone(tiny_checkpoint, tmp_path, monkeypatch):
    at = page(tiny_checkpoint, tmp_path, monkeypatch, with_report=False)
    assert not at.exception
    assert list(at.selectbox(key="method").options) == list(METHODS)
    assert not any("random" in c.value for c in at.caption)


def test_the_shipped_baselines_report_reaches_the_picker_and_its_intervals_hold_their_estimates(monkeypatch):
    ckpt = ROOT / "checkpoints" / "dlib-resnet29-utkface"
    report = ff.read_report(ckpt)
    assert report is not None, "the shipped baseline has no faithfulness report"
    gradcam = {h: report["heads"][h]["methods"]["GradCAM"] for h in ff.HEAD_MAPS}
    for r in gradcam.values():
        for row in [r["overall"], *r["by_group"]]:
            if row["difference_lo"] is None:  # too few faces for an interval: no verdict either
                assert not row["beats_random"]
                continue
            assert row["difference_lo"] <= row["difference"] <= row["difference_hi"], row
            assert row["beats_random"] == (row["difference_lo"] > 0), row
    monkeypatch.setenv("AGEGENDER_CHECKPOINTS", str(ROOT / "checkpoints"))
    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state["picker_names"] = [ckpt.name]
    at.run()
    assert not at.exception
    said = {h: ff.BEATS if r["beats_random"] else ff.NOT_SHOWN for h, r in gradcam.items()}
    assert at.selectbox(key="method").options[0] == f"GradCAM  age: {said['age']} · gender: {said['gender']}"
