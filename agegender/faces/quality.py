"""How a face was photographed, from what detection already gives: head pose from the five landmarks,
face size in pixels, and sharpness of the aligned crop. The model learnt from tight, frontal, sharp chips;
these say how far a face is from that, so a report can break accuracy down by them and a page can say
when a prediction is less reliable.

Pose from five points is an estimate, not a measurement: good to about 10 degrees, enough to tell a
frontal face from a turned one.
"""

from __future__ import annotations

import numpy as np

# Landmark order as MTCNN gives it (agegender.faces.detect.Face).
LEFT_EYE, RIGHT_EYE, NOSE, MOUTH_LEFT, MOUTH_RIGHT = range(5)
# The nose tip stands in front of the eyes by about half the distance between them (anthropometric means:
# nose projection ~30 mm, eye distance ~63 mm), which turns the nose's sideways shift into an angle.
NOSE_DEPTH = 0.95  # nose projection / half the eye distance

COLUMNS = ("face_px", "yaw", "roll", "sharpness")  # what the predictions table carries per face
# Groups a report can break accuracy down by, derived from COLUMNS (agegender.fairness.groups.prepare adds them).
POSE, SIZE = "pose", "face_size"
POSE_EDGES = (15.0, 30.0)  # |yaw| in degrees
POSE_LABELS = ("frontal (under 15°)", "half-turned (15-30°)", "turned (over 30°)")
SIZE_EDGES = (60.0, 120.0)  # face_px
SIZE_LABELS = ("under 60 px", "60-120 px", "over 120 px")
UNKNOWN = "unknown"  # no face found, or a chip: no landmarks to measure

# What the models saw in training. Pose: python -m benchmarks.chip_pose on all 20,983 UTKFace chips (MTCNN on
# each chip, 73 without a face): |yaw| median 7.1 degrees, 95th percentile 29.1, 99th 38.8, 0.8% beyond 40;
# UTKFACE_POSE_MIX is its pose groups' shares (FairFace-sample: 31% beyond 30 degrees, 21% beyond 40).
# Sharpness of the 144 px aligned crop, on 600 evenly spaced train chips: 5th percentile 11.9, median 45.
# Faces beyond these are rarer in training than 1 in 20, so a prediction on them is less reliable (on
# FairFace-sample the baseline's gender accuracy is 91% on frontal faces and 73% on faces turned over 30
# degrees). Chips fill their 200 px frame, so a face of under 60 px in a photo is enlarged more than 3x to
# reach the model.
UTKFACE_POSE_MIX = {POSE_LABELS[0]: 0.7653, POSE_LABELS[1]: 0.1903, POSE_LABELS[2]: 0.0443}
SHARPNESS_SIZE = 144  # sharpness is measured on the aligned crop at this size, whatever the model's
TRAINED_YAW = 30.0
TRAINED_SHARPNESS = 12.0
TRAINED_FACE_PX = 60.0
NOTE_TURNED = "turned {yaw:.0f}° (training faces: 95% within 29°)"
NOTE_BLURRED = "blurred (sharpness {sharpness:.0f}; 95% of training faces above 12)"
NOTE_SMALL = "small ({face_px:.0f} px; training faces fill 200 px)"


def roll(landmarks: np.ndarray) -> np.ndarray:
    """In-plane rotation in degrees: the angle of the line from the left to the right eye (0 = level)."""
    lm = np.asarray(landmarks, np.float64)
    d = lm[..., RIGHT_EYE, :] - lm[..., LEFT_EYE, :]
    return np.degrees(np.arctan2(d[..., 1], d[..., 0]))


def yaw(landmarks: np.ndarray) -> np.ndarray:
    """Left-right head turn in degrees (0 = frontal; the sign says which way). With the roll taken out,
    the nose tip sits off the eyes' midpoint by depth * sin(yaw) while the eyes close up by cos(yaw):
    (left gap - right gap) / (left gap + right gap) = NOSE_DEPTH * tan(yaw)."""
    lm = np.asarray(landmarks, np.float64)
    a = np.radians(roll(lm))[..., None]
    x = lm[..., 0] * np.cos(a) + lm[..., 1] * np.sin(a)  # x along the eye line
    left = x[..., NOSE] - x[..., LEFT_EYE]
    right = x[..., RIGHT_EYE] - x[..., NOSE]
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = (left - right) / (left + right)
    return np.degrees(np.arctan(ratio / NOSE_DEPTH))


