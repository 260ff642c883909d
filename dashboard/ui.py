"""Parts shared by the pages: the sidebar checkpoint picker, cached models, detector, predictions
and dataset listing, and the per-face result view (predict and compare pages use it).

Every cache that reads a file is keyed by that file's stamp (stamp()), so a checkpoint retrained,
or re-evaluated, in place is read again rather than served from memory.

torch and the model code are imported inside the functions that need them, so the sidebar and
each page's title render while they load."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import streamlit as st

from agegender.access import (
    CHECKPOINT_SECRET,
    DATA_SECRET,
    AllowList,
    NotAllowed,
    checkpoint_allow_list,
    data_allow_list,
    pickable,
)
from agegender.catalog import (
    DATA_ENV,
    DATA_FIELD,
    FLAGGED,
    META,
    WEIGHTS,
    compare_pick,
    default_data_path,
    default_pick,
    default_root,
    health,
    health_of,
)
from agegender.faces import MIN_CONFIDENCE
from agegender.labels import DEFAULT_BAND
from agegender.meta import CheckpointError
from agegender.predictions import predictions_path

OWN_SPLITS = ("val", "test")  # a checkpoint's own predictions files; anything else is an evaluation set

if TYPE_CHECKING:
    from agegender.checkpoint import Checkpoint
    from agegender.data import Scan
    from agegender.explain import CamMap
    from agegender.faces import FaceDetector
    from agegender.predict import ImageResult

log = logging.getLogger("agegender.dashboard")
SELECTED = "selected_checkpoints"
DATASET = "dataset_path"
PICKER = "picker_names"  # the picker's widget key
OFFERED = "picker_offered"  # label -> path of what the picker offers
PICK_DEFAULT = "picker_default"  # the labels a fresh session starts on
PAIR_BUTTON = "Compare {names}"
# widgets whose choice outlives a page switch (keep_options): the predict page's options, read again on the
# compare and explorer pages
KEEP = "kept."
KEPT = {"cropped": False, "whole": False, "min_conf": MIN_CONFIDENCE, "band": DEFAULT_BAND, "method": "GradCAM",
        "aug_smooth": False, "eigen_smooth": False, "other_gender": False, "faith": False, "opacity": 0.5}
GRID_COLUMNS = 6  # face thumbnails per row on the predict page
LESS_RELIABLE = "Less reliable: this face is {notes}, unlike most faces the model was trained on."


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
    """The stamp of what reading a checkpoint's predictions for a source reads: its own
    predictions-<split>.csv for val and test, the results cache's file for an evaluation set (named
    in the stamp, so a new result, or a dataset changed under a set, is a new key)."""
    if source in OWN_SPLITS:
        return stamp(Path(path) / META, predictions_path(path, source))
    from agegender.results import set_folder

    # the set's results folder changes when a result is written: a set evaluated a moment ago is seen at once
    f = set_result_file(str(path), source, checkpoint_stamp(path), stamp(set_folder(source)))
    return (*stamp(Path(path) / META, f or Path(path) / "-"), str(f))


@st.cache_data(ttl=30, show_spinner=False)
def set_result_file(ckpt_path: str, source: str, ckpt_stamp: tuple, results_stamp: tuple) -> Path | None:
    """Where an evaluation set's result for a checkpoint is cached (None: not evaluated, or an error the
    reader shows). Finding it re-reads the set's labels for their fingerprint, so a rerun within 30 s
    reuses the answer: a bias-page filter change stays fast on a large set."""
    from agegender.data import DatasetError
    from agegender.results import ResultsError, predictions_file

    try:
        return predictions_file(ckpt_path, source)
    except (ResultsError, DatasetError, CheckpointError):
        return None


@st.cache_resource(show_spinner="Loading checkpoint…", max_entries=8)
def _load(path: str, stamp: tuple) -> Checkpoint:
    # shared by every session: never mutated after loading
    from agegender.checkpoint import load_checkpoint

    return load_checkpoint(path)


def get_checkpoint(path: str | Path) -> Checkpoint:
    return _load(str(path), checkpoint_stamp(path))


@st.cache_resource(show_spinner="Loading the face detector…")
def get_detector() -> FaceDetector:
    from agegender.faces import FaceDetector

    return FaceDetector()


def example_photo() -> tuple[str, bytes]:
    """The predict page's example: grace_hopper.jpg, shipped with matplotlib."""
    import matplotlib.cbook

    with open(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False), "rb") as f:
        return "grace_hopper.jpg", f.read()


