"""The Bias page's "without look-alikes of training faces" toggle (issue 33 item 3) on a copy of the shipped
checkpoint: it recomputes every figure without the faces its leakage.json flags, and without that file the page
says what to run."""

from __future__ import annotations

import shutil

import pytest
from streamlit.testing.v1 import AppTest

from agegender import lookalikes as L
from agegender.labels import image_key
from agegender.predictions import load_predictions

from ..conftest import ROOT

SHIPPED = ROOT / "checkpoints" / "dlib-resnet29-utkface"


def page(ck, monkeypatch):
    monkeypatch.setenv("AGEGENDER_CHECKPOINTS", str(ck.parent))
    at = AppTest.from_file(str(ROOT / "dashboard" / "app.py"), default_timeout=180).run()
    at.switch_page("pages/bias.py").run()
    assert not at.exception and not at.error
    return at


@pytest.fixture
def ck(tmp_path):
    out = tmp_path / "ck" / SHIPPED.name
    shutil.copytree(SHIPPED, out)
    return out


def headline_n(at) -> int:
    label = at.metric[0].label  # "Age MAE (n=2,117)"
    return int(label.rsplit("n=", 1)[1].rstrip(")").replace(",", ""))


def test_the_toggle_recomputes_the_figures_without_flagged_faces(ck, monkeypatch):
    at = page(ck, monkeypatch)
    df = load_predictions(ck, "val")
    flagged = df["file"].map(image_key).isin(L.flagged(L.read_leakage(ck / "leakage.json")))
    toggle = at.toggle(key="bias_no_look_alikes")
    assert f"({int(flagged.sum())} of {len(df)} here)" in toggle.label
    assert headline_n(at) == len(df)
    before = at.metric[0].value
    toggle.set_value(True).run()
    assert not at.exception and not at.error
    assert headline_n(at) == len(df) - int(flagged.sum())
    kept = df[~flagged]
    assert at.metric[0].value == f"{(kept['pred_age'] - kept['age']).abs().mean():.2f} y" != before
    assert any(c.value.startswith(f"without {int(flagged.sum())} of {len(df)} faces whose look-alike")
               for c in at.caption)


def test_without_a_check_the_page_says_what_to_run_and_a_damaged_one_is_one_warning(ck, monkeypatch):
    (ck / "leakage.json").unlink()
    at = page(ck, monkeypatch)
    assert "bias_no_look_alikes" not in [t.key for t in at.toggle]
    assert any("python -m agegender.leakage" in c.value for c in at.caption)
    (ck / "leakage.json").write_text("{")
    at = page(ck, monkeypatch)
    assert "bias_no_look_alikes" not in [t.key for t in at.toggle]
    assert [w.value for w in at.warning][-1].startswith(f"{ck / 'leakage.json'} is not a leakage file")
