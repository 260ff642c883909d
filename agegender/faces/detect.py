"""Photos in, aligned face chips out: read any image, detect faces with MTCNN, align them to the
geometry of the UTKFace chips (a 5-point similarity transform onto a template derived from them)."""

from __future__ import annotations

import io
import json
import os
import re
import stat
import struct
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

TEMPLATE_FILE = Path(__file__).with_name("face_template.json")
CHIP_SIZE = 200  # UTKFace chips are 200 x 200

ERR_UNREADABLE = "cannot read {name} as an image ({detail})"
ERR_TOO_LARGE = "{name} is too large to decode safely ({detail}); downscale it first"
# the reasons ERR_UNREADABLE gives, in words
WHY_MISSING = "no such file"
WHY_EMPTY = "empty file"
WHY_NOT_IMAGE = "not an image file or a format we cannot read"
WHY_CORRUPT = "the file is truncated or corrupt"
# ERR_TOO_LARGE's detail: our limit is PIL's warning threshold, half its hard error's
TOO_MANY_PIXELS = "{pixels:,} pixels, more than the {limit:,} allowed"
MORE_THAN_LIMIT = "more than the {limit:,} pixels allowed"
TOO_MANY_BYTES = "{size:,} bytes, more than the {limit:,} a photo may have"
MORE_THAN_BYTES = "more than the {limit:,} bytes a photo may have"  # a file that grew while it was read
WHY_SPECIAL = "not a regular file but {kind}"
WHY_FOLDER = "is a directory"  # the file system's own words, which the page and the command always said
# A name may be anything the file system holds: only a regular file is opened, since opening a FIFO
# blocks until a writer comes and a device (a link to /dev/zero) reads for ever
SPECIAL_KINDS = {stat.S_IFIFO: "a FIFO (named pipe)", stat.S_IFCHR: "a character device",
                 stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket", stat.S_IFDIR: "a folder"}
# An uncompressed 24-bit photo at PIL's pixel limit (Image.MAX_IMAGE_PIXELS, 89.5 Mpx) is 268 MB: no
# file larger than this decodes, so none is read past it
MAX_PHOTO_BYTES = 300 * 2**20

# What decoding a damaged file raises inside PIL: OSError (truncated data; UnidentifiedImageError
# is one), SyntaxError and ValueError (broken headers), EOFError, struct.error (short fields), and
# the bomb error (callers that word it apart catch it first)
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, Image.DecompressionBombError)
# What PIL raises re-writing EXIF it could not parse (exif_transpose writes the tags back)
EXIF_ERRORS = (SyntaxError, ValueError, TypeError, KeyError, OSError, struct.error)

MIN_CONFIDENCE = 0.9  # MTCNN probability under which a detection is listed, not predicted or trusted
MIN_FACE_SIZE = 20  # the smallest face MTCNN looks for, in pixels (facenet-pytorch's default)
PNET_WINDOW = 12  # MTCNN's first net scans 12 x 12 windows
EMPTY_PYRAMID = "expected a non-empty list of Tensors"  # torch.cat's message when MTCNN had nothing to scan


class UnreadableImage(ValueError):
    """A file that is not an image we can decode; the message names it and says why."""


class SpecialFile(OSError):
    """A name that is not a regular file (a FIFO, a device, a socket, a folder); ``kind`` says which."""

    def __init__(self, kind: str):
        super().__init__(kind)
        self.kind = kind


def special_kind(mode: int) -> str | None:
    """What a file of this st_mode is in words, or None for a regular file."""
    return None if stat.S_ISREG(mode) else SPECIAL_KINDS.get(stat.S_IFMT(mode), "another kind of special file")


def open_regular(path: str | os.PathLike):
    """``path`` opened for reading in binary, only if it is a regular file (a link is followed: what it points at
    is what would be read). Raises SpecialFile before opening anything else, and checks the file actually
    opened again, so a FIFO swapped in after the first look cannot block: it is opened without blocking."""
    kind = special_kind(os.stat(path).st_mode)
    if kind is not None:
        raise SpecialFile(kind)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    f = os.fdopen(fd, "rb")
    kind = special_kind(os.fstat(fd).st_mode)
    if kind is not None:
        f.close()
        raise SpecialFile(kind)
    return f


def read_capped(f, limit: int) -> bytes | None:
    """The whole of an open regular file, or None when it holds more than ``limit`` bytes: refused on its
    size before reading, and reading stops one byte past the limit whatever the size said."""
    if os.fstat(f.fileno()).st_size > limit:
        return None
    data = f.read(limit + 1)
    return None if len(data) > limit else data


@dataclass(frozen=True)
class Face:
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in photo pixels
    confidence: float
    landmarks: np.ndarray  # 5 x 2: left eye, right eye, nose, left mouth corner, right mouth corner


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):  # 16-bit, 32-bit, float: rescale, do not clip
        a = np.nan_to_num(np.asarray(im, dtype=np.float64))
        hi = 65535.0 if im.mode.startswith("I;16") else max(float(a.max()), 1.0)
        return Image.fromarray(np.clip(a / hi * 255, 0, 255).astype(np.uint8)).convert("RGB")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")


