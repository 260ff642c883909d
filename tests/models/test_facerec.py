"""The shipped face-recognition network (agegender.models.facerec) against dlib itself.

facerec_reference.json holds the descriptors dlib (dlib-bin 20.0.1.post1, compute_face_descriptor with no
jitter) computed once for three chips of matplotlib's grace_hopper.jpg: the photo aligned by
agegender.faces.detect (MTCNN landmarks -> align_face -> 200 px -> to_dlib_size), that chip mirrored, and the
photo halved then aligned. The landmarks are stored too, so the chips are rebuilt here exactly without MTCNN;
one test checks MTCNN still finds them. The shipped file is fp16: its descriptors differ from the fp32
conversion (and from dlib, which the fp32 conversion matches to 5e-7) by at most 3.2e-4 per component and
0.0012 in distance over 200 UTKFace chips, so TOLERANCE leaves a 3x margin and is 500x under dlib's 0.6.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import matplotlib.cbook
import numpy as np
import pytest
import torch
from PIL import Image

from agegender.faces.detect import align_face, load_photo
from agegender.models import facerec
from agegender.models.facerec import (
    ERR_CHECKSUM,
    ERR_MISSING,
    ERR_PROVENANCE,
    ERR_SHAPE,
    SAME_PERSON,
    FaceRecError,
    descriptors,
    distances,
    to_dlib_size,
)

from ..conftest import ROOT

REFERENCE = json.loads((Path(__file__).with_name("facerec_reference.json")).read_text())
TOLERANCE = 1e-3  # per descriptor component; fp16's measured error is 3.2e-4 at most


def hopper() -> Image.Image:
    return load_photo(Path(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)))


@pytest.fixture(scope="module")
def chips() -> np.ndarray:
    photo = hopper()
    half = photo.resize((photo.width // 2, photo.height // 2), Image.Resampling.BILINEAR)
    lm = REFERENCE["landmarks"]

    def chip(im, key):
        return to_dlib_size(np.asarray(align_face(im, np.array(lm[key])))[None])[0]

    whole = chip(photo, "photo")
    return np.stack([whole, np.ascontiguousarray(whole[:, ::-1]), chip(half, "half")])


@pytest.fixture(scope="module")
def ours(chips) -> np.ndarray:
    return descriptors(chips)


def test_shipped_network_reproduces_dlib(ours):
    theirs = np.array(REFERENCE["dlib"])
    assert ours.shape == (3, 128) and ours.dtype == np.float32
    assert np.abs(ours - theirs).max() < TOLERANCE
    assert distances(ours, theirs).max() < 3 * TOLERANCE


def test_mirror_and_resize_are_the_same_person(ours):
    assert distances(ours[0], ours[1]) < SAME_PERSON
    assert distances(ours[0], ours[2]) < SAME_PERSON


def test_detector_still_finds_the_stored_landmarks():
    from agegender.faces.detect import FaceDetector

    faces = FaceDetector().detect(hopper())
    assert np.abs(faces[0].landmarks - np.array(REFERENCE["landmarks"]["photo"])).max() < 2.0


def test_different_people_are_apart(ours, real_data):
    men = sorted(real_data.glob("*_0_*.jpg"))[::997][:12]  # spread over ages; Grace Hopper is a woman
    assert len(men) == 12
    pixels = to_dlib_size(np.stack([np.asarray(Image.open(p).convert("RGB").resize((200, 200))) for p in men]))
    assert distances(descriptors(pixels), ours[0][None]).min() > SAME_PERSON


def test_batches_do_not_change_descriptors(chips, ours):
    np.testing.assert_allclose(descriptors(chips, batch=1), ours, atol=1e-5)
    assert descriptors(chips[:0]).shape == (0, 128)


def test_threads_are_the_callers(chips):
    before = torch.get_num_threads()
    facerec.load_network()
    descriptors(chips[:1])
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("bad", [np.zeros((2, 150, 150, 3), np.float32), np.zeros((150, 150, 3), np.uint8),
                                 np.zeros((1, 200, 200, 3), np.uint8), np.zeros((1, 150, 150, 4), np.uint8)])
def test_wrong_input_is_named(bad):
    with pytest.raises(FaceRecError) as e:
        descriptors(bad)
    assert str(e.value) == ERR_SHAPE.format(size=150, shape=bad.shape, dtype=bad.dtype)


def test_to_dlib_size_resizes_like_the_cache():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (2, 200, 200, 3), dtype=np.uint8)
    out = to_dlib_size(pixels)
    assert out.shape == (2, 150, 150, 3) and out.dtype == np.uint8
    expected = np.asarray(Image.fromarray(pixels[1]).resize((150, 150), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(out[1], expected)
    np.testing.assert_array_equal(to_dlib_size(out), out)


def test_damaged_file_is_refused(tmp_path):
    weights = tmp_path / facerec.WEIGHTS.name
    provenance = tmp_path / facerec.PROVENANCE.name
    shutil.copy(facerec.WEIGHTS, weights)
    shutil.copy(facerec.PROVENANCE, provenance)
    with open(weights, "r+b") as f:  # one weight's bits flipped: a valid file, a different network
        f.seek(-100, 2)
        byte = f.read(1)
        f.seek(-100, 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    from agegender.meta import sha256_file

    with pytest.raises(FaceRecError) as e:
        facerec.load_network(weights, provenance)
    assert str(e.value) == ERR_CHECKSUM.format(path=weights, found=sha256_file(weights),
                                               expected=json.loads(provenance.read_text())["sha256"])


def test_missing_file_and_provenance_are_named(tmp_path):
    with pytest.raises(FaceRecError) as e:
        facerec.load_network(tmp_path / "none.safetensors", facerec.PROVENANCE)
    assert str(e.value) == ERR_MISSING.format(path=tmp_path / "none.safetensors")
    provenance = tmp_path / "p.json"
    provenance.write_text("{not json")
    with pytest.raises(FaceRecError) as e:
        facerec.load_network(facerec.WEIGHTS, provenance)
    with pytest.raises(ValueError) as why:
        json.loads("{not json")
    assert str(e.value) == ERR_PROVENANCE.format(path=provenance, detail=why.value)


def test_provenance_and_packaging():
    info = json.loads(facerec.PROVENANCE.read_text())
    assert info["sha256"] == facerec.network_sha256()
    assert info["source_sha256"] == REFERENCE["dat_sha256"]
    assert info["licence"].startswith("CC0")
    assert facerec.WEIGHTS.stat().st_size < 12e6  # fp16: about 11 MB
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"agegender.models" = ["weights/*.safetensors", "weights/*.json"]' in pyproject
