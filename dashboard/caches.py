"""The dashboard's caches: checkpoints, the face detector, predictions of an upload and its CAMs, and a
checkpoint's predictions tables, shared by every session (st.cache_resource for models, never mutated;
st.cache_data for tables and results).

Every cache that reads a file is keyed by that file's stamp (stamp()), so a checkpoint retrained,
or re-evaluated, in place is read again rather than served from memory. torch and the model code are
imported inside the functions that need them, so the sidebar and each page's title render while they load."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

import streamlit as st

from agegender.evaluation.sources import source as agegender_source
from agegender.meta import CheckpointError
from agegender.models.catalog import META, WEIGHTS
from agegender.predictions import OWN_SPLITS as OWN_SPLITS  # the picker's own splits, as pages named them here

if TYPE_CHECKING:
    from agegender.explain.gradcam import CamMap
    from agegender.explain.predict import ImageResult
    from agegender.faces.detect import FaceDetector
    from agegender.models.checkpoint import Checkpoint


def stamp(*paths: str | Path) -> tuple:
    """Changes whenever one of the files is rewritten: its modification time in ns and its inode
    (every write here replaces the file, so the inode changes even within one clock tick), or
    None for a missing file. Caches take it as an argument, so they key on it."""
    out = []
    for p in paths:
        try:
            info = Path(p).stat()
            out.append((info.st_mtime_ns, info.st_ino))
        except OSError:
            out.append(None)
    return tuple(out)


def checkpoint_stamp(path: str | Path) -> tuple:
    """The stamp of what loading a checkpoint reads."""
    return stamp(Path(path) / META, Path(path) / WEIGHTS)


def predictions_stamp(path: str | Path, source: str) -> tuple:
    """The stamp of what reading a checkpoint's predictions for a source reads (its Source's stamp_files) and
    of the file found (named in the stamp, so a new result, or a dataset changed under a set, is a new key)."""
    files = agegender_source(path, source).stamp_files()
    # a set's results folder changes when a result is written: a set evaluated a moment ago is seen at once
    f = predictions_file(str(path), source, checkpoint_stamp(path), stamp(*files))
    return (*stamp(*files[:1], f or Path(path) / "-"), str(f))


@st.cache_data(ttl=30, show_spinner=False)
def predictions_file(ckpt_path: str, source: str, ckpt_stamp: tuple, files_stamp: tuple) -> Path | None:
    """Where a checkpoint's predictions for a source are (None: not evaluated, or an error the reader is shown).
    Finding a set's re-reads its labels for their fingerprint, so a rerun within 30 s reuses the answer: a
    bias-page filter change stays fast on a large set."""
    from agegender.data.utkface import DatasetError
    from agegender.evaluation.results import ResultsError

    try:
        return agegender_source(ckpt_path, source).predictions_path()
    except (ResultsError, DatasetError, CheckpointError):
        return None


@st.cache_resource(show_spinner="Loading checkpoint…", max_entries=8)
def _load(path: str, stamp: tuple) -> Checkpoint:
    # shared by every session: never mutated after loading
    from agegender.models.checkpoint import load_checkpoint

    return load_checkpoint(path)


def get_checkpoint(path: str | Path) -> Checkpoint:
    return _load(str(path), checkpoint_stamp(path))


@st.cache_resource(show_spinner="Loading the face detector…")
def get_detector() -> FaceDetector:
    from agegender.faces.detect import FaceDetector

    return FaceDetector()


@st.cache_data(max_entries=64, show_spinner="Finding faces…")
def detect_cached(data: bytes, name: str):
    """(photo, faces) or (None, error message) for one uploaded file: a bad upload never raises,
    so the other uploads keep their results."""
    from agegender.explain.predict import image_error
    from agegender.faces.detect import load_photo

    try:
        photo = load_photo(data, name)
        return photo, get_detector().detect(photo)
    except ValueError as e:  # UnreadableImage, or our code refusing this image (as the predict command)
        return None, image_error(name, e)


@st.cache_data(max_entries=64, show_spinner="Predicting…")
def analyse_cached(data: bytes, name: str, ckpt_path: str, stamp: tuple, cropped: bool, whole: bool,
                   min_conf: float) -> ImageResult:
    """One upload through one checkpoint (as of its checkpoint_stamp); a bad upload comes back as a
    result with its error."""
    from agegender.explain.predict import ImageResult, analyse, image_error
    from agegender.faces.detect import load_photo

    try:
        if cropped:
            photo, faces = load_photo(data, name), None
        else:
            photo, faces = detect_cached(data, name)
            if photo is None:
                return ImageResult(name, error=faces)
        return analyse(photo, name, _load(ckpt_path, stamp), faces, cropped=cropped, whole_if_no_face=whole,
                       min_confidence=min_conf)
    except ValueError as e:  # the same per-image errors as the predict command
        return ImageResult(name, error=image_error(name, e))


def analyse(data: bytes, name: str, ckpt_path: str | Path, cropped: bool, whole: bool, min_conf: float) -> ImageResult:
    """analyse_cached for the checkpoint's files as they are now."""
    return analyse_cached(data, name, str(ckpt_path), checkpoint_stamp(ckpt_path), cropped, whole, min_conf)


@st.cache_data(max_entries=256, show_spinner="Computing Grad-CAM…")
def cams_cached(ckpt_path: str, stamp: tuple, result_key: str, face_index: int, _result: ImageResult,
                maps: tuple[str, ...], method: str, layer: str, aug: bool, eigen: bool, faith: bool) -> list[CamMap]:
    from agegender.explain.predict import explain_face

    face = [f for f in _result.faces if f.predicted][face_index]
    return explain_face(_load(ckpt_path, stamp), face, maps, method=method, layer=layer, aug_smooth=aug,
                        eigen_smooth=eigen, faithfulness=faith)


def data_key(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


@st.cache_data(max_entries=16, show_spinner="Reading predictions…")
def predictions_cached(ckpt_path: str, source: str, stamp: tuple):
    """The checkpoint's predictions for a source (val, test or an evaluation set's name), as of the files'
    predictions_stamp. Raises ValueError (ResultsError among them) or CheckpointError saying why not."""
    return agegender_source(ckpt_path, source).load()


def predictions(ckpt: Checkpoint, source: str):
    """The checkpoint's predictions for a source, or None after showing why they are missing: a set not
    evaluated yet (ResultsError) is a step still to take on the Evaluation sets page, anything else an error."""
    from agegender.data.utkface import DatasetError
    from agegender.evaluation.results import ResultsError

    try:
        return predictions_cached(str(ckpt.path), source, predictions_stamp(ckpt.path, source))
    except ResultsError as e:
        st.info(str(e))
    except (ValueError, CheckpointError, DatasetError) as e:
        st.error(str(e))
    return None
