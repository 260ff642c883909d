import json
import shutil

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from dashboard import caches

from ..conftest import ROOT

APP = str(ROOT / "dashboard" / "app.py")


@pytest.fixture
def app(monkeypatch, tmp_path):
    def make(root, picks=None):
        monkeypatch.setenv("AGEGENDER_CHECKPOINTS", str(root))
        at = AppTest.from_file(APP, default_timeout=60)
        if picks:  # AppTest drops the entry script's sidebar on reruns: preset the picker instead
            at.session_state["picker_names"] = picks
        return at.run()
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


@pytest.fixture
def two_checkpoints(app, tiny_checkpoint, tmp_path):
    import pandas as pd

    root = tmp_path / "two"
    shutil.copytree(tiny_checkpoint, root / "a")
    shutil.copytree(tiny_checkpoint, root / "b")
    for split in ("val", "test"):  # make b differ: older guesses, some flipped genders
        p = root / "b" / f"predictions-{split}.csv"
        df = pd.read_csv(p)
        df["pred_age"] += 3
        df.loc[::3, "p_female"] = 1 - df.loc[::3, "p_female"]
        df.to_csv(p, index=False)
    return app(root, picks=["a", "b"])


def test_bias_page(predict_app):
    at = predict_app.switch_page("pages/bias.py").run()
    assert not at.exception
    assert len(at.get("plotly_chart")) == 4
    assert "nothing to compare" in at.info[0].value  # the tiny split has no group of 30
    at.number_input(key="bias_min").set_value(1).run()
    assert not at.exception
    assert len(at.dataframe) == 3  # disparity, all groups and the age-threshold errors
    at.selectbox(key="bias_grouping").set_value("race:gender").run()
    assert not at.exception and len(at.get("plotly_chart")) == 4
    at.selectbox(key="bias_split").set_value("test").run()
    assert not at.exception


def test_compare_page(two_checkpoints):
    at = two_checkpoints.switch_page("pages/compare.py").run()
    assert not at.exception
    assert any(h.value == "b against a" for h in at.header)
    assert any("not training runs" in c.value for c in at.caption)  # the intervals' limit, where deltas are read
    mae = next(m for m in at.metric if m.label == "age MAE")
    assert mae.value.endswith(" y") and mae.delta.endswith(" y")  # 0.00 y here: b's +3 years cancel out
    bias = next(m for m in at.metric if m.label == "age mean signed error")
    assert bias.delta == "+3.00 y"  # b guesses every age 3 years older
    assert len(at.get("plotly_chart")) == 2


def test_compare_page_needs_two(predict_app):
    at = predict_app.switch_page("pages/compare.py").run()
    assert not at.exception and "two or more" in at.info[0].value


def test_explorer_page_without_data_says_how_to_set_it(app, tiny_checkpoint, tmp_path, monkeypatch):
    from agegender.meta import META
    from agegender.review.explorer import NO_DATA

    monkeypatch.delenv("AGEGENDER_UTKFACE", raising=False)
    shutil.copytree(tiny_checkpoint, tmp_path / "ck" / "tiny")
    meta = json.loads((tmp_path / "ck" / "tiny" / META).read_text())
    meta["train_config"]["data"] = str(tmp_path / "gone")  # the data it was trained on is not on this machine
    (tmp_path / "ck" / "tiny" / META).write_text(json.dumps(meta))
    at = app(tmp_path / "ck").switch_page("pages/explorer.py").run()
    assert not at.exception and at.info[0].value == NO_DATA
    assert "AGEGENDER_UTKFACE" in NO_DATA and "--data" not in NO_DATA


def test_explorer_page(app, tiny_checkpoint, tiny_data, tmp_path, monkeypatch):
    monkeypatch.setenv("AGEGENDER_UTKFACE", str(tiny_data))
    shutil.copytree(tiny_checkpoint, tmp_path / "ck" / "tiny")
    at = app(tmp_path / "ck").switch_page("pages/explorer.py").run()
    assert not at.exception
    assert len(at.get("image")) >= 6 + 3  # thumbnails, then the picked face and its maps
    at.radio(key="ex_mode").set_value("Misgendered").run()
    assert not at.exception
    at.button(key="ex_avg_go").click().run()
    assert not at.exception