def warm_up() -> None:
    """What a fresh session's first page computes, done ahead into the shared caches: torch and grad-cam
    imported, the face detector and the default checkpoint loaded, and the example photo found, predicted
    and explained with the predict page's default options (so the first page reads it from the cache).
    Called by ``python -m dashboard`` while the server starts and the browser connects."""
    from agegender.explain import layer_names
    from agegender.predict import default_maps

    get_detector()
    name, data = example_photo()
    ckpt_allowed, _ = allow_lists()
    for path in default_pick(pickable(ckpt_allowed, default_root())):
        ckpt = get_checkpoint(path)
        opt = Options(layer=layer_names([ckpt.model])[0])
        result = analyse(data, name, path, opt.cropped, opt.whole_if_no_face, opt.min_confidence)
        for i, face in enumerate(f for f in result.faces if f.predicted):
            cams_cached(str(path), checkpoint_stamp(path), result_key(data, opt), i, result,
                        default_maps(face.p_female, opt.other_gender), opt.method, opt.layer, opt.aug_smooth,
                        opt.eigen_smooth, opt.faithfulness)


def result_key(data: bytes, opt: Options) -> str:
    """Names a photo and the options that found and predicted its faces (face_view's ``result_key``)."""
    return f"{data_key(data)}-{opt.cropped}-{opt.whole_if_no_face}-{opt.min_confidence}"


def run_page(page) -> None:
    """The error boundary: an unexpected error in a page is logged with its traceback on the
    server and shown as one short line; the other pages keep working."""
    try:
        page.run()
    except Exception as e:  # noqa: BLE001 - that is the point of a boundary
        log.exception("page %r failed", getattr(page, "title", page))
        st.error(f"This page failed: {type(e).__name__}: {str(e)[:200]}. The details are in the server log; "
                 "the other pages still work.")


def too_large(data: bytes) -> bool:
    return len(data) > st.get_option("server.maxUploadSize") * 1024 * 1024


def _secret(key: str) -> tuple[object, str]:
    """(the value of a key of .streamlit/secrets.toml or None, why a secrets file that exists
    cannot be read or "")."""
    try:
        return st.secrets.get(key), ""
    except FileNotFoundError as e:  # StreamlitSecretNotFoundError: no secrets file, or one that does not parse
        exists = any(Path(f).expanduser().exists() for f in st.get_option("secrets.files"))
        return None, str(e) if exists else ""


def allow_lists() -> tuple[AllowList, AllowList]:
    """Where checkpoints and datasets may be read from: the environment, else secrets.toml."""
    return checkpoint_allow_list(*_secret(CHECKPOINT_SECRET)), data_allow_list(*_secret(DATA_SECRET))


def pick_labels(paths: list[Path]) -> dict[str, Path]:
    """Picker labels: the folder's name, or its whole path where two folders share a name."""
    names = [p.name for p in paths]
    return {(p.name if names.count(p.name) == 1 else str(p)): p for p in paths}


def typed_path(text: str, allowed: AllowList) -> str:
    """The path typed, stripped; empty after showing why, for one outside the allow-list."""
    text = text.strip()
    try:
        if text:
            allowed.check(text)
    except NotAllowed as e:
        st.error(str(e))
        return ""
    return text


