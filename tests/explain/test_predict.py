import inspect
import json
from pathlib import Path

import matplotlib.cbook
import numpy as np
import pytest
import torch
from PIL import Image

from agegender.explain.gradcam import explain_checkpoint
from agegender.explain.predict import ERR_FAILED, ERR_TOO_SMALL, analyse, display_crop
from agegender.explain.predict import main as predict_main
from agegender.faces import detect as faces
from agegender.faces.detect import MIN_FACE_SIZE
from agegender.labels import DEFAULT_BAND, MAX_AGE, gender_label
from agegender.models.checkpoint import Checkpoint, load_checkpoint
from agegender.models.inference import model_input
from agegender.models.model import age_range, create_model, decode_age
from agegender.models.preprocess import Preprocess

HOPPER = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)


def run(capsys, *args):
    code = predict_main(list(map(str, args)))
    out = capsys.readouterr()
    return code, out.out, out.err


def no_face_image(path):
    y, x = np.mgrid[0:240, 0:320]
    Image.fromarray(np.stack([x % 256, y % 256, (x + y) % 256], -1).astype(np.uint8)).save(path)
    return path


def test_good_photo_json(tiny_checkpoint, capsys):
    code, out, err = run(capsys, HOPPER, "--checkpoint", tiny_checkpoint, "--json")
    assert code == 0 and err == ""
    [r] = json.loads(out)
    assert r["image"] == str(HOPPER) and r["error"] is None and len(r["faces"]) == 1
    f = r["faces"][0]
    assert set(f) >= {"box", "confidence", "age", "age_lo", "age_hi", "age_coverage", "p_female", "label"}
    assert f["confidence"] > 0.95 and 0 <= f["age"] <= 150 and 0 <= f["p_female"] <= 1
    assert (f["age_lo"], f["age_hi"], f["age_coverage"]) == (None, None, None)  # not calibrated
    assert f["label"] in ("Male", "Female", "Uncertain")


def test_no_face_and_non_image_fail_alone(tiny_checkpoint, tmp_path, capsys):
    blank = no_face_image(tmp_path / "wall.png")
    text = tmp_path / "notes.jpg"
    text.write_text("hello")
    code, out, err = run(capsys, blank, text, HOPPER, "--checkpoint", tiny_checkpoint, "--json")
    assert code == 2
    results = json.loads(out)
    assert [r["error"] is None for r in results] == [False, False, True]
    assert results[0]["error"] == f"no face found in {blank}"
    assert results[1]["error"].startswith(f"cannot read {text} as an image")
    assert err.splitlines() == [f"error: {results[0]['error']}", f"error: {results[1]['error']}"]
    assert "Traceback" not in err


def test_cam_dir_writes_one_png_per_head_and_direction(tiny_checkpoint, tmp_path, capsys):
    code, out, _ = run(capsys, HOPPER, "--checkpoint", tiny_checkpoint, "--cam-dir", tmp_path / "cams")
    assert code == 0 and "face 1" in out
    names = sorted(p.name for p in (tmp_path / "cams").iterdir())
    assert names == [f"grace_hopper-face1-{h}.png" for h in
                     ("age-older", "age-younger", "gender-female", "gender-male")]


def test_cropped_skips_detection(tiny_checkpoint, tmp_path, capsys):
    blank = no_face_image(tmp_path / "crop.png")
    code, out, _ = run(capsys, blank, "--checkpoint", tiny_checkpoint, "--cropped", "--json")
    assert code == 0 and json.loads(out)[0]["faces"][0]["confidence"] is None


def test_a_face_reads_its_age_with_the_interval():
    from agegender.explain.predict import FaceResult

    face = FaceResult((0, 0, 1, 1), None, True, age=62.4, age_lo=55.3, age_hi=70.6, age_coverage=0.8)
    assert face.age_text() == "62 y (56-70)"
    assert face.to_json(DEFAULT_BAND)["age_lo"] == 55.3 and face.to_json(DEFAULT_BAND)["age_coverage"] == 0.8
    assert FaceResult((0, 0, 1, 1), None, True, age=62.4).age_text() == "62 y"


def test_bad_checkpoint(tmp_path, capsys):
    code, _, err = run(capsys, HOPPER, "--checkpoint", tmp_path)
    assert code == 2 and err.startswith("error: ") and "meta.json is missing" in err


