import io

import matplotlib.cbook
import numpy as np
import pytest
from PIL import Image

from agegender.faces import (
    ERR_UNREADABLE,
    UnreadableImage,
    align_face,
    centre_square,
    load_photo,
    load_template,
    similarity_transform,
)

HOPPER = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("mode, fmt", [("L", "PNG"), ("RGBA", "PNG"), ("CMYK", "JPEG"), ("I;16", "PNG"),
                                       ("P", "BMP"), ("RGB", "WEBP")])
def test_any_mode_becomes_rgb(mode, fmt):
    img = Image.new(mode, (30, 20))
    photo = load_photo(encode(img, fmt), "x")
    assert photo.mode == "RGB" and photo.size == (30, 20)


def test_sixteen_bit_is_rescaled_not_clipped():
    a = np.full((4, 4), 32768, np.uint16)
    photo = load_photo(encode(Image.fromarray(a), "PNG"), "x")
    assert 120 <= np.asarray(photo)[0, 0, 0] <= 135


def test_exif_orientation_is_respected():
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    photo = load_photo(encode(img, "JPEG", exif=exif.tobytes()), "x")
    assert photo.size == (20, 40)


def test_unreadable_files_raise_a_clear_error(tmp_path):
    (tmp_path / "notes.jpg").write_text("not an image")
    with pytest.raises(UnreadableImage, match=r"cannot read .*notes.jpg as an image"):
        load_photo(tmp_path / "notes.jpg")
    with pytest.raises(UnreadableImage, match="no such file"):
        load_photo(tmp_path / "missing.jpg")
    assert ERR_UNREADABLE.startswith("cannot read")


def test_similarity_transform_recovers_a_known_one():
    src = np.random.default_rng(0).random((5, 2)) * 100
    ang, s, t = 0.3, 1.7, np.array([12.0, -5.0])
    rot = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
    dst = src @ (s * rot).T + t
    m = similarity_transform(src, dst)
    np.testing.assert_allclose(m[:, :2], s * rot, atol=1e-9)
    np.testing.assert_allclose(m[:, 2], t, atol=1e-9)


def test_alignment_maps_landmarks_onto_the_template():
    template = load_template()
    assert template.shape == (5, 2)
    # a photo whose face is the template scaled x3, rotated and moved
    ang = np.deg2rad(15)
    rot = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
    pts = template @ (3 * rot).T + np.array([150.0, 80.0])
    photo = Image.new("RGB", (900, 900), (20, 20, 20))
    px = np.asarray(photo).copy()
    for x, y in pts:
        px[int(round(y)) - 6:int(round(y)) + 7, int(round(x)) - 6:int(round(x)) + 7] = 255
    chip = np.asarray(align_face(Image.fromarray(px), pts))
    assert chip.shape == (200, 200, 3)
    for x, y in template:  # each landmark's bright square lands on the template point
        assert chip[int(round(y)), int(round(x))].mean() > 150


def test_centre_square():
    assert centre_square(Image.new("RGB", (300, 200))).size == (200, 200)


def test_detector_finds_grace_hopper():
    from agegender.faces import FaceDetector

    faces = FaceDetector().detect(load_photo(HOPPER))
    assert len(faces) == 1 and faces[0].confidence > 0.95
    x1, y1, x2, y2 = faces[0].box
    assert 100 < x1 < x2 < 420 and 50 < y1 < y2 < 450