def sidebar() -> None:
    """The checkpoint picker every page shares; choices live in session state. It offers, and
    reads, only folders the allow-lists allow (agegender.access); ⚠ marks a checkpoint whose
    validation figures say it is untrained or diverged (agegender.catalog.health)."""
    ckpt_allowed, data_allowed = allow_lists()
    root = default_root()
    paths = pickable(ckpt_allowed, root)
    labels = pick_labels(paths)
    flags = {label: health_of(p) for label, p in labels.items()}
    default = [label for label, p in labels.items() if p in default_pick(paths)]
    # the picker's value lives in session state from the start, never as the widget's default: a page may then
    # set it (offer_pair) with no "default value and Session State" clash; a folder gone since is dropped
    st.session_state[PICKER] = [label for label in st.session_state.get(PICKER, default) if label in labels]
    where = root if ckpt_allowed.roots is None else ", ".join(map(str, ckpt_allowed.roots)) or "nowhere"
    with st.sidebar:
        st.header("Checkpoints")
        for problem in {a.problem for a in (ckpt_allowed, data_allowed) if a.problem}:
            st.error(problem)
        chosen = st.multiselect("From checkpoints/", list(labels), key=PICKER,
                                format_func=lambda label: f"{label} ⚠" if flags.get(label) else label,
                                help=f"Folders in {where}. ⚠: its validation figures say it is untrained or "
                                     "diverged (the Checkpoints page says why).")
        extra = typed_path(st.text_input("…or a checkpoint folder", key="picker_path",
                                         placeholder="/path/to/checkpoint"), ckpt_allowed)
        # the value counts on the first run only (the field is keyed): the data the default checkpoint was trained on
        data = typed_path(st.text_input(DATA_FIELD, value=default_data_path([labels[c] for c in default]),
                                        key="data_path", placeholder="/path/to/UTKFace",
                                        help=f"Folder, .zip or .tar.gz; default ${DATA_ENV}, else the data the "
                                             "checkpoint was trained on, where it is on this machine"), data_allowed)
    # plain keys, not widget keys: pages read these
    st.session_state[SELECTED] = [str(labels[c]) for c in chosen if c in labels] + ([extra] if extra else [])
    st.session_state[DATASET] = data
    st.session_state[OFFERED] = labels
    st.session_state[PICK_DEFAULT] = default


def offer_pair(container) -> bool:
    """With fewer than two checkpoints picked, a button that puts two in the picker
    (agegender.catalog.compare_pick: the two most recently trained while the picker holds what a fresh
    session starts on, else the pick plus the most recent other). The sidebar's choice changes only when
    the user presses it. False when there is nothing to offer."""
    offered: dict[str, Path] = st.session_state.get(OFFERED, {})
    chosen = list(st.session_state.get(PICKER, []))
    picked = [Path(p) for p in st.session_state.get(SELECTED, [])]
    untouched = chosen == st.session_state.get(PICK_DEFAULT) and len(picked) == len(chosen)
    names = {p: label for label, p in offered.items()}
    pick = [names[p] for p in compare_pick(picked, list(offered.values()), untouched) if p in names]
    if len(pick) < 2:
        return False
    container.button(PAIR_BUTTON.format(names=" and ".join(pick)), key="offer_pair", on_click=_pick, args=(pick,))
    return True


def _pick(labels: list[str]) -> None:
    # a callback runs before the script, so the picker is drawn with these and the page sees them at once
    st.session_state[PICKER] = labels
    # what the sidebar will read from the picker; set here too, for a rerun of the page alone
    offered: dict[str, Path] = st.session_state.get(OFFERED, {})
    st.session_state[SELECTED] = [str(offered[label]) for label in labels]


def selected_checkpoints(limit: int | None = None) -> list[Checkpoint]:
    """The loaded checkpoints picked in the sidebar; a page with none stops with a hint."""
    loaded = []
    for p in st.session_state.get(SELECTED, [])[:limit]:
        try:
            loaded.append(get_checkpoint(p))
        except CheckpointError as e:
            st.error(f"Checkpoint not loaded: {e}")
            continue
        reason = health(loaded[-1].meta)
        if reason:  # still usable: say so, and go on
            st.warning(FLAGGED.format(name=loaded[-1].name, reason=reason))
    if not loaded:
        st.info("Pick a checkpoint in the sidebar (folders under checkpoints/, or a path).")
        st.stop()
    return loaded


@dataclass(frozen=True)
class Options:
    cropped: bool = False
    whole_if_no_face: bool = False
    min_confidence: float = MIN_CONFIDENCE
    band: tuple[float, float] = DEFAULT_BAND
    method: str = "GradCAM"
    layer: str | None = None  # the checkpoint's own default (its first cam_layers): layer names differ by architecture
    aug_smooth: bool = False
    eigen_smooth: bool = False
    other_gender: bool = False
    faithfulness: bool = False
    opacity: float = 0.5


