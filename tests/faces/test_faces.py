import io

import matplotlib.cbook
import numpy as np
import pytest
from PIL import Image

from agegender.faces.detect import (
    EMPTY_PYRAMID,
    ERR_TOO_LARGE,
    ERR_UNREADABLE,
    MIN_FACE_SIZE,
    TOO_MANY_PIXELS,
    WHY_CORRUPT,
    WHY_EMPTY,
    WHY_MISSING,
    WHY_NOT_IMAGE,
    FaceDetector,
    UnreadableImage,
    align_face,
    centre_square,
    load_photo,
    load_template,
    similarity_transform,
)

from ..awkward import BROKEN_EXIF, gradient

HOPPER = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("mode, fmt", [
    ("1", "PNG"), ("L", "PNG"), ("LA", "PNG"), ("P", "PNG"), ("P", "BMP"), ("PA", "TIFF"), ("RGB", "WEBP"),
    ("RGBA", "PNG"), ("CMYK", "JPEG"), ("CMYK", "TIFF"), ("YCbCr", "TIFF"), ("I;16", "PNG"), ("I", "TIFF"),
    ("F", "TIFF")])
def test_any_mode_becomes_rgb(mode, fmt):
    img = gradient((30, 20)).convert("P") if mode == "P" else Image.new(mode, (30, 20))  # BMP saves 2 colours as 1-bit
    data = encode(img, fmt)
    assert Image.open(io.BytesIO(data)).mode == mode  # the file really is in that mode
    photo = load_photo(data, "x")
    assert photo.mode == "RGB" and photo.size == (30, 20)


def test_fully_transparent_becomes_white():
    photo = load_photo(encode(Image.new("RGBA", (8, 8), (0, 0, 0, 0)), "PNG"), "x")
    assert photo.mode == "RGB" and (np.asarray(photo) == 255).all()


def test_float_and_32_bit_images_are_rescaled():
    ramp = np.linspace(0, 1, 16, dtype=np.float32).reshape(4, 4)
    photo = np.asarray(load_photo(encode(Image.fromarray(ramp), "TIFF"), "x"))
    assert photo[0, 0, 0] == 0 and photo[-1, -1, 0] == 255
    photo = np.asarray(load_photo(encode(Image.fromarray((ramp * 1e6).astype(np.int32)), "TIFF"), "x"))
    assert photo[-1, -1, 0] == 255


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


def test_broken_exif_keeps_the_image_unrotated():
    # PIL parses this block but raises writing it back, which exif_transpose does
    photo = load_photo(encode(Image.new("RGB", (40, 20), (255, 0, 0)), "JPEG", exif=BROKEN_EXIF), "x")
    assert photo.size == (40, 20)
    exif = Image.Exif()
    exif[0x0112] = 9  # not an orientation: nothing to do
    assert load_photo(encode(Image.new("RGB", (40, 20)), "JPEG", exif=exif.tobytes()), "x").size == (40, 20)


def unreadable_message(source, name=None) -> str:
    with pytest.raises(UnreadableImage) as e:
        load_photo(source, name)
    msg = str(e.value)
    assert "0x" not in msg and " object at " not in msg and "<" not in msg  # words, never a repr
    return msg


def test_unreadable_files_say_why_in_words(tmp_path):
    hopper = open(HOPPER, "rb").read()
    png = encode(Image.open(HOPPER), "PNG")
    (tmp_path / "notes.jpg").write_text("not an image")
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "half.jpg").write_bytes(hopper[: len(hopper) // 2])
    cases = {
        tmp_path / "notes.jpg": WHY_NOT_IMAGE,
        tmp_path / "empty.jpg": WHY_EMPTY,
        tmp_path / "half.jpg": WHY_CORRUPT,
        tmp_path / "missing.jpg": WHY_MISSING,
        tmp_path: "is a directory",
    }
    for path, why in cases.items():
        assert unreadable_message(path) == ERR_UNREADABLE.format(name=path, detail=why)
    assert unreadable_message(b"", "up.jpg") == ERR_UNREADABLE.format(name="up.jpg", detail=WHY_EMPTY)
    assert unreadable_message(png[: len(png) // 2], "up.png") == ERR_UNREADABLE.format(name="up.png",
                                                                                       detail=WHY_CORRUPT)
    assert unreadable_message(b"\x00" * 100, "up.png") == ERR_UNREADABLE.format(name="up.png", detail=WHY_NOT_IMAGE)


@pytest.mark.parametrize("side", [150, 300])  # PIL warns past the limit and refuses past twice it
def test_decompression_bombs_name_their_pixel_count(monkeypatch, side):
    data = encode(Image.new("RGB", (side, side)), "PNG")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20_000)
    detail = TOO_MANY_PIXELS.format(pixels=side * side, limit=20_000)
    assert unreadable_message(data, "big.png") == ERR_TOO_LARGE.format(name="big.png", detail=detail)
    assert f"({side * side:,} pixels, more than the 20,000 allowed)" in ERR_TOO_LARGE.format(name="x", detail=detail)


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


@pytest.fixture(scope="module")
def detector():
    return FaceDetector()


def test_detector_finds_grace_hopper(detector):
    faces = detector.detect(load_photo(HOPPER))
    assert len(faces) == 1 and faces[0].confidence > 0.95
    x1, y1, x2, y2 = faces[0].box
    assert 100 < x1 < x2 < 420 and 50 < y1 < y2 < 450


@pytest.mark.parametrize("size", [(1, 1), (8, 8), (3000, 12), (12, 3000), (2, 2000), (19, 19), (19, 500)])
def test_photos_too_small_to_scan_have_no_face(detector, size):
    photo = Image.new("RGB", size, (200, 150, 120))
    assert not detector.can_scan(photo)
    assert detector.detect(photo) == []


@pytest.mark.parametrize("size", [(20, 20), (20, 2000), (2000, 20)])
def test_the_smallest_scannable_photos_run_through_mtcnn(detector, size):
    # MTCNN's own rule: the short side must reach min_face_size (its pyramid's first level is 12 px)
    assert MIN_FACE_SIZE == 20 and detector.can_scan(Image.new("RGB", size))
    assert detector.detect(Image.new("RGB", size)) == []


def test_other_modes_are_detected_as_rgb(detector):
    photo = load_photo(HOPPER)
    assert len(detector.detect(photo.convert("L"))) == 1


def test_an_empty_pyramid_later_on_is_no_face_but_other_errors_are_not(detector, monkeypatch):
    def empty(*a, **kw):
        raise ValueError(f"torch.cat(): {EMPTY_PYRAMID}")

    monkeypatch.setattr(detector._mtcnn, "detect", empty)
    assert detector.detect(Image.new("RGB", (100, 100))) == []

    def other(*a, **kw):
        raise ValueError("something else")

    monkeypatch.setattr(detector._mtcnn, "detect", other)
    with pytest.raises(ValueError, match="something else"):
        detector.detect(Image.new("RGB", (100, 100)))
