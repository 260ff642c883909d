"""Predict age and gender for every face in photos, with Grad-CAM per head.

    python -m agegender.predict IMAGE... --checkpoint DIR [--json] [--cam-dir DIR] [--cropped] [--band LO HI]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..faces import quality
from ..faces.detect import (
    MIN_CONFIDENCE,
    MIN_FACE_SIZE,
    Face,
    FaceDetector,
    UnreadableImage,
    face_pixels,
    load_photo,
)
from ..labels import DEFAULT_BAND, called_female, check_band, gender_label, printable
from ..models.checkpoint import Checkpoint, CheckpointError, load_checkpoint
from ..models.interval import NO_INTERVAL, age_text, predict_with_interval
from ..models.preprocess import centre_crop
from .gradcam import METHODS, CamMap, explain_checkpoint, overlay

ERR_NO_FACE = "no face found in {name}"
ERR_TOO_SMALL = ("no face found in {name}: at {width} x {height} pixels it is too small for the detector, "
                 "which looks for faces of {min_size} pixels and more")
ERR_FAILED = "cannot analyse {name} ({detail})"
DEFAULT_MIN_CONFIDENCE = MIN_CONFIDENCE
# what the model was given for a face: said on every page and in the JSON, since only the first is
# cropped like the training chips
ALIGNED, CROPPED, WHOLE = "aligned", "cropped", "whole"
INPUT_KINDS = {
    ALIGNED: "model input (aligned)",
    CROPPED: "model input (the image as uploaded, not aligned)",
    WHOLE: "model input (no face found: the whole image's centre, not aligned)",
}


@dataclass
class FaceResult:
    box: tuple[float, float, float, float]
    confidence: float | None  # None when the whole image was taken as the face
    predicted: bool
    pixels: np.ndarray | None = None  # aligned face at the checkpoint's cache size, uint8
    age: float | None = None
    age_lo: float | None = None  # the age's calibrated interval (agegender.evaluation.intervals); None: not calibrated
    age_hi: float | None = None
    age_coverage: float | None = None  # the interval's stated coverage, 0.8 for an 80% interval
    p_female: float | None = None
    maps: list[CamMap] = field(default_factory=list)
    quality: dict[str, float] = field(default_factory=dict)  # agegender.faces.quality.COLUMNS of a detected face
    notes: list[str] = field(default_factory=list)  # why it is less reliable (quality.reliability_notes)
    kind: str = ALIGNED  # what the model was given: INPUT_KINDS

    @property
    def input_text(self) -> str:
        return INPUT_KINDS[self.kind]

    def gender_call(self, band: tuple[float, float]) -> str | None:
        """Male, Female or Uncertain (inside ``band``); None for a face not predicted. The band is the request's,
        not the face's: a result is computed once and read with whatever band the reader picks."""
        return None if self.p_female is None else gender_label(self.p_female, band)

    def to_json(self, band: tuple[float, float]) -> dict:
        return {"box": [round(v, 1) for v in self.box],
                "confidence": None if self.confidence is None else round(self.confidence, 4),
                "predicted": self.predicted,
                "age": None if self.age is None else round(self.age, 1),
                "age_lo": self.age_lo, "age_hi": self.age_hi, "age_coverage": self.age_coverage,
                "p_female": None if self.p_female is None else round(self.p_female, 4),
                "label": self.gender_call(band),
                "quality": {k: (None if not np.isfinite(v) else v) for k, v in self.quality.items()},
                "less_reliable": self.notes, "input": self.kind}

    def age_text(self) -> str:
        """The predicted age with its interval: "62 y (55-70)"; "62 y" when the checkpoint has none."""
        return age_text(self.age, self.age_lo, self.age_hi)


@dataclass
class ImageResult:
    image: str
    faces: list[FaceResult] = field(default_factory=list)
    error: str | None = None
    size: tuple[int, int] | None = None

    def to_json(self, band: tuple[float, float]) -> dict:
        return {"image": self.image, "faces": [f.to_json(band) for f in self.faces], "error": self.error}


