import json

import matplotlib.cbook
import numpy as np
from PIL import Image

from agegender.predict import main as predict_main

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
    assert set(f) >= {"box", "confidence", "age", "p_female", "label"}
    assert f["confidence"] > 0.95 and 0 <= f["age"] <= 150 and 0 <= f["p_female"] <= 1
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


def test_bad_checkpoint(tmp_path, capsys):
    code, _, err = run(capsys, HOPPER, "--checkpoint", tmp_path)
    assert code == 2 and err.startswith("error: ") and "meta.json is missing" in err
