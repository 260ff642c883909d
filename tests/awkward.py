"""A generated corpus of awkward inputs: degenerate sizes, every PIL mode, damaged files, a
decompression bomb, broken EXIF, types the upload page refuses, a face too small to find, and good
photos among them. Each case says what the pipeline must answer for it."""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import matplotlib.cbook
import numpy as np
from PIL import Image

from agegender.explain.predict import ERR_NO_FACE, ERR_TOO_SMALL
from agegender.faces.detect import (
    ERR_TOO_LARGE,
    ERR_UNREADABLE,
    MIN_FACE_SIZE,
    TOO_MANY_PIXELS,
    WHY_CORRUPT,
    WHY_EMPTY,
    WHY_NOT_IMAGE,
)

HOPPER = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
UPLOAD_TYPES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")  # the predict page's uploader
BOMB_SIDE = 100_000  # 10^10 pixels: past PIL's hard limit whatever MAX_IMAGE_PIXELS is
# EXIF that PIL parses but cannot write back (a string where a rational belongs), so
# ImageOps.exif_transpose raises; found by mutating a valid block. Orientation 6 is in it.
BROKEN_EXIF = bytes.fromhex(
    "4578696600004d4d002a000000080003013e0002000000070000003201120003000000010006000087690004000000"
    "010000003a0000000043616d6572610000000190030002000000140000004c00000000323032303a30313a30312030"
    "303a30303a303000")


@dataclass(frozen=True)
class Case:
    name: str
    error: str | None  # the expected message, "{name}" standing for the name it is given; None: a face
    upload: bool = True  # False: a type the page's uploader refuses

    def message(self, name: str) -> str | None:
        return None if self.error is None else self.error.replace("{name}", name)

    @property
    def good(self) -> bool:
        return self.error is None


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(side: int = BOMB_SIDE) -> bytes:
    """A PNG of a few dozen bytes whose header declares side x side pixels."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"")) + _chunk(b"IEND", b"")


def gradient(size: tuple[int, int] = (64, 48)) -> Image.Image:
    """Smooth colour ramps: an image with nothing face-like in it."""
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x + y) * 127 // max(w + h - 2, 1)], -1)
    return Image.fromarray(rgb.astype(np.uint8))


def _modes(ramp: Image.Image) -> dict[str, bytes]:
    grey = np.asarray(ramp.convert("L"))
    return {
        "mode-1.png": _encode(ramp.convert("1"), "PNG"),
        "mode-L.png": _encode(ramp.convert("L"), "PNG"),
        "mode-LA.png": _encode(ramp.convert("LA"), "PNG"),
        "mode-P.png": _encode(ramp.convert("P"), "PNG"),
        "mode-PA.tiff": _encode(ramp.convert("PA"), "TIFF"),
        "mode-RGBA.png": _encode(ramp.convert("RGBA"), "PNG"),
        "mode-CMYK.tiff": _encode(ramp.convert("CMYK"), "TIFF"),
        "mode-YCbCr.tiff": _encode(ramp.convert("YCbCr"), "TIFF"),
        "mode-I16.png": _encode(Image.fromarray(grey.astype(np.uint16) * 257), "PNG"),
        "mode-I.tiff": _encode(Image.fromarray(grey.astype(np.int32) * 1000), "TIFF"),
        "mode-F.tiff": _encode(Image.fromarray(grey.astype(np.float32) / 255), "TIFF"),
    }


def unreadable(why: str) -> str:
    return ERR_UNREADABLE.format(name="{name}", detail=why)


def write_corpus(folder: Path) -> list[Case]:
    """Write every case into ``folder`` and return them; files named *.tiff/*.gif/*.txt are the
    types the page refuses."""
    folder.mkdir(parents=True, exist_ok=True)
    raw = Path(HOPPER).read_bytes()
    hopper = Image.open(HOPPER).convert("RGB")
    hopper_png = _encode(hopper, "PNG")
    orientation = Image.Exif()
    orientation[0x0112] = 9  # not one of EXIF's 1..8
    files: dict[str, tuple[bytes, str | None]] = {
        # good photos, whatever their mode or metadata
        "hopper.jpg": (raw, None),
        "hopper-cmyk.jpg": (_encode(hopper.convert("CMYK"), "JPEG", quality=90), None),
        "hopper-16bit.png": (_encode(Image.fromarray(np.asarray(hopper.convert("L")).astype(np.uint16) * 257),
                                     "PNG"), None),
        "hopper-palette.png": (_encode(hopper.convert("P", palette=Image.Palette.ADAPTIVE), "PNG"), None),
        "hopper-bad-exif.jpg": (_encode(hopper, "JPEG", quality=90, exif=BROKEN_EXIF), None),
        "hopper-orientation-9.jpg": (_encode(hopper, "JPEG", quality=90, exif=orientation.tobytes()), None),
        # damaged files
        "corrupt.jpg": (np.random.default_rng(0).bytes(4000), unreadable(WHY_NOT_IMAGE)),
        "truncated.jpg": (raw[: len(raw) // 2], unreadable(WHY_CORRUPT)),
        "truncated.png": (hopper_png[: len(hopper_png) // 2], unreadable(WHY_CORRUPT)),
        "empty.jpg": (b"", unreadable(WHY_EMPTY)),
        "bomb.png": (bomb_png(), ERR_TOO_LARGE.format(name="{name}", detail=TOO_MANY_PIXELS.format(
            pixels=BOMB_SIDE**2, limit=Image.MAX_IMAGE_PIXELS))),
        # readable, but nothing to find
        "transparent.png": (_encode(Image.new("RGBA", (64, 64), (0, 0, 0, 0)), "PNG"), ERR_NO_FACE),
        "tiny-face.png": (_encode(hopper.resize((20, 23), Image.Resampling.LANCZOS), "PNG"), ERR_NO_FACE),
    }
    for w, h in ((1, 1), (8, 8), (3000, 12), (12, 3000), (2, 2000)):
        error = ERR_TOO_SMALL.format(name="{name}", width=w, height=h, min_size=MIN_FACE_SIZE)
        files[f"size-{w}x{h}.png"] = (_encode(gradient((w, h)), "PNG"), error)
    for name, data in _modes(gradient()).items():
        files[name] = (data, ERR_NO_FACE)
    # types the page refuses: the command reads the first two like any photo
    files["hopper.gif"] = (_encode(hopper, "GIF"), None)
    files["hopper.tiff"] = (_encode(hopper, "TIFF"), None)
    files["notes.txt"] = (b"not an image\n", unreadable(WHY_NOT_IMAGE))
    cases = []
    for name, (data, error) in files.items():
        (folder / name).write_bytes(data)
        cases.append(Case(name, error, upload=name.lower().endswith(UPLOAD_TYPES)))
    return cases
