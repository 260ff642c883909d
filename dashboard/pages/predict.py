"""Predict & explain: every face in a photo, its age and gender, and what each head looked at."""

import streamlit as st

from dashboard import caches, faceview, state

st.title("Predict & explain")

# heavy imports after the title, so the page shows while they load
from agegender.explain.gradcam import METHODS, layer_names
from agegender.explain.predict import WHOLE
from agegender.fairness import faithful as faithfulness
from agegender.fairness import tables
from agegender.models.checkpoint import CheckpointError
from agegender.models.interval import NO_INTERVAL
from dashboard.visual import draw_faces, results_frame, results_json, zip_bytes

TYPES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
# with MIME types in the list Streamlit leaves the check to the browser's file dialog and to this page,
# so a file of another type that gets past the browser is refused alone, not with the whole upload
MIME_TYPES = ("image/jpeg", "image/png", "image/webp", "image/bmp")
EXPLAIN = "Grad-CAMs of"

ckpts = state.selected_checkpoints(limit=3)

source = st.radio("Photo", ["Example", "Upload", "Camera"], horizontal=True, key="source")
files: list[tuple[str, bytes]] = []
if source == "Upload":
    ups = st.file_uploader("Images", type=[*TYPES, *MIME_TYPES], accept_multiple_files=True)
    files = [(u.name, u.getvalue()) for u in ups or []]
    for name in [n for n, _ in files if not n.lower().endswith(TYPES)]:
        st.error(f"{name} is not a type this page reads: upload JPEG, PNG, WebP or BMP.")
    files = [(n, d) for n, d in files if n.lower().endswith(TYPES)]
    for name in [n for n, d in files if faceview.too_large(d)]:
        st.error(f"{name} is larger than {st.get_option('server.maxUploadSize')} MB: downscale it first.")
    files = [(n, d) for n, d in files if not faceview.too_large(d)]
elif source == "Camera":
    shot = st.camera_input("Take a photo")
    files = [("camera.jpg", shot.getvalue())] if shot else []
else:
    files = [faceview.example_photo()]
    st.caption("Example: Grace Hopper (female, photographed in her late seventies), shipped with matplotlib.")

state.keep_options()
layers = layer_names([c.model for c in ckpts])
if st.session_state.get("layer") not in layers:  # a layer of another architecture, picked before a switch
    st.session_state["layer"] = layers[0]
try:  # the first checkpoint's ROAD-against-random report (python -m agegender.faithfulness), when there is one
    faith = faithfulness.read_report(ckpts[0].path)
except faithfulness.FaithfulnessError as e:
    st.warning(str(e))
    faith = None
with st.expander("Options", expanded=False):
    c1, c2, c3 = st.columns(3)
    # no defaults here: state.keep_options() gave each key its value, so a page switch does not reset them
    opt = state.Options(
        cropped=c1.toggle("This image is already a cropped face", key="cropped"),
        whole_if_no_face=c1.toggle("No face found: use the whole image", key="whole"),
        min_confidence=c1.slider("Detection confidence threshold", 0.5, 1.0, step=0.01, key="min_conf"),
        band=c1.slider("Uncertain band for P(female)", 0.0, 1.0, step=0.01, key="band"),
        method=c2.selectbox("CAM method", list(METHODS), key="method",
                            format_func=lambda m: faithfulness.method_label(m, faith),
                            help="ScoreCAM runs hundreds of forward passes: several seconds per face."),
        layer=c2.selectbox("Target layer", layers, key="layer",
                           format_func=lambda s: f"{s} (last block)" if s == layers[0] else s),
        aug_smooth=c2.checkbox("Augmentation smoothing", key="aug_smooth"),
        eigen_smooth=c2.checkbox("Eigen smoothing", key="eigen_smooth"),
        other_gender=c3.checkbox("Also show the other gender class", key="other_gender"),
        faithfulness=c3.checkbox("Faithfulness (ROAD)", key="faith",
                                 help="Target change when the 20% least relevant pixels are imputed minus when "
                                      "the 20% most relevant are: positive for a map that shows what the model "
                                      "used; at or below 0 the map fails the check and the page says so."),
        opacity=c3.slider("Heatmap opacity", 0.0, 1.0, step=0.05, key="opacity"),
    )
    note = faithfulness.method_note(opt.method, faith)
    if note:
        c2.caption(note)