def _whole_image_face(photo: Image.Image, size: int, kind: str) -> FaceResult:
    """The photo's centre square taken as the face (no detection, so no confidence)."""
    s = min(photo.size)
    x, y = (photo.width - s) / 2, (photo.height - s) / 2
    return FaceResult((x, y, x + s, y + s), None, True, face_pixels(photo, None, size), kind=kind)


def analyse(
    photo: Image.Image,
    name: str,
    ckpt: Checkpoint,
    faces: list[Face] | None,
    cropped: bool = False,
    whole_if_no_face: bool = False,
    min_confidence: float = DEFAULT_MIN_CONFIDENCE,
    tta: bool = True,
) -> ImageResult:
    """Align and predict every detected face of one photo (``faces`` from FaceDetector.detect);
    ``cropped`` takes the photo itself as the face. No gender call: each output reads one with its request's
    band (FaceResult.gender_call), so a table and a JSON of one request cannot disagree."""
    result = ImageResult(name, size=photo.size)
    size = ckpt.preprocess.cache_size
    if cropped:
        result.faces = [_whole_image_face(photo, size, CROPPED)]
    else:
        for f in faces or []:
            ok = f.confidence >= min_confidence
            result.faces.append(FaceResult(f.box, f.confidence, ok, face_pixels(photo, f, size) if ok else None))
            if ok:
                _measure(result.faces[-1], f)
        if not any(f.predicted for f in result.faces):
            if not whole_if_no_face:
                small = min(photo.size) < MIN_FACE_SIZE
                result.error = (ERR_TOO_SMALL if small else ERR_NO_FACE).format(
                    name=name, width=photo.width, height=photo.height, min_size=MIN_FACE_SIZE)
                return result
            result.faces.append(_whole_image_face(photo, size, WHOLE))
    todo = [f for f in result.faces if f.predicted]
    ages, pf, lo, hi = predict_with_interval(ckpt, np.stack([f.pixels for f in todo]), tta)
    cal = ckpt.calibration
    for f, a, p, a_lo, a_hi in zip(todo, ages, pf, lo, hi, strict=True):
        f.age, f.p_female = float(a), float(p)
        if np.isfinite(a_lo):
            f.age_lo, f.age_hi, f.age_coverage = float(a_lo), float(a_hi), cal.coverage
    return result


def interval_note(ckpt: Checkpoint) -> str:
    """Where a checkpoint's age intervals come from ("80% interval, calibrated on UTKFace val"), or how to get
    them; IntervalError (a CheckpointError) for a record that cannot be used."""
    cal = ckpt.calibration
    return NO_INTERVAL.format(path=ckpt.path) if cal is None else cal.caption()


def _measure(result: FaceResult, face: Face) -> None:
    """How the face was photographed, and why that makes its prediction less reliable, if it does."""
    m = quality.measure(face.landmarks[None], np.asarray(face.box)[None], result.pixels[None])
    result.quality = {k: float(v[0]) for k, v in m.items()}
    result.notes = quality.reliability_notes(result.quality["face_px"], result.quality["yaw"],
                                             result.quality["sharpness"])


def image_error(name: str, e: ValueError) -> str:
    """The one line for an image our code could not take: UnreadableImage names the file and the
    reason itself; any other ValueError (alignment on degenerate landmarks, say) gets ERR_FAILED."""
    return str(e) if isinstance(e, UnreadableImage) else ERR_FAILED.format(name=name, detail=e)


def default_maps(p_female: float, other_gender: bool = False) -> tuple[str, ...]:
    """Both age directions and the predicted gender class (and the other class on request)."""
    predicted, other = ("female", "male") if called_female(p_female) else ("male", "female")
    return ("older", "younger", predicted) + ((other,) if other_gender else ())


def explain_face(ckpt: Checkpoint, face: FaceResult, maps: tuple[str, ...] | None = None, **kw) -> list[CamMap]:
    """Grad-CAMs for one predicted face, by default ``default_maps``."""
    if maps is None:
        maps = default_maps(face.p_female or 0.0)
    face.maps = explain_checkpoint(ckpt, face.pixels, maps=maps, **kw)
    return face.maps


