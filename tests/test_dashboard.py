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
    at = app(tmp_path / "ck").switch_page("pages/checkpoints.py").run()
    assert not at.exception
    table = at.dataframe[0].value
    assert list(table["checkpoint"]) == ["tiny"]
    assert table["test gender acc"].between(0, 1).all()


def test_checkpoints_page_without_checkpoints_says_how_to_train(app, tmp_path):
    at = app(tmp_path / "empty")
    assert not at.exception
    assert "Pick a checkpoint" in at.info[0].value  # the predict page, first
    at.switch_page("pages/checkpoints.py").run()
    assert "No checkpoints" in at.info[0].value and "train.py" in at.info[0].value


@pytest.fixture
def predict_app(app, tiny_checkpoint, tmp_path):
    shutil.copytree(tiny_checkpoint, tmp_path / "ck" / "tiny")
    return app(tmp_path / "ck")


def markdown_text(at):
    return " ".join(m.value for m in at.markdown)


def test_predict_page_explains_the_example(predict_app):
    at = predict_app
    assert not at.exception
    assert "P(female)" in markdown_text(at) and "**tiny**" in markdown_text(at)
    images = at.get("image")
    assert len(images) >= 5  # boxed photo, model input, older, younger, predicted gender
    table = at.dataframe[-1].value
    assert list(table["face"]) == [1] and table["age"].notna().all()


def test_predict_page_no_face_and_unreadable_upload(predict_app, tmp_path):
    import io

    import numpy as np
    from PIL import Image

    at = predict_app
    at.radio(key="source").set_value("Upload").run()
    y, x = np.mgrid[0:240, 0:320]
    buf = io.BytesIO()
    Image.fromarray(np.stack([x % 256, y % 256, (x + y) % 256], -1).astype(np.uint8)).save(buf, "PNG")
    at.file_uploader[0].set_value([("wall.png", buf.getvalue(), "image/png"),
                                   ("broken.jpg", b"not an image", "image/jpeg")]).run()
    assert not at.exception
    errors = [e.value for e in at.error]
    assert "no face found in wall.png" in errors
    assert any(e.startswith("cannot read broken.jpg as an image") for e in errors)
    # the user can still use the whole image
    at.toggle(key="whole").set_value(True).run()
    assert not at.exception
    assert "no face found in wall.png" not in [e.value for e in at.error]
    assert "P(female)" in markdown_text(at)