def test_training_page(predict_app):
    at = predict_app.switch_page("pages/training.py").run()
    assert not at.exception
    assert len(at.get("plotly_chart")) == 1  # train loss, age MAE and gender accuracy side by side in one figure


def test_training_page_shows_each_run_of_a_soup(app, tiny_checkpoint, tmp_path):
    from agegender.train.soup import make_soup

    make_soup([tiny_checkpoint, tiny_checkpoint], tmp_path / "ck" / "soup")
    at = app(tmp_path / "ck").switch_page("pages/training.py").run()
    assert not at.exception
    assert len(at.get("plotly_chart")) == 2  # one figure per run averaged
    assert "The mean of 2 runs' weights" in " ".join(c.value for c in at.caption)


def boundary_app():
    import streamlit as st

    from dashboard import ui

    class Broken:
        title = "broken"

        def run(self):
            st.write("before the failure")
            raise RuntimeError("boom")

    class Fine:
        title = "fine"

        def run(self):
            st.write("fine page")

    ui.run_page(Broken())
    ui.run_page(Fine())


def test_error_boundary_keeps_the_app_alive(caplog):
    # the boundary app.py wraps every page in (AppTest cannot rerun app.py around a failing page)
    at = AppTest.from_function(boundary_app).run()
    assert not at.exception
    assert at.error[0].value.startswith("This page failed: RuntimeError: boom.")
    assert "Traceback" in caplog.text and "boom" in caplog.text  # the details went to the server log
    assert [m.value for m in at.markdown] == ["before the failure", "fine page"]


def test_upload_too_large_and_decompression_bomb(predict_app, monkeypatch):
    import io

    from PIL import Image

    at = predict_app
    at.radio(key="source").set_value("Upload").run()
    buf = io.BytesIO()
    Image.new("RGB", (300, 300), (128, 128, 128)).save(buf, "PNG")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20_000)  # makes the 300 x 300 image a "bomb"
    big = b"\xff" * (26 * 1024 * 1024)
    at.file_uploader[0].set_value([("huge.jpg", big, "image/jpeg"), ("bomb.png", buf.getvalue(), "image/png")]).run()
    assert not at.exception
    errors = [e.value for e in at.error]
    assert "huge.jpg is larger than 25 MB: downscale it first." in errors
    assert any(e.startswith("bomb.png is too large to decode safely") for e in errors)


def test_compare_page_shows_the_gap_change(app, tiny_checkpoint, tmp_path):
    import numpy as np

    from ..fairness.test_fairness import fake_predictions

    root = tmp_path / "gap"
    a = fake_predictions(900, seed=5).assign(split="val")
    hard = a["race"] == "Black"  # b halves the worst group's errors
    b = a.assign(pred_age=np.where(hard, (a["pred_age"] + a["age"]) / 2, a["pred_age"]))
    for name, df in (("a", a), ("b", b)):
        shutil.copytree(tiny_checkpoint, root / name)
        df.to_csv(root / name / "predictions-val.csv", index=False)
    at = app(root, picks=["a", "b"]).switch_page("pages/compare.py").run()
    at.selectbox(key="cmp_grouping").set_value("race").run()
    assert not at.exception
    gap = next(m for m in at.metric if m.label == "Gap in age MAE between race groups")
    assert gap.delta.startswith("-") and "change interval" in gap.help
    label = "Gap in age MAE between race groups with each group given the overall age mix"
    std = next(m for m in at.metric if m.label == label)
    assert std.delta.startswith("-") and "age-standardised" in std.help
    at.selectbox(key="cmp_grouping").set_value("age_bucket:race").run()
    assert not at.exception and not any("overall age mix" in m.label for m in at.metric)