def display_crop(ckpt: Checkpoint, pixels: np.ndarray, scale: int = 2) -> np.ndarray:
    """What the model sees of the aligned face (preprocess's own centre crop), enlarged for display:
    a Grad-CAM map, which has the model input's size, lies over it pixel for pixel."""
    crop = np.ascontiguousarray(centre_crop(pixels, ckpt.preprocess))
    side = crop.shape[0] * scale
    return np.asarray(Image.fromarray(crop).resize((side, side), Image.Resampling.BICUBIC))


def _write_cams(ckpt: Checkpoint, r: ImageResult, out: Path, method: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(f for f in r.faces if f.predicted):
        face = display_crop(ckpt, f.pixels)
        for m in explain_face(ckpt, f, ("older", "younger", "female", "male"), method=method):
            png = out / f"{Path(r.image).stem}-face{i + 1}-{m.head}-{m.name}.png"
            Image.fromarray(overlay(face, m.heat)).save(png)


def run_file(path: str, ckpt: Checkpoint, detector: FaceDetector | None, min_confidence: float,
             cam_dir: str | None = None, method: str = "GradCAM") -> ImageResult:
    """One file start to end (no detector: it is a cropped face). A bad file comes back as a result
    with its error, so it never costs the files after it."""
    try:
        photo = load_photo(path)
        faces = None if detector is None else detector.detect(photo)
        r = analyse(photo, path, ckpt, faces, cropped=detector is None, min_confidence=min_confidence)
        if cam_dir:
            _write_cams(ckpt, r, Path(cam_dir), method)
        return r
    except ValueError as e:  # UnreadableImage, or our code refusing this image; a bug elsewhere still stops
        return ImageResult(path, error=image_error(path, e))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m agegender.predict", description=__doc__.split("\n")[0])
    p.add_argument("images", nargs="+")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--json", action="store_true", help="print one JSON list, an object per image")
    p.add_argument("--cam-dir", help="write Grad-CAM overlays here, one PNG per face, head and direction")
    p.add_argument("--cropped", action="store_true", help="the images are already cropped faces")
    p.add_argument("--min-confidence", type=float, default=DEFAULT_MIN_CONFIDENCE)
    p.add_argument("--method", default="GradCAM", choices=list(METHODS))  # a typo is a usage error, not a per-image one
    p.add_argument("--band", type=float, nargs=2, default=DEFAULT_BAND, metavar=("LO", "HI"),
                   help="P(female) in [LO, HI] reads Uncertain, in the text and the JSON alike "
                        f"(default {DEFAULT_BAND[0]} {DEFAULT_BAND[1]})")
    args = p.parse_args(argv)
    try:
        band = check_band(args.band)
    except ValueError as e:
        p.error(str(e))
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        ckpt = load_checkpoint(args.checkpoint)
        note = interval_note(ckpt)  # an unusable age_interval record is refused here, before any image
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    detector = None if args.cropped else FaceDetector()
    results = []
    if not args.json:
        print(f"age: {note}")
    for path in args.images:
        r = run_file(path, ckpt, detector, args.min_confidence, args.cam_dir, args.method)
        results.append(r)
        if r.error:  # every message names the file: escaped, so a newline in a name cannot forge a line
            print(f"error: {printable(r.error)}", file=sys.stderr)
        if not args.json:
            for i, f in enumerate(r.faces):
                conf = "" if f.confidence is None else f" (detection {f.confidence:.2f})"
                if f.predicted:
                    print(f"{printable(path)} face {i + 1}{conf}: age {f.age_text()}, P(female) {f.p_female:.2f} "
                          f"-> {f.gender_call(band)}")
                else:
                    print(f"{printable(path)} face {i + 1}{conf}: below --min-confidence, not predicted")
    if args.json:
        print(json.dumps([r.to_json(band) for r in results], indent=2, allow_nan=False))
    return 2 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
