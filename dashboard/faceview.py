"""The per-face result view the predict, compare and explorer pages share: a face's prediction and its
CAMs (face_view), a photo's faces as thumbnails (face_grid), and warm_up, which fills the caches these
read before a fresh session's first page asks."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import streamlit as st

from agegender.models.catalog import default_pick, default_root
from dashboard.access import pickable
from dashboard.caches import analyse, cams_cached, checkpoint_stamp, data_key, get_checkpoint, get_detector
from dashboard.state import Options, allow_lists

if TYPE_CHECKING:
    from agegender.explain.gradcam import CamMap
    from agegender.explain.predict import ImageResult
    from agegender.models.checkpoint import Checkpoint

GRID_COLUMNS = 6  # face thumbnails per row on the predict page
LESS_RELIABLE = "Less reliable: this face is {notes}, unlike most faces the model was trained on."


def example_photo() -> tuple[str, bytes]:
    """The predict page's example: grace_hopper.jpg, shipped with matplotlib."""
    import matplotlib.cbook

    with open(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False), "rb") as f:
        return "grace_hopper.jpg", f.read()


def too_large(data: bytes) -> bool:
    return len(data) > st.get_option("server.maxUploadSize") * 1024 * 1024


def result_key(data: bytes, opt: Options) -> str:
    """Names a photo and the options that found and predicted its faces (face_view's ``result_key``)."""
    return f"{data_key(data)}-{opt.cropped}-{opt.whole_if_no_face}-{opt.min_confidence}"


def warm_up() -> None:
    """What a fresh session's first page computes, done ahead into the shared caches: torch and grad-cam
    imported, the face detector and the default checkpoint loaded, and the example photo found, predicted
    and explained with the predict page's default options (so the first page reads it from the cache).
    Called by ``python -m dashboard`` while the server starts and the browser connects."""
    from agegender.explain.gradcam import layer_names
    from agegender.explain.predict import default_maps

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
    from agegender.explain.gradcam import overlay
    from agegender.explain.predict import default_maps, display_crop
    from dashboard.visual import png_bytes

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
    from agegender.explain.predict import display_crop

    predicted = {c.name: [f for f in results[c.name].faces if f.predicted] for c in ckpts}
    cols = st.columns(GRID_COLUMNS)
    for i, number in enumerate(numbers):
        calls = [face_call(predicted[c.name][i], band) for c in ckpts]
        if len(ckpts) > 1:
            calls = [f"{c.name}: {call}" for c, call in zip(ckpts, calls, strict=True)]
        mark = "▶ " if number == shown else ""
        cols[i % GRID_COLUMNS].image(display_crop(ckpts[0], predicted[ckpts[0].name][i].pixels, scale=1),
                                     caption=f"{mark}Face {number}: " + "; ".join(calls), width="stretch")