def test_checkpoints_page_shows_health_and_only_allowed_folders(tiny_checkpoint, tmp_path, monkeypatch):
    from agegender.models.catalog import health_of

    shutil.copytree(tiny_checkpoint, tmp_path / "ck" / "tiny")
    monkeypatch.setenv("AGEGENDER_CHECKPOINTS", str(tmp_path / "ck"))
    monkeypatch.delenv("AGEGENDER_ALLOWED_ROOTS", raising=False)
    at = AppTest.from_file(APP, default_timeout=60)
    at.session_state["picker_names"] = []  # no prediction on the first page: this test is about the table
    at.run().switch_page("pages/checkpoints.py").run()
    assert not at.exception
    table = at.dataframe[0].value
    assert list(table["health"]) == [health_of(tmp_path / "ck" / "tiny")] and "validation images" in table["health"][0]
    assert at.warning[0].value.startswith("tiny: untrained or diverged")
    # with an allow-list that leaves checkpoints/ out, the page lists what the picker offers: nothing
    monkeypatch.setenv("AGEGENDER_ALLOWED_ROOTS", str(tmp_path / "elsewhere"))
    at.run()
    assert not at.exception and at.info[0].value.startswith(f"No checkpoints in `{(tmp_path / 'elsewhere').resolve()}`")


def face_png(seed: int = 0) -> bytes:
    import io

    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def retrain_in_place(folder) -> None:
    """New weights (and their checksum) and new predictions, written the way training writes them."""
    import torch

    from agegender.models.checkpoint import WEIGHTS, load_checkpoint, read_meta, save_weights, write_meta
    from agegender.predictions import load_predictions, predictions_path, write_predictions

    model = load_checkpoint(folder).model
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.5)
    meta = read_meta(folder)
    meta["weights_sha256"] = save_weights(model, folder / WEIGHTS)
    write_meta(folder, meta)
    for split in ("val", "test"):
        df = load_predictions(folder, split)
        write_predictions(df.assign(pred_age=df["pred_age"] + 1), predictions_path(folder, split))


def test_caches_follow_a_checkpoint_rewritten_in_place(tiny_checkpoint, tmp_path, monkeypatch):
    from agegender.explain import predict

    folder = tmp_path / "tiny"
    shutil.copytree(tiny_checkpoint, folder)
    data = face_png()
    explained_with = []  # the checkpoint each computed (not cached) Grad-CAM was given
    real = predict.explain_face

    def explain_face(ckpt, *args, **kw):
        explained_with.append(ckpt)
        return real(ckpt, *args, **kw)

    monkeypatch.setattr(predict, "explain_face", explain_face)

    def now():
        r = caches.analyse(data, "face.png", folder, True, False, 0.9)
        caches.cams_cached(str(folder), caches.checkpoint_stamp(folder), "face.png-cropped", 0, r, ("older",),
                       "GradCAM", "layer4", False, False, False)
        preds = caches.predictions_cached(str(folder), "val", caches.predictions_stamp(folder, "val"))
        return r.faces[0], preds, caches.get_checkpoint(folder)

    face, preds, ckpt = now()
    again = now()
    assert again[0].age == face.age and again[2] is ckpt  # unchanged files: served from the caches
    assert explained_with == [ckpt]
    retrain_in_place(folder)
    face2, preds2, ckpt2 = now()
    assert ckpt2 is not ckpt
    assert (face2.age, face2.p_female) != (face.age, face.p_female)
    assert explained_with == [ckpt, ckpt2]
    np.testing.assert_allclose(preds2["pred_age"], preds["pred_age"] + 1)


def test_a_bad_upload_is_an_error_result_not_an_exception(tiny_checkpoint, tmp_path):
    shutil.copytree(tiny_checkpoint, tmp_path / "tiny")
    r = caches.analyse(b"not an image", "broken.jpg", tmp_path / "tiny", False, False, 0.9)
    assert r.error.startswith("cannot read broken.jpg as an image") and not r.faces