def test_too_small_and_failing_images_fail_alone(tiny_checkpoint, tmp_path, capsys, monkeypatch):
    tiny = tmp_path / "dot.png"
    Image.new("RGB", (3, 40)).save(tiny)
    odd = tmp_path / "odd.jpg"
    Image.open(HOPPER).save(odd)
    real_align, calls = faces.align_face, []

    def align(photo, landmarks, *a, **kw):  # the first face aligned fails, as on degenerate landmarks
        calls.append(1)
        if len(calls) == 1:
            raise np.linalg.LinAlgError("SVD did not converge")
        return real_align(photo, landmarks, *a, **kw)

    monkeypatch.setattr(faces, "align_face", align)  # face_pixels, the one aligner, calls it
    code, out, err = run(capsys, tiny, odd, HOPPER, "--checkpoint", tiny_checkpoint, "--json")
    assert code == 2
    results = json.loads(out)
    assert results[0]["error"] == ERR_TOO_SMALL.format(name=tiny, width=3, height=40, min_size=MIN_FACE_SIZE)
    assert results[1]["error"] == ERR_FAILED.format(name=odd, detail="SVD did not converge")
    assert results[2]["error"] is None and len(results[2]["faces"]) == 1
    assert err.splitlines() == [f"error: {results[0]['error']}", f"error: {results[1]['error']}"]


def test_decoded_ages_stay_inside_the_label_range():
    raw = torch.tensor([-1e6, 0.0, 1.0, 48.0, 1e6])
    assert decode_age(raw, 33.0, 20.0).tolist() == [0.0, 33.0, 53.0, MAX_AGE, MAX_AGE]  # not 993
    assert decode_age(raw, 33.0, 20.0, age_range({"age_bins": 121})).tolist()[-1] == 120.0
    assert age_range({}) == (0.0, MAX_AGE)
    assert age_range({"age_bins": 121}) == (0.0, 120.0)
    assert age_range({"age_bins": 121, "age_range": [1, 90]}) == (1.0, 90.0)


@pytest.mark.parametrize("bias, expected", [(1e4, MAX_AGE), (-1e4, 0.0)])
def test_an_undertrained_model_cannot_predict_impossible_ages(tiny_checkpoint, bias, expected):
    ckpt = load_checkpoint(tiny_checkpoint)  # a regression head: no bound of its own
    assert "age_bins" not in ckpt.meta
    with torch.no_grad():
        ckpt.model.age_head.bias.fill_(bias)
    photo = Image.open(HOPPER).convert("RGB")
    r = analyse(photo, "hopper", ckpt, None, cropped=True)
    assert r.faces[0].age == expected


def test_the_display_crop_is_the_model_input_so_a_cam_lies_over_it_pixel_for_pixel():
    pp = Preprocess(cache_size=40, input_size=30)
    torch.manual_seed(0)
    ckpt = Checkpoint(Path("fake"), create_model("resnet18").eval(),
                      {"preprocess": pp.to_dict(), "age_offset": 30.0, "age_scale": 20.0})
    pixels = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    x = model_input(ckpt, pixels)[0]
    mean, std = torch.tensor(pp.mean).view(3, 1, 1), torch.tensor(pp.std).view(3, 1, 1)
    seen = torch.round((x * std + mean) * 255).to(torch.uint8).permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(display_crop(ckpt, pixels, scale=1), seen)
    heat = explain_checkpoint(ckpt, pixels, maps=("older",))[0].heat
    assert heat.shape == seen.shape[:2]
    assert display_crop(ckpt, pixels).shape == (60, 60, 3)  # enlarged twice by default


def test_one_uncertain_band():
    # analyse makes no call of its own (each output reads FaceResult.gender_call with its request's band)
    assert "band" not in inspect.signature(analyse).parameters
    assert inspect.signature(gender_label).parameters["band"].default == DEFAULT_BAND
    lo, hi = DEFAULT_BAND
    assert [gender_label(p) for p in (lo - 0.01, lo, (lo + hi) / 2, hi, hi + 0.01)] == [
        "Male", "Uncertain", "Uncertain", "Uncertain", "Female"]
