"""Every input gets its own answer: the awkward corpus (tests/awkward.py) through the predict
command, the library calls the dashboard makes, and the Predict page, with the real MTCNN."""

from __future__ import annotations

import json
import re
import shutil

import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from agegender.explain.predict import analyse
from agegender.explain.predict import main as predict_main
from agegender.faces.detect import FaceDetector, UnreadableImage, load_photo
from agegender.labels import MAX_AGE
from agegender.models.checkpoint import load_checkpoint

from ..awkward import write_corpus
from ..conftest import ROOT

REPR = re.compile(r"0x[0-9a-f]{4,}| object at |<[^>]*>|Traceback")  # an object repr, an address, a traceback


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("awkward")
    return folder, write_corpus(folder)


@pytest.fixture(scope="module")
def detector():
    return FaceDetector()


def test_the_corpus_covers_what_it_should(corpus):
    folder, cases = corpus
    good = {c.name for c in cases if c.good}
    assert {"hopper.jpg", "hopper-cmyk.jpg", "hopper-16bit.png", "hopper-palette.png", "hopper-bad-exif.jpg"} <= good
    assert sum(not c.upload for c in cases) >= 3 and sum(not c.good for c in cases) >= 20
    modes = {Image.open(folder / c.name).mode for c in cases if c.name.startswith("mode-")}
    assert modes == {"1", "L", "LA", "P", "PA", "RGBA", "CMYK", "YCbCr", "I;16", "I", "F"}
    for name, mode in (("hopper-cmyk.jpg", "CMYK"), ("hopper-16bit.png", "I;16"), ("hopper-palette.png", "P")):
        assert Image.open(folder / name).mode == mode


def test_predict_command_answers_every_file(corpus, tiny_checkpoint, capsys):
    folder, cases = corpus
    paths = [str(folder / c.name) for c in cases] + [str(folder / "missing.jpg")]
    code = predict_main([*paths, "--checkpoint", str(tiny_checkpoint), "--json"])
    out, err = capsys.readouterr()
    assert code == 2
    results = json.loads(out)
    assert [r["image"] for r in results] == paths  # every file, in order, the bad ones included
    expected = [c.message(p) for c, p in zip(cases, paths, strict=False)]
    expected.append(f"cannot read {paths[-1]} as an image (no such file)")
    assert [r["error"] for r in results] == expected
    # exactly one line per bad file, naming it, in the command's "error: " format; nothing else
    assert err.splitlines() == [f"error: {e}" for e in expected if e is not None]
    assert not REPR.search(err)
    for c, r in zip(cases, results, strict=False):
        if c.good:
            [face] = r["faces"]
            assert face["predicted"] and 0 <= face["age"] <= MAX_AGE and 0 <= face["p_female"] <= 1, c.name


def test_library_path_of_the_dashboard_answers_every_file(corpus, tiny_checkpoint, detector):
    folder, cases = corpus
    ckpt = load_checkpoint(tiny_checkpoint)
    for c in cases:
        try:
            photo = load_photo((folder / c.name).read_bytes(), c.name)
        except UnreadableImage as e:
            assert str(e) == c.message(c.name) and not REPR.search(str(e))
            continue
        r = analyse(photo, c.name, ckpt, detector.detect(photo))
        assert r.error == c.message(c.name)
        assert any(f.predicted for f in r.faces) == c.good, c.name
        # whatever its size, any readable image can be taken whole or as a cropped face
        for kw in ({"whole_if_no_face": True}, {"cropped": True}):
            r = analyse(photo, c.name, ckpt, detector.detect(photo), **kw)
            assert r.error is None and 0 <= r.faces[-1].age <= MAX_AGE, (c.name, kw)


@pytest.fixture
def predict_page(monkeypatch, tiny_checkpoint, tmp_path):
    shutil.copytree(tiny_checkpoint, tmp_path / "ck" / "tiny")
    monkeypatch.setenv("AGEGENDER_CHECKPOINTS", str(tmp_path / "ck"))
    at = AppTest.from_file(str(ROOT / "dashboard" / "app.py"), default_timeout=120).run()
    return at.radio(key="source").set_value("Upload").run()


def test_predict_page_answers_every_upload(corpus, predict_page):
    folder, cases = corpus
    at = predict_page
    at.file_uploader[0].set_value([(c.name, (folder / c.name).read_bytes(), "application/octet-stream")
                                   for c in cases]).run()
    assert not at.exception
    # per-file lines (the sidebar may warn about the tiny checkpoint itself: not ours to count)
    messages = [e.value for e in at.error] + [w.value for w in at.warning if any(c.name in w.value for c in cases)]
    assert not any(REPR.search(m) for m in messages)
    refused = [f"{c.name} is not a type this page reads: upload JPEG, PNG, WebP or BMP." for c in cases if not c.upload]
    expected = [c.message(c.name) for c in cases if c.upload and not c.good]
    assert sorted(messages) == sorted(refused + expected)  # one line per bad file, none for the good
    table = at.dataframe[-1].value
    answered = table.dropna(subset=["age"])
    assert sorted(answered["image"]) == sorted(c.name for c in cases if c.upload and c.good)
    assert answered["age"].between(0, MAX_AGE).all()
    assert sorted(table.dropna(subset=["error"])["image"]) == sorted(c.name for c in cases if c.upload and not c.good)
    assert {b.label for b in at.get("download_button")} >= {"Predictions (CSV)", "Predictions (JSON)"}
