"""The pages a reviewer explains faces on, run on the shipped checkpoints: every heatmap drawn, options that
outlive a page switch, and maps or inputs that need a word said about them."""

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from agegender.explain.gradcam import REMOVED, CamMap
from agegender.explain.predict import ALIGNED, CROPPED, INPUT_KINDS, WHOLE, analyse
from agegender.faces.detect import load_photo
from agegender.labels import DEFAULT_BAND
from agegender.models.checkpoint import load_checkpoint
from dashboard import faceview, state

from ..conftest import ROOT
from ..explain.test_predict import HOPPER, no_face_image

APP = str(ROOT / "dashboard" / "app.py")
SHIPPED = ROOT / "checkpoints"
PAIR = ["dlib-resnet29-utkface", "dlib-resnet29-balanced"]
MAP_CAPTIONS = ("age: evidence for older", "age: evidence for younger", "gender: evidence for")


def image_captions(at) -> list[str]:
    return [img.caption for el in at.get("image") for img in el.proto.imgs]


@pytest.fixture
def shipped_app(monkeypatch):
    monkeypatch.setenv("AGEGENDER_CHECKPOINTS", str(SHIPPED))
    monkeypatch.delenv("AGEGENDER_ALLOWED_ROOTS", raising=False)
    at = AppTest.from_file(APP, default_timeout=180)
    at.session_state[state.PICKER] = PAIR
    return at.run()


def test_the_example_is_explained_by_both_shipped_checkpoints_with_every_heatmap(shipped_app):
    at = shipped_app
    assert not at.exception and not at.error
    captions = image_captions(at)
    for name in PAIR:  # the dlib trunk has no "layer4": the default target layer is the checkpoint's own
        assert any(f"**{name}**" in m.value for m in at.markdown), name
    assert captions.count(INPUT_KINDS[ALIGNED]) == len(PAIR)
    for title in MAP_CAPTIONS:
        assert sum(c.startswith(title) for c in captions) == len(PAIR), (title, captions)


def test_the_cam_method_outlives_a_page_switch(shipped_app):
    at = shipped_app
    at.selectbox(key="method").set_value("GradCAM++").run()
    at.switch_page("pages/bias.py").run()
    assert at.session_state[state.KEEP + "method"] == "GradCAM++"  # what the compare and explorer pages read
    at.switch_page("pages/predict.py").run()
    assert not at.exception and at.selectbox(key="method").value == "GradCAM++"


def test_a_layer_of_another_architecture_falls_back_to_the_checkpoints_own(shipped_app, tiny_checkpoint):
    at = shipped_app
    at.session_state[state.SELECTED] = [str(tiny_checkpoint)]  # a ResNet: its layers are layer4 and layer3
    at.run()
    at.selectbox(key="layer").set_value("layer3").run()
    assert not at.exception and at.selectbox(key="layer").value == "layer3"
    at.session_state[state.SELECTED] = [str(SHIPPED / PAIR[0])]  # the dlib trunk has neither
    at.run()
    assert not at.exception and not at.error
    layer = at.selectbox(key="layer")
    assert layer.value == "alevel1" and layer.options[0] == "alevel1 (last block)" and "layer3" not in layer.options
    assert sum(c.startswith(MAP_CAPTIONS[0]) for c in image_captions(at)) == 1


@pytest.mark.parametrize("gap,fails", [(-3.4, True), (0.0, True), (0.2, False)])
def test_a_map_that_fails_roads_check_says_so(gap, fails):
    m = CamMap("older", "age", np.zeros((4, 4), np.float32), road_most=1.0, road_least=1.0 + gap)
    note = m.faithfulness_note()
    assert (note is not None) == fails
    if fails:
        assert f"{gap:+.2f} y" in note and f"{100 - REMOVED}%" in note and "does not show what the model used" in note
        assert faceview.cam_caption(m).endswith("(fails the check)")
    else:
        assert faceview.cam_caption(m).endswith("(passes)")
    assert CamMap("older", "age", m.heat).faithfulness_note() is None  # not checked: nothing to say


def test_the_model_input_is_named_for_what_it_was(tmp_path):
    ckpt = load_checkpoint(SHIPPED / PAIR[0])
    blank = load_photo(str(no_face_image(tmp_path / "blank.png")))
    whole = analyse(blank, "blank.png", ckpt, [], whole_if_no_face=True)
    assert [f.kind for f in whole.faces] == [WHOLE] and "not aligned" in whole.faces[0].input_text
    assert whole.to_json(DEFAULT_BAND)["faces"][0]["input"] == WHOLE
    cropped = analyse(load_photo(str(HOPPER)), "hopper.jpg", ckpt, None, cropped=True)
    assert [f.kind for f in cropped.faces] == [CROPPED]


def _face_view_of_a_blank_photo():
    import os

    import numpy as np
    from PIL import Image

    from agegender.explain.predict import analyse
    from agegender.models.checkpoint import load_checkpoint
    from dashboard import faceview, state

    ckpt = load_checkpoint(os.environ["SHIPPED_CKPT"])
    photo = Image.fromarray(np.full((240, 320, 3), 128, np.uint8))
    result = analyse(photo, "grey.png", ckpt, [], whole_if_no_face=True)
    faceview.face_view(ckpt, result, 0, "grey", state.Options(faithfulness=True))


def test_the_face_view_names_a_whole_image_input_and_draws_its_maps(monkeypatch):
    monkeypatch.setenv("SHIPPED_CKPT", str(SHIPPED / PAIR[0]))
    at = AppTest.from_function(_face_view_of_a_blank_photo, default_timeout=120).run()
    assert not at.exception and not at.error
    captions = image_captions(at)
    assert captions[0] == INPUT_KINDS[WHOLE] and "not aligned" in captions[0]
    assert len(captions) == 4 and all("ROAD gap" in c for c in captions[1:])
    # a failed check is said in words under the maps, one warning per failing map
    failing = [c for c in captions[1:] if c.endswith("(fails the check)")]
    assert len([w for w in at.warning if "faithfulness check" in w.value]) == len(failing)


def test_warm_up_leaves_the_first_page_nothing_to_compute(monkeypatch):
    import agegender.explain.predict

    monkeypatch.setenv("AGEGENDER_CHECKPOINTS", str(SHIPPED))
    monkeypatch.delenv("AGEGENDER_ALLOWED_ROOTS", raising=False)
    faceview.warm_up()  # what `python -m dashboard` runs while the server starts

    def computed(*args, **kw):
        raise AssertionError("the first page computed what warm_up should have cached")

    monkeypatch.setattr(agegender.explain.predict, "analyse", computed)
    monkeypatch.setattr(agegender.explain.predict, "explain_face", computed)
    at = AppTest.from_file(APP, default_timeout=120).run()  # a fresh session on the default checkpoint
    assert not at.exception and not at.error
    captions = image_captions(at)
    assert all(sum(c.startswith(t) for c in captions) == 1 for t in MAP_CAPTIONS), captions


def _kept_options_shown():
    import streamlit as st

    from dashboard import state

    st.session_state[state.KEEP + "method"] = "GradCAM++"
    st.session_state[state.KEEP + "faith"] = True
    st.text(repr(state.kept_options(other_gender=True)))


def test_the_other_pages_explain_with_the_predict_pages_options():
    at = AppTest.from_function(_kept_options_shown).run()
    assert not at.exception
    shown = at.text[0].value
    assert "method='GradCAM++'" in shown and "faithfulness=True" in shown and "other_gender=True" in shown
    assert "layer=None" in shown  # the checkpoint's own default layer