def _upright(im: Image.Image) -> Image.Image:
    """Turned by its EXIF orientation; broken EXIF says nothing trustworthy about it, so a photo
    whose EXIF PIL cannot handle stays as stored rather than being refused."""
    try:
        return ImageOps.exif_transpose(im)
    except EXIF_ERRORS:
        return im


def why_unreadable(e: BaseException) -> str:
    """A decoding or file error in words, never an object repr or an address."""
    if isinstance(e, FileNotFoundError):
        return WHY_MISSING
    if isinstance(e, UnidentifiedImageError):
        return WHY_NOT_IMAGE
    if isinstance(e, OSError) and e.strerror:  # from the file system: "permission denied", "is a directory"
        return e.strerror.lower()
    return WHY_CORRUPT


def too_large_detail(e: BaseException) -> str:
    """ERR_TOO_LARGE's detail: the image's pixel count when PIL's message carries it."""
    limit = Image.MAX_IMAGE_PIXELS
    m = re.search(r"\((\d+) pixels\)", str(e))
    return TOO_MANY_PIXELS.format(pixels=int(m[1]), limit=limit) if m else MORE_THAN_LIMIT.format(limit=limit)


def _is_empty(source) -> bool:
    return isinstance(source, bytes) and not source


def _read_photo(path: str | os.PathLike, name: str) -> bytes:
    """A photo file's bytes: a regular file of at most MAX_PHOTO_BYTES, or UnreadableImage naming it."""
    try:
        with open_regular(path) as f:
            data = read_capped(f, MAX_PHOTO_BYTES)
            size = os.fstat(f.fileno()).st_size
    except SpecialFile as e:
        detail = WHY_FOLDER if e.kind == SPECIAL_KINDS[stat.S_IFDIR] else WHY_SPECIAL.format(kind=e.kind)
        raise UnreadableImage(ERR_UNREADABLE.format(name=name, detail=detail)) from e
    except OSError as e:
        raise UnreadableImage(ERR_UNREADABLE.format(name=name, detail=why_unreadable(e))) from e
    if data is None:
        why = TOO_MANY_BYTES if size > MAX_PHOTO_BYTES else MORE_THAN_BYTES
        detail = why.format(size=size, limit=MAX_PHOTO_BYTES)
        raise UnreadableImage(ERR_TOO_LARGE.format(name=name, detail=detail))
    return data


def load_photo(source: str | os.PathLike | bytes | io.IOBase, name: str | None = None) -> Image.Image:
    """Any readable image -> RGB, upright by its EXIF orientation. Raises UnreadableImage."""
    if name is None:
        name = str(source) if isinstance(source, (str, os.PathLike)) else getattr(source, "name", "the upload")
    if isinstance(source, (str, os.PathLike)):
        source = _read_photo(source, name)
    if _is_empty(source):
        raise UnreadableImage(ERR_UNREADABLE.format(name=name, detail=WHY_EMPTY))
    data = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        # catch_warnings is not thread-safe (Streamlit serves sessions from threads), so it only
        # quiets PIL; the bomb check itself is the explicit pixel count below, which is
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            warnings.simplefilter("ignore", UserWarning)  # PIL's notes on broken EXIF we do not use
            with Image.open(data) as im:
                pixels, limit = im.width * im.height, Image.MAX_IMAGE_PIXELS
                if limit and pixels > limit:  # checked on the header, before any pixel is decoded
                    detail = TOO_MANY_PIXELS.format(pixels=pixels, limit=limit)
                    raise UnreadableImage(ERR_TOO_LARGE.format(name=name, detail=detail))
                im.load()
                return _to_rgb(_upright(im))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise UnreadableImage(ERR_TOO_LARGE.format(name=name, detail=too_large_detail(e))) from e
    except DECODE_ERRORS as e:
        raise UnreadableImage(ERR_UNREADABLE.format(name=name, detail=why_unreadable(e))) from e


def resize_image(image: Image.Image, size: int) -> np.ndarray:
    """A PIL image as a size x size x 3 uint8 array (the cache and uploads alike)."""
    image = image.convert("RGB")
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    return np.array(image, dtype=np.uint8)


def load_template(path: Path = TEMPLATE_FILE) -> np.ndarray:
    """The 5 mean MTCNN landmarks on UTKFace chips, in 200 x 200 chip pixels."""
    return np.asarray(json.loads(path.read_text())["landmarks"], dtype=np.float64)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares rotation + uniform scale + translation taking src points onto dst
    (Umeyama, no reflection), as a 2 x 3 matrix."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    sc, dc = src - mu_s, dst - mu_d
    cov = dc.T @ sc / len(src)
    u, s, vt = np.linalg.svd(cov)
    d = np.array([1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt)) or 1.0])
    rot = u @ np.diag(d) @ vt
    scale = (s * d).sum() / (sc**2).sum() * len(src)
    return np.hstack([scale * rot, (mu_d - scale * rot @ mu_s)[:, None]])


