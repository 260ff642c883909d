import shutil

import pytest
from streamlit.testing.v1 import AppTest

from .conftest import ROOT

APP = str(ROOT / "dashboard" / "app.py")


@pytest.fixture
def app(monkeypatch, tmp_path):
    def make(root):
        monkeypatch.setenv("AGEGENDER_CHECKPOINTS", str(root))
        return AppTest.from_file(APP, default_timeout=60).run()
    return make


def test_checkpoints_page_lists_checkpoints(app, tiny_checkpoint, tmp_path):
    shutil.copytree(tiny_checkpoint, tmp_path / "ck" / "tiny")
    at = app(tmp_path / "ck")
    assert not at.exception
    table = at.dataframe[0].value
    assert list(table["checkpoint"]) == ["tiny"]
    assert table["test gender acc"].between(0, 1).all()


def test_checkpoints_page_without_checkpoints_says_how_to_train(app, tmp_path):
    at = app(tmp_path / "empty")
    assert not at.exception
    assert "No checkpoints" in at.info[0].value and "train.py" in at.info[0].value