if not files:
    st.info("Upload one or more photos, take one with the camera, or pick the example.")
    st.stop()

calibrations = {}  # each checkpoint's age interval calibration (agegender.evaluation.intervals), None: not calibrated
for c in ckpts:
    try:
        calibrations[c.name] = c.calibration
    except CheckpointError as e:  # a record made for other weights, or edited: the message says how to redo it
        st.error(str(e))
        st.stop()
if any(cal is None for cal in calibrations.values()):
    st.info("; ".join(f"{c.name}: {NO_INTERVAL.format(path=c.path)}" for c in ckpts if calibrations[c.name] is None))

results = {c.name: [] for c in ckpts}
overlays: dict[str, bytes] = {}
for file_index, (name, data) in enumerate(files):
    st.subheader(name)
    per_ckpt = {c.name: caches.analyse(data, name, c.path, opt.cropped, opt.whole_if_no_face, opt.min_confidence)
                for c in ckpts}
    for c in ckpts:
        results[c.name].append(per_ckpt[c.name])
    first = per_ckpt[ckpts[0].name]
    if first.error and not first.faces:
        st.error(first.error)
        continue
    if first.error:
        st.warning(f"{first.error}: every detection is under the confidence threshold. Lower it, or turn on "
                   "'No face found: use the whole image' in Options.")
    elif any(f.kind == WHOLE for f in first.faces):
        st.warning(f"No face found in {name}: the model was given the whole image's centre, not an aligned face, "
                   "so its figures are less like those on the training chips.")
    elif not opt.cropped:
        photo, _ = caches.detect_cached(data, name)
        n_ok = sum(f.predicted for f in first.faces)
        st.image(draw_faces(photo, first.faces), width=min(700, photo.width),
                 caption=f"{len(first.faces)} face(s) found, {n_ok} above the threshold")
    skipped = [i + 1 for i, f in enumerate(first.faces) if not f.predicted]
    if skipped:
        st.caption(f"Listed but not predicted (confidence under {opt.min_confidence:.2f}): face(s) "
                   + ", ".join(map(str, skipped)))
    key = faceview.result_key(data, opt)
    numbers = [j + 1 for j, f in enumerate(first.faces) if f.predicted]
    if not numbers:
        continue
    number = numbers[0]
    if len(numbers) > 1:  # many faces: a grid of them, and the Grad-CAMs of the one picked
        grid = st.container()
        # keyed by the options that found these faces: another threshold may find other faces
        number = st.radio(EXPLAIN, numbers, horizontal=True, key=f"face_pick-{file_index}-{key}",
                          format_func=lambda n: f"Face {n}")
        with grid:
            faceview.face_grid(ckpts, per_ckpt, numbers, opt.band, shown=number)
    st.markdown(f"#### Face {number}")
    for c in ckpts:
        face = [f for f in per_ckpt[c.name].faces if f.predicted][numbers.index(number)]
        if face.age_lo is not None:
            st.markdown(f"**{c.name}** — age **{face.age_text()}** · {calibrations[c.name].caption()}")
        faceview.face_view(c, per_ckpt[c.name], numbers.index(number), key, opt, overlays)

table = results_frame(results, opt.band)  # the one band of this request: the table, CSV and JSON read it alike
if not table.empty:
    st.divider()
    st.dataframe(tables.styled(table), hide_index=True, placeholder=tables.MISSING)
    d1, d2, d3 = st.columns(3)
    d1.download_button("Predictions (CSV)", tables.csv_download(table), "predictions.csv", "text/csv")
    d2.download_button("Predictions (JSON)", results_json(results, opt.band), "predictions.json", "application/json")
    if overlays:
        d3.download_button("Overlays of the faces shown (PNG, zip)", zip_bytes(overlays), "overlays.zip",
                           "application/zip")
