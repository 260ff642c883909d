"""The Checkpoints page on the shipped checkpoints: the table, then each checkpoint's model card (what
python -m agegender.modelcard writes for it), health and files; a typed folder that is not a checkpoint
gets the loader's message, not silence."""

import json

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from agegender.meta import ERR_NO_FOLDER, ERR_NO_META
from agegender.report.modelcard import checkpoint_card, checkpoint_files
from dashboard.ui import plain

from ..conftest import ROOT

APP = str(ROOT / "dashboard" / "app.py")
SHIPPED = ROOT / "checkpoints"
NAMES = ("dlib-resnet29-utkface", "dlib-resnet29-balanced")


@pytest.fixture(scope="module")
def page():
    mp = pytest.MonkeyPatch()
    mp.setenv("AGEGENDER_CHECKPOINTS", str(SHIPPED))
    at = AppTest.from_file(APP, default_timeout=180).run()
    at.switch_page("pages/checkpoints.py").run()
    yield at
    mp.undo()


def markdown(at) -> str:
    return "\n".join(m.value for m in at.markdown)


def test_library_card_holds_the_checkpoints_own_test_figures(tmp_path):
    """checkpoint_card from the folder's files alone: its test MAE as the card prints it, read independently
    from predictions-test.csv, and the intended use."""
    folder = SHIPPED / NAMES[0]
    text = checkpoint_card(folder, n_boot=50)
    df = pd.read_csv(folder / "predictions-test.csv")
    mae = (df["pred_age"] - df["age"]).abs().mean()
    assert text.startswith(f"## {NAMES[0]}\n")
    assert f"| **all** | {len(df)} | {mae:.2f} y [" in text
    for heading in ("Intended use", "Not for", "Where it fails most"):
        assert heading in text
    files = {f["file"]: f for f in checkpoint_files(folder)}
    assert files["model.safetensors"]["bytes"] == (folder / "model.safetensors").stat().st_size
    assert files["history-2.csv"]["holds"] == files["history-1.csv"]["holds"] != ""


@pytest.mark.parametrize("name", NAMES)
def test_each_shipped_checkpoint_shows_its_model_card(page, name):
    at = page
    at.selectbox(key="ck_pick").set_value(name).run()
    assert not at.exception and not at.error
    assert set(at.dataframe[0].value["checkpoint"]) == set(NAMES)  # the table stays first
    df = pd.read_csv(SHIPPED / name / "predictions-test.csv")
    mae = (df["pred_age"] - df["age"]).abs().mean()
    meta = json.loads((SHIPPED / name / "meta.json").read_text())
    text = markdown(at)
    assert f"## {name}\n" in text and f"| **all** | {len(df)} | {mae:.2f} y [" in text
    assert f"Architecture: {meta['arch']}" in text and "**Intended use.**" in text
    assert [s.value for s in at.success] == ["Health: ok (the validation figures say it learnt)"]
    files = at.dataframe[-1].value
    assert set(files["file"]) >= {"meta.json", "model.safetensors", "predictions-test.csv"}


def test_a_mistyped_folder_says_why(page, tmp_path):
    at = page
    wrong = tmp_path / "dlib-resnet29-utkfce"
    at.text_input(key="ck_path").set_value(str(wrong)).run()
    assert not at.exception
    assert [e.value for e in at.error] == [f"Not a readable checkpoint: {plain(ERR_NO_FOLDER.format(path=wrong))}"]
    assert "## dlib-resnet29" not in markdown(at)  # no card of the checkpoint still picked above
    wrong.mkdir()
    at.text_input(key="ck_path").set_value(str(wrong) + " ").run()
    assert [e.value for e in at.error] == [
        f"Not a readable checkpoint: {plain(ERR_NO_META.format(path=wrong, META='meta.json'))}"]
    at.text_input(key="ck_path").set_value(str(SHIPPED / NAMES[1])).run()
    assert not at.error and f"## {NAMES[1]}\n" in markdown(at)
    at.text_input(key="ck_path").set_value("").run()