def align_face(photo: Image.Image, landmarks: np.ndarray, template: np.ndarray | None = None,
               size: int = CHIP_SIZE) -> Image.Image:
    """The face as a size x size chip with the landmarks where UTKFace chips have them."""
    import cv2

    template = load_template() if template is None else template
    dst = template * (size / CHIP_SIZE)
    pts = np.asarray(landmarks, np.float64)
    m = similarity_transform(pts, dst)
    scale = float(np.hypot(m[0, 0], m[1, 0]))
    if scale < 0.5:  # shrink the photo first with an antialiased resize: warpAffine alone would alias
        new = (max(1, round(photo.width * scale * 1.5)), max(1, round(photo.height * scale * 1.5)))
        pts = (pts + 0.5) * np.array([new[0] / photo.width, new[1] / photo.height]) - 0.5
        photo = photo.resize(new, Image.Resampling.BILINEAR)
        m = similarity_transform(pts, dst)
    out = cv2.warpAffine(np.asarray(photo), m, (size, size), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_REPLICATE)
    return Image.fromarray(out)


def face_pixels(photo: Image.Image, face: Face | None, size: int) -> np.ndarray:
    """The face as the model's uint8 input square: aligned like a UTKFace chip, or, with no
    detection, the photo's centre square. Every photo the models see goes through here."""
    chip = align_face(photo, face.landmarks) if face is not None else centre_square(photo)
    return resize_image(chip, size)


def centre_square(photo: Image.Image) -> Image.Image:
    """A photo that is already a cropped face: its centred square, the shape of a chip."""
    s = min(photo.size)
    x, y = (photo.width - s) // 2, (photo.height - s) // 2
    return photo.crop((x, y, x + s, y + s))


class FaceDetector:
    """MTCNN (facenet-pytorch ships its weights: nothing is downloaded). Detection holds no
    per-request state on the modules, but the lock keeps the shared nets to one request at a time."""

    def __init__(self, device: str = "cpu", min_face_size: int = MIN_FACE_SIZE):
        from facenet_pytorch import MTCNN

        self.min_face_size = min_face_size
        self._mtcnn = MTCNN(keep_all=True, device=device, min_face_size=min_face_size)
        self._lock = threading.Lock()

    def can_scan(self, photo: Image.Image) -> bool:
        """Whether MTCNN's pyramid has a level for this photo. facenet's detect_face scales the photo
        by 12 / min_face_size and scans while the scaled short side is >= 12 (the P-Net window):
        a short side under min_face_size leaves no level and torch.cat fails on the empty list.
        The same float arithmetic as facenet's, so the two agree at the boundary."""
        return min(photo.size) * (PNET_WINDOW / self.min_face_size) >= PNET_WINDOW

    def _run(self, photos: Image.Image | list[Image.Image]):
        """MTCNN's (boxes, probs, points) for one photo or a batch of same-sized ones; None where a stage
        had no window to crop (torch.cat on an empty list): that is "no face", anything else is a real error."""
        rgb = [p if p.mode == "RGB" else p.convert("RGB") for p in photos] if isinstance(photos, list) else \
            (photos if photos.mode == "RGB" else photos.convert("RGB"))  # the nets take 3 channels
        try:
            with self._lock:
                return self._mtcnn.detect(rgb, landmarks=True)
        except ValueError as e:
            if EMPTY_PYRAMID not in str(e):
                raise
            return None

    def detect(self, photo: Image.Image) -> list[Face]:
        """Every face, most confident first; [] for a photo too small to hold one."""
        found = self._run(photo) if self.can_scan(photo) else None
        return [] if found is None else _faces(*found)

    def detect_many(self, photos: list[Image.Image], batch_size: int = 32) -> list[list[Face]]:
        """detect() for each photo; photos of one size go through MTCNN together, in batches (about
        3x faster per photo on 2 cores than one at a time)."""
        out: list[list[Face]] = [[] for _ in photos]
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, im in enumerate(photos):
            if self.can_scan(im):
                by_size.setdefault(im.size, []).append(i)
        for idx in by_size.values():
            for start in range(0, len(idx), batch_size):
                part = idx[start:start + batch_size]
                found = self._run([photos[i] for i in part])
                if found is None:  # one photo left a stage empty: find which, one at a time
                    for i in part:
                        out[i] = self.detect(photos[i])
                    continue
                for i, b, p, lm in zip(part, *found, strict=True):
                    out[i] = _faces(b, p, lm)
        return out


def _faces(boxes, probs, points) -> list[Face]:
    """MTCNN's arrays for one photo -> Faces, most confident first."""
    if boxes is None:
        return []
    faces = [Face(tuple(float(v) for v in b), float(p), np.asarray(lm, np.float64))
             for b, p, lm in zip(boxes, probs, points, strict=True)]
    return sorted(faces, key=lambda f: -f.confidence)