def face_px(box: np.ndarray) -> np.ndarray:
    """The face's size in photo pixels: the longer side of its box."""
    b = np.asarray(box, np.float64)
    return np.maximum(b[..., 2] - b[..., 0], b[..., 3] - b[..., 1])


def sharpness(pixels: np.ndarray) -> np.ndarray:
    """Variance of the Laplacian of the aligned crop's grey levels (N x S x S x 3 uint8, or one S x S x 3),
    the usual blur measure: low for blurred or upscaled faces. Crops of one size compare with each other."""
    px = np.asarray(pixels, np.float64)
    grey = px[..., 0] * 0.299 + px[..., 1] * 0.587 + px[..., 2] * 0.114
    lap = (grey[..., :-2, 1:-1] + grey[..., 2:, 1:-1] + grey[..., 1:-1, :-2] + grey[..., 1:-1, 2:]
           - 4 * grey[..., 1:-1, 1:-1])
    return lap.reshape(*lap.shape[:-2], -1).var(axis=-1)


def at_sharpness_size(pixels: np.ndarray) -> np.ndarray:
    """Aligned crops (N x S x S x 3 uint8) resized to SHARPNESS_SIZE, where the thresholds were measured:
    the Laplacian's variance depends on the scale it is taken at."""
    px = np.asarray(pixels)
    if px.shape[-2] == SHARPNESS_SIZE:
        return px
    from PIL import Image

    flat = px.reshape(-1, *px.shape[-3:])
    out = [np.asarray(Image.fromarray(p).resize((SHARPNESS_SIZE, SHARPNESS_SIZE), Image.Resampling.BILINEAR))
           for p in flat]
    return np.stack(out).reshape(*px.shape[:-3], SHARPNESS_SIZE, SHARPNESS_SIZE, 3)


def measure(landmarks: np.ndarray, box: np.ndarray, pixels: np.ndarray) -> dict[str, np.ndarray]:
    """Every COLUMNS figure for a batch of faces (NaN where landmarks or box are NaN: no face found);
    ``pixels`` are the aligned crops, at any size."""
    return {"face_px": np.round(face_px(box), 1), "yaw": np.round(yaw(landmarks), 1),
            "roll": np.round(roll(landmarks), 1), "sharpness": np.round(sharpness(at_sharpness_size(pixels)), 1)}


def reliability_notes(face_px_: float, yaw_: float, sharpness_: float) -> list[str]:
    """Why a face lies outside what the models saw in training, one phrase per reason ([] when it does not,
    or where a figure is unknown)."""
    notes = []
    if np.isfinite(yaw_) and abs(yaw_) > TRAINED_YAW:
        notes.append(NOTE_TURNED.format(yaw=abs(yaw_)))
    if np.isfinite(sharpness_) and sharpness_ < TRAINED_SHARPNESS:
        notes.append(NOTE_BLURRED.format(sharpness=sharpness_))
    if np.isfinite(face_px_) and face_px_ < TRAINED_FACE_PX:
        notes.append(NOTE_SMALL.format(face_px=face_px_))
    return notes


def _bucket(values, edges: tuple[float, float], labels: tuple[str, ...]) -> list[str]:
    v = np.asarray(values, np.float64)
    idx = np.searchsorted(np.asarray(edges), v, side="right")
    return [labels[i] if np.isfinite(x) else UNKNOWN for i, x in zip(idx, v, strict=True)]


def pose_group(yaw_deg) -> list[str]:
    """Each face's pose group by |yaw|: frontal, half-turned, turned; unknown where not measured."""
    return _bucket(np.abs(np.asarray(yaw_deg, np.float64)), POSE_EDGES, POSE_LABELS)


def size_group(face_px_) -> list[str]:
    """Each face's size group in photo pixels; unknown where not measured."""
    return _bucket(face_px_, SIZE_EDGES, SIZE_LABELS)
