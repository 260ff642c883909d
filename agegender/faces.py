"""Photos in, aligned face chips out: read any image, detect faces with MTCNN, align them to the
geometry of the UTKFace chips (a 5-point similarity transform onto a template derived from them)."""

from __future__ import annotations

import io
import json
import os
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


class UnreadableImage(ValueError):
    """A file that is not an image we can decode; the message names it and says why."""


@dataclass(frozen=True)
class Face:
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in photo pixels
    confidence: float
    landmarks: np.ndarray  # 5 x 2: left eye, right eye, nose, left mouth corner, right mouth corner


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit grayscale: rescale, do not clip
        a = np.asarray(im, dtype=np.float64)
        hi = 65535.0 if im.mode.startswith("I;16") else max(float(a.max()), 1.0)
        return Image.fromarray(np.clip(a / hi * 255, 0, 255).astype(np.uint8)).convert("RGB")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")


def load_photo(source: str | os.PathLike | bytes | io.IOBase, name: str | None = None) -> Image.Image:
    """Any readable image -> RGB, upright by its EXIF orientation. Raises UnreadableImage."""
    if name is None:
        name = str(source) if isinstance(source, (str, os.PathLike)) else getattr(source, "name", "the upload")
    data = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(data) as im:
                im.load()
                im = ImageOps.exif_transpose(im)
                return _to_rgb(im)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise UnreadableImage(ERR_TOO_LARGE.format(name=name, detail=e)) from e
    except FileNotFoundError as e:
        raise UnreadableImage(ERR_UNREADABLE.format(name=name, detail="no such file")) from e
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise UnreadableImage(ERR_UNREADABLE.format(name=name, detail=type(e).__name__ if not str(e) else e)) from e


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


def centre_square(photo: Image.Image) -> Image.Image:
    """A photo that is already a cropped face: its centred square, the shape of a chip."""
    s = min(photo.size)
    x, y = (photo.width - s) // 2, (photo.height - s) // 2
    return photo.crop((x, y, x + s, y + s))


class FaceDetector:
    """MTCNN (facenet-pytorch ships its weights: nothing is downloaded). Detection holds no
    per-request state on the modules, but the lock keeps the shared nets to one request at a time."""

    def __init__(self, device: str = "cpu", min_face_size: int = 20):
        from facenet_pytorch import MTCNN

        self._mtcnn = MTCNN(keep_all=True, device=device, min_face_size=min_face_size)
        self._lock = threading.Lock()

    def detect(self, photo: Image.Image) -> list[Face]:
        """Every face, most confident first."""
        with self._lock:
            boxes, probs, points = self._mtcnn.detect(photo, landmarks=True)
        if boxes is None:
            return []
        faces = [Face(tuple(float(v) for v in b), float(p), np.asarray(lm, np.float64))
                 for b, p, lm in zip(boxes, probs, points, strict=True)]
        return sorted(faces, key=lambda f: -f.confidence)