def keep_options() -> None:
    """Before the predict page draws its options: each widget takes its last value back (Streamlit drops a
    widget's state on a run that does not draw it, so a page switch would reset it), and the value it holds
    now is kept, under a key no widget owns, for the next switch and for kept_options()."""
    state = st.session_state
    for key, value in KEPT.items():
        if key in state:
            state[KEEP + key] = state[key]
        else:
            state[key] = state.get(KEEP + key, value)


def kept_options(**changes) -> Options:
    """The CAM options last chosen on the predict page (ui.KEPT), for the other pages that explain a face."""
    kept = {key: st.session_state.get(KEEP + key, value) for key, value in KEPT.items()}
    chosen = dict(band=tuple(kept["band"]), method=kept["method"], aug_smooth=kept["aug_smooth"],
                  eigen_smooth=kept["eigen_smooth"], other_gender=kept["other_gender"], faithfulness=kept["faith"],
                  opacity=kept["opacity"])
    return Options(**{**chosen, **changes})


@st.cache_data(max_entries=64, show_spinner="Finding faces…")
def detect_cached(data: bytes, name: str):
    """(photo, faces) or (None, error message) for one uploaded file: a bad upload never raises,
    so the other uploads keep their results."""
    from agegender.faces import load_photo
    from agegender.predict import image_error

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
    from agegender.faces import load_photo
    from agegender.predict import ImageResult, analyse, image_error

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
    from agegender.predict import explain_face

    face = [f for f in _result.faces if f.predicted][face_index]
    return explain_face(_load(ckpt_path, stamp), face, maps, method=method, layer=layer, aug_smooth=aug,
                        eigen_smooth=eigen, faithfulness=faith)


