"""One Uncertain band per request: a face's gender call reads the same in the predict page's table, its CSV and
its JSON downloads, and in the predict command's text and JSON, whatever band the request picked."""

import io
import json

import numpy as np
import pandas as pd
import pytest
import streamlit.testing.v1.app_test as app_test
from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage
from streamlit.testing.v1 import AppTest

from agegender.explain import predict
from agegender.explain.predict import FaceResult, ImageResult
from agegender.labels import DEFAULT_BAND, ERR_BAND, check_band
from dashboard import state
from dashboard.visual import results_frame, results_json

from ..conftest import ROOT
from ..explain.test_predict import HOPPER

APP = str(ROOT / "dashboard" / "app.py")
SHIPPED = ROOT / "checkpoints"
PAIR = ["dlib-resnet29-utkface", "dlib-resnet29-balanced"]
WIDE = (0.3, 0.7)  # the band: P(female) 0.65 inside it reads Uncertain, outside the default Female


def one_face(p_female: float) -> dict[str, list[ImageResult]]:
    face = FaceResult((0, 0, 10, 10), 0.99, True, age=40.0, p_female=p_female)
    return {"ckpt": [ImageResult("a.jpg", [face])]}


def calls(results, band) -> dict[str, list]:
    """The face's call as the table, its CSV and the JSON download give it."""
    table = results_frame(results, band)
    csv = pd.read_csv(io.StringIO(table.to_csv(index=False)))
    doc = json.loads(results_json(results, band))
    return {"table": list(table["label"]), "csv": list(csv["label"]),
            "json": [f["label"] for r in doc["ckpt"] for f in r["faces"]]}


def test_a_face_at_065_reads_uncertain_everywhere_in_the_band_0_3_to_0_7():
    results = one_face(0.65)
    assert calls(results, WIDE) == {"table": ["Uncertain"], "csv": ["Uncertain"], "json": ["Uncertain"]}
    assert calls(results, DEFAULT_BAND) == {"table": ["Female"], "csv": ["Female"], "json": ["Female"]}


def test_a_face_not_predicted_has_no_call_anywhere():
    face = FaceResult((0, 0, 10, 10), 0.3, False)
    results = {"ckpt": [ImageResult("a.jpg", [face])]}
    assert face.gender_call(WIDE) is None and face.to_json(WIDE)["label"] is None
    assert results_frame(results, WIDE)["label"].isna().all()


@pytest.mark.parametrize("band", [(0.7, 0.3), (-0.1, 0.5), (0.5, 1.2), (float("nan"), 0.5)])
def test_a_band_that_is_no_band_is_refused(band):
    with pytest.raises(ValueError) as e:
        check_band(band)
    assert str(e.value) == ERR_BAND.format(lo=float(band[0]), hi=float(band[1]))


@pytest.fixture
def at_065(monkeypatch):
    """The predict command with the model's P(female) fixed at 0.65 (the tiny checkpoint's own is arbitrary)."""
    def fixed(ckpt, pixels, tta=True):
        n = len(pixels)
        return np.full(n, 40.0), np.full(n, 0.65), np.full(n, np.nan), np.full(n, np.nan)

    monkeypatch.setattr(predict, "predict_with_interval", fixed)


def run(capsys, *args):
    code = predict.main(list(map(str, args)))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_the_command_reads_its_band_in_the_json_and_the_text(tiny_checkpoint, capsys, at_065):
    base = (HOPPER, "--checkpoint", tiny_checkpoint, "--cropped")
    code, out, _ = run(capsys, *base, "--json")
    assert code == 0 and json.loads(out)[0]["faces"][0]["label"] == "Female"  # the default band, 0.45-0.55
    code, out, _ = run(capsys, *base, "--json", "--band", *WIDE)
    assert code == 0 and json.loads(out)[0]["faces"][0]["label"] == "Uncertain"
    code, out, _ = run(capsys, *base, "--band", *WIDE)
    assert code == 0 and out.splitlines()[-1].endswith("P(female) 0.65 -> Uncertain")


def test_the_command_refuses_a_band_that_is_no_band(tiny_checkpoint, capsys):
    with pytest.raises(SystemExit) as e:
        run(capsys, HOPPER, "--checkpoint", tiny_checkpoint, "--band", "0.7", "0.3")
    assert e.value.code == 2
    assert ERR_BAND.format(lo=0.7, hi=0.3) in capsys.readouterr().err


class KeptStorage(MemoryMediaFileStorage):
    """AppTest's media storage, kept: the bytes a browser would get from a download button."""
    last = None

    def __init__(self, endpoint):
        super().__init__(endpoint)
        KeptStorage.last = self


def downloaded(at, label: str) -> bytes:
    button = next(b for b in at.get("download_button") if b.label == label)
    return KeptStorage.last.get_file(button.proto.url.rsplit("/", 1)[-1]).content


def test_the_predict_pages_table_csv_and_json_read_the_sliders_band(monkeypatch):
    monkeypatch.setattr(app_test, "MemoryMediaFileStorage", KeptStorage)
    monkeypatch.setenv("AGEGENDER_CHECKPOINTS", str(SHIPPED))
    monkeypatch.delenv("AGEGENDER_ALLOWED_ROOTS", raising=False)
    at = AppTest.from_file(APP, default_timeout=180)
    at.session_state[state.PICKER] = PAIR
    at.run()
    assert not at.exception and not at.error
    p = at.dataframe[-1].value["p_female"]
    band = (0.3, 0.95)
    # the example's P(female) is 0.76 and 0.88: inside this band, well away from its edges, and called Female by
    # the default band, so a download still on the default band reads Female
    assert len(p) == len(PAIR) and p.between(band[0] + 0.1, band[1] - 0.05).all() and (p > 0.6).all(), list(p)
    at.slider(key="band").set_value(band).run()
    assert not at.exception and not at.error
    assert list(at.dataframe[-1].value["label"]) == ["Uncertain"] * len(PAIR)
    csv = pd.read_csv(io.BytesIO(downloaded(at, "Predictions (CSV)")))
    assert list(csv["label"]) == ["Uncertain"] * len(PAIR)
    doc = json.loads(downloaded(at, "Predictions (JSON)"))
    assert sorted(doc) == sorted(PAIR)
    assert [f["label"] for name in PAIR for r in doc[name] for f in r["faces"]] == ["Uncertain"] * len(PAIR)