def data_key(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def cam_caption(m: CamMap) -> str:
    title = {"older": "age: evidence for older", "younger": "age: evidence for younger",
             "female": "gender: evidence for female", "male": "gender: evidence for male"}[m.name]
    if m.faithfulness is None:
        return title
    verdict = "fails the check" if m.faithfulness_note() else "passes"
    return f"{title} · ROAD gap {m.faithfulness:+.2f} {m.unit} ({verdict})"


def face_view(ckpt: Checkpoint, result: ImageResult, face_index: int, result_key: str, opt: Options,
              overlays: dict[str, bytes] | None = None) -> None:
    """One face (the face_index-th predicted one) through one checkpoint: prediction, then the CAMs
    per head. ``result_key`` names the image and the options that produced ``result``; ``overlays``, when given,
    collects each map as a PNG for a download."""
    from agegender.explain import overlay
    from agegender.predict import default_maps, display_crop
    from agegender.visual import png_bytes

    face = [f for f in result.faces if f.predicted][face_index]
    label = face.gender_call(opt.band)
    st.markdown(f"**{ckpt.name}** — age **{face.age:.1f}** y · P(female) **{face.p_female:.2f}** → **{label}**")
    if face.quality:
        q = face.quality
        st.caption(f"Face {q['face_px']:.0f} px · turned {abs(q['yaw']):.0f}° · tilted {abs(q['roll']):.0f}° · "
                   f"sharpness {q['sharpness']:.0f}")
    if face.notes:
        st.warning(LESS_RELIABLE.format(notes="; ".join(face.notes)))
    maps = default_maps(face.p_female, opt.other_gender)
    try:
        cams = cams_cached(str(ckpt.path), checkpoint_stamp(ckpt.path), result_key, face_index, result, maps,
                           opt.method, opt.layer, opt.aug_smooth, opt.eigen_smooth, opt.faithfulness)
    except ValueError as e:
        st.error(f"Grad-CAM failed: {e}")
        return
    crop = display_crop(ckpt, face.pixels)
    cols = st.columns(len(cams) + 1)
    cols[0].image(crop, caption=face.input_text, width="stretch")
    for col, m in zip(cols[1:], cams, strict=True):
        img = overlay(crop, m.heat, opt.opacity)
        col.image(img, caption=cam_caption(m), width="stretch")
        if overlays is not None:  # PNG-encoding each map costs ~40 ms: only for a page that offers the download
            name = f"{Path(result.image).stem}-face{face_index + 1}-{ckpt.name}-{m.head}-{m.name}.png"
            overlays[name] = png_bytes(img)
    for note in filter(None, (m.faithfulness_note() for m in cams)):
        st.warning(note)


def face_call(face, band: tuple[float, float]) -> str:
    """A face's prediction in a few words: "34 y · Female"."""
    return f"{face.age:.0f} y · {face.gender_call(band)}"


def face_grid(ckpts: list[Checkpoint], results: dict[str, ImageResult], numbers: list[int],
              band: tuple[float, float], shown: int | None = None) -> None:
    """A thumbnail per predicted face of one photo (the aligned model input), numbered as on the boxed
    photo, with each checkpoint's age and gender call: a photo of many faces reads at a glance, and
    face_view explains the one picked. ``numbers`` are the predicted faces' numbers; ``shown`` the one
    explained below, marked ▶."""
    from agegender.predict import display_crop

    predicted = {c.name: [f for f in results[c.name].faces if f.predicted] for c in ckpts}
    cols = st.columns(GRID_COLUMNS)
    for i, number in enumerate(numbers):
        calls = [face_call(predicted[c.name][i], band) for c in ckpts]
        if len(ckpts) > 1:
            calls = [f"{c.name}: {call}" for c, call in zip(ckpts, calls, strict=True)]
        mark = "▶ " if number == shown else ""
        cols[i % GRID_COLUMNS].image(display_crop(ckpts[0], predicted[ckpts[0].name][i].pixels, scale=1),
                                     caption=f"{mark}Face {number}: " + "; ".join(calls), width="stretch")


def checkpoint_choice(ckpts: list[Checkpoint], label: str = "Checkpoint", key: str = "one_ckpt") -> Checkpoint:
    """One of the sidebar's checkpoints, for pages that look at one at a time."""
    if len(ckpts) == 1:
        return ckpts[0]
    names = [c.name for c in ckpts]
    return ckpts[names.index(st.selectbox(label, names, key=key))]


@st.cache_data(max_entries=16, show_spinner="Reading predictions…")
def predictions_cached(ckpt_path: str, source: str, stamp: tuple):
    """The checkpoint's predictions for a source (val, test or an evaluation set's name), as of the files'
    predictions_stamp. Raises ValueError (ResultsError among them) or CheckpointError saying why not."""
    from agegender.predictions import load_predictions
    from agegender.results import load_result

    return load_predictions(ckpt_path, source) if source in OWN_SPLITS else load_result(ckpt_path, source)


def predictions(ckpt: Checkpoint, source: str):
    """The checkpoint's predictions for a source, or None after showing why they are missing (a set not
    evaluated yet points to the Evaluation sets page)."""
    from agegender.data import DatasetError

    try:
        return predictions_cached(str(ckpt.path), source, predictions_stamp(ckpt.path, source))
    except (ValueError, CheckpointError, DatasetError) as e:
        st.info(str(e)) if source not in OWN_SPLITS else st.error(str(e))
        return None


def source_picker(container, key: str) -> str:
    """The evaluation-set picker of the review pages: the checkpoints' own UTKFace val and test, then every
    registered evaluation set whose images the data allow-list allows."""
    from agegender.results import list_sets, source_label

    _, data_allowed = allow_lists()
    names = [s.name for s in list_sets() if data_allowed.allows(s.path)]
    return container.selectbox("Evaluation set", [*OWN_SPLITS, *names], key=key, format_func=source_label,
                               help="UTKFace val / test: the checkpoint's own held-out splits. Register and "
                                    "evaluate other labelled datasets on the Evaluation sets page.")


# cache_resource: a listing of 20,000 samples is read, never mutated, and need not be copied per rerun
@st.cache_resource(show_spinner="Listing the dataset…", max_entries=4)
def scan_cached(path: str, stamp: tuple) -> Scan:
    from agegender.data import scan

    return scan(path)


def dataset(path: str) -> Scan:
    """The dataset's listing, read again when the folder (an image added or removed) or archive changes."""
    return scan_cached(path, stamp(path))
