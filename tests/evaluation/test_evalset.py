"""Labelled datasets beyond UTKFace through a checkpoint: photos detected, the labelled face picked,
aligned, cached; faces not found kept as rows; the CSV and the JSON agree with each other."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import matplotlib.cbook
import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageOps

from agegender.data.datasets import ERR_NEEDS_LABELS, read_dataset
from agegender.evaluation import evalset
from agegender.evaluation.evalset import dataset_crops, labelled_face
from agegender.evaluation.evaluate import ERR_NEEDS_OUT, evaluate_dataset
from agegender.faces import quality
from agegender.faces.detect import Face
from agegender.labels import FAIRFACE_BINS, bin_label, nearest_bin
from agegender.models.checkpoint import load_checkpoint

from ..conftest import ROOT, fairface_sample_or_skip, make_dataset

HOPPER = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
FACE_CENTRE, FACE_SIDE = (265, 230), 180  # where MTCNN finds Grace Hopper's face in the 512 x 600 photo


def face(cx: float, cy: float, side: float = 40, p: float = 0.99) -> Face:
    return Face((cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2), p, np.zeros((5, 2)))


def test_the_labelled_face_is_the_confident_one_nearest_the_centre():
    centre, edge, faint = face(105, 95), face(20, 20, side=90), face(100, 100, p=0.5)
    assert labelled_face([edge, centre, faint], (200, 200)) is centre  # bigger and first is not the rule
    assert labelled_face([edge, faint], (200, 200)) is edge  # the faint one is not a face we trust
    assert labelled_face([faint], (200, 200)) is None and labelled_face([], (200, 200)) is None


def padded_crop(scale: float = 2.0, side: int = 224, mirror: bool = False, grey: bool = False) -> Image.Image:
    """Grace Hopper as FairFace pads a face: centred, ``scale`` x the face's side, resized to ``side``."""
    im = Image.open(HOPPER).convert("RGB")
    half = FACE_SIDE * scale / 2
    cx, cy = FACE_CENTRE
    im = im.crop((int(cx - half), int(cy - half), int(cx + half), int(cy + half))).resize((side, side))
    im = ImageOps.mirror(im) if mirror else im
    return ImageOps.grayscale(im).convert("RGB") if grey else im


def blank(side: int = 224, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(90, 110, (side, side, 3), dtype=np.uint8))


def fairface_like(folder: Path) -> pd.DataFrame:
    """Six photos with a face, two without, one corrupt file; FairFace's label CSV for them."""
    (folder / "val").mkdir(parents=True)
    rows = []
    photos = [padded_crop(), padded_crop(1.8, mirror=True), padded_crop(2.2, grey=True), padded_crop(side=200),
              padded_crop(1.6), padded_crop(2.0, mirror=True, grey=True), blank(seed=1), blank(seed=2)]
    races = ["White", "Black", "Indian", "East Asian", "White", "Indian", "Black", "Latino_Hispanic"]
    for i, (im, race) in enumerate(zip(photos, races, strict=True)):
        im.save(folder / "val" / f"{i}.jpg", quality=92)
        rows.append({"file": f"val/{i}.jpg", "age": ["20-29", "70+", "more than 70", "30-39"][i % 4].replace(
            "70+", "60-69"), "gender": "Female" if i % 3 else "Male", "race": race, "service_test": "False"})
    (folder / "val" / "8.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    rows.append({"file": "val/8.jpg", "age": "40-49", "gender": "Male", "race": "White", "service_test": "True"})
    labels = pd.DataFrame(rows)
    labels.to_csv(folder / "fairface_label_val.csv", index=False)
    return labels


def zipped(folder: Path, out: Path) -> Path:
    with zipfile.ZipFile(out, "w") as z:
        for p in sorted(folder.rglob("*.jpg")):
            z.write(p, p.relative_to(folder).as_posix())
    return out


@pytest.fixture(scope="module")
def fairface_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ff") / "FairFace"
    fairface_like(folder)
    return folder


def evaluate(args: list[str], cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "AGEGENDER_CACHE": str(cache)}
    return subprocess.run([sys.executable, "-m", "agegender.evaluate", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def independent(df: pd.DataFrame) -> dict:
    """The headline figures from the CSV alone, with pandas, as a reviewer would check them."""
    f = df[df["found"]]
    order = [bin_label(b) for b in FAIRFACE_BINS]
    steps = f["pred_age_bin"].map(order.index) - f["age_bin"].map(order.index)
    return {"n": len(df), "n_found": len(f),
            "gender_accuracy": ((f["p_female"] >= 0.5) == (f["gender"] == "female")).mean(),
            "age_bin_accuracy": (steps == 0).mean(), "age_bin_within1": (steps.abs() <= 1).mean()}


@pytest.mark.parametrize("packed", ["folder", "zip"])
def test_fairface_format_end_to_end(tiny_checkpoint, fairface_folder, tmp_path, packed):
    data = fairface_folder
    args = []
    if packed == "zip":
        data = zipped(fairface_folder, tmp_path / "ff.zip")
        args = ["--labels", str(fairface_folder / "fairface_label_val.csv")]
    out, js = tmp_path / "pred.csv", tmp_path / "m.json"
    r = evaluate(["--checkpoint", str(tiny_checkpoint), "--data", str(data), *args, "--out", str(out),
                  "--json", str(js)], tmp_path / "cache")
    assert r.returncode == 0, r.stderr
    assert "skipped 1 unreadable image(s): cannot read val/8.jpg as an image" in r.stderr
    df = pd.read_csv(out, keep_default_na=False, na_values=[""])
    assert list(df.columns) == ["file", "split", "age", "age_bin", "gender", "race", "found", "pred_age",
                                "pred_age_lo", "pred_age_hi", "pred_age_bin", "p_female", "age_label_tail",
                                *quality.COLUMNS]
    assert df.loc[df["found"], list(quality.COLUMNS)].notna().all().all()  # every face found is measured
    assert df.loc[~df["found"], list(quality.COLUMNS)].isna().all().all()
    assert list(df["file"]) == [f"val/{i}.jpg" for i in range(8)]  # the corrupt file is dropped, the rest in order
    assert list(df["found"]) == [True] * 6 + [False] * 2  # six faces, two photos with none
    assert df.loc[df["found"], ["pred_age", "p_female"]].notna().all().all()
    assert df.loc[~df["found"], ["pred_age", "p_female"]].isna().all().all()
    assert df["age"].isna().all()  # FairFace gives bins only
    labels = pd.read_csv(fairface_folder / "fairface_label_val.csv").iloc[:8]
    assert list(df["race"]) == list(labels["race"])
    assert list(df["gender"]) == [g.lower() for g in labels["gender"]]
    ages = df.loc[df["found"], "pred_age"]
    assert list(df.loc[df["found"], "pred_age_bin"]) == [bin_label(FAIRFACE_BINS[nearest_bin(a)]) for a in ages]
    m = json.loads(js.read_text())
    assert m["unreadable"] == 1 and m["format"] == "fairface" and m["geometry"] == "photos"
    for key, value in independent(df).items():
        assert m[key] == pytest.approx(value), key
    assert m["age_mae"] is None  # no exact ages, no MAE


def test_the_second_run_reads_the_crop_cache_and_gives_the_same_table(tiny_checkpoint, fairface_folder, tmp_path):
    ckpt = load_checkpoint(tiny_checkpoint)
    ds = read_dataset(fairface_folder)
    first, m1 = evaluate_dataset(ckpt, ds, cache_dir=tmp_path)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 2 and all(f.startswith(f"evalset-{ds.fingerprint[:20]}") for f in files)
    crops = dataset_crops(ds, ckpt.preprocess.cache_size, tmp_path)
    assert crops.from_cache and crops.found.sum() == 6
    second, m2 = evaluate_dataset(ckpt, ds, cache_dir=tmp_path)
    pd.testing.assert_frame_equal(first, second)
    assert m1 == m2


def test_a_new_alignment_does_not_reuse_old_crops(tiny_checkpoint, fairface_folder, tmp_path, monkeypatch):
    ds = read_dataset(fairface_folder)
    dataset_crops(ds, 32, tmp_path)
    monkeypatch.setattr(evalset, "PICK_RULE", evalset.PICK_RULE + " (changed)")
    assert not dataset_crops(ds, 32, tmp_path).from_cache
    assert len(list(tmp_path.glob("*.npz"))) == 2


def test_a_damaged_cache_is_rebuilt(fairface_folder, tmp_path, caplog):
    ds = read_dataset(fairface_folder)
    dataset_crops(ds, 32, tmp_path)
    next(tmp_path.glob("*.npz")).write_bytes(b"garbage")
    crops = dataset_crops(ds, 32, tmp_path)
    assert not crops.from_cache and crops.found.sum() == 6
    assert "ignoring a damaged crop cache" in caplog.text


def test_progress_is_reported_to_the_end(fairface_folder, tmp_path):
    seen = []
    dataset_crops(read_dataset(fairface_folder), 32, tmp_path, progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (9, 9) and all(a <= b for (a, _), (b, _) in zip(seen, seen[1:], strict=False))


def test_the_labelled_face_of_a_photo_with_a_bystander(tiny_checkpoint, tmp_path):
    """A portrait with a second, smaller face at the edge: the crop is the centred face's."""
    folder = tmp_path / "photos"
    folder.mkdir()
    canvas = Image.fromarray(np.full((448, 448, 3), 120, np.uint8))
    canvas.paste(padded_crop(1.3, side=200), (124, 124))  # the subject, centred
    canvas.paste(padded_crop(1.3, side=110, mirror=True), (0, 0))  # a bystander in the corner
    canvas.save(folder / "a.jpg", quality=95)
    padded_crop(1.3, side=200).save(folder / "alone.jpg", quality=95)
    (folder / "labels.csv").write_text("path,years,sex\na.jpg,70,F\nalone.jpg,70,F\n")
    ds = read_dataset(folder / "labels.csv", columns="file=path,age=years,gender=sex")
    crops = dataset_crops(ds, 64, tmp_path / "cache")
    assert crops.found.all()
    x1, y1, x2, y2 = crops.box[crops.files.index("a.jpg")]
    assert abs((x1 + x2) / 2 - 224) < 30 and abs((y1 + y2) / 2 - 224) < 30 and x2 - x1 > 80
    # the landmarks are the subject's: those of the same face alone, moved by where it was pasted
    a, alone = crops.landmarks[crops.files.index("a.jpg")], crops.landmarks[crops.files.index("alone.jpg")]
    assert np.abs(a - 124 - alone).max() < 10  # MTCNN wanders a few pixels; the bystander is 100+ away


def test_chips_with_extra_groups_skip_detection(tiny_checkpoint, tmp_path):
    """A user's labels file over aligned chips, with two extra group columns: every readable chip is a
    found face, and the group columns come through as they are."""
    folder = tmp_path / "chips"
    names = make_dataset(folder, n=12, size=48)
    sites = ["north", "south", "east"]
    lines = ["image,age_years,sex,site,camera"] + [
        f"{n},{n.split('_')[0]},{'woman' if n.split('_')[1] == '1' else 'man'},{sites[i % 3]},cam{i % 2}"
        for i, n in enumerate(names)]
    (folder / "labels.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "pred.csv"
    r = evaluate(["--checkpoint", str(tiny_checkpoint), "--data", str(folder), "--labels", str(folder / "labels.csv"),
                  "--columns", "file=image,age=age_years,gender=sex,gender_map=woman=1,man=0,groups=site,camera,"
                  "geometry=chips", "--out", str(out), "--json", str(tmp_path / "m.json")], tmp_path / "cache")
    assert r.returncode == 0, r.stderr
    df = pd.read_csv(out)
    assert list(df.columns) == ["file", "split", "age", "age_bin", "gender", "site", "camera", "found", "pred_age",
                                "pred_age_lo", "pred_age_hi", "pred_age_bin", "p_female", "age_label_tail",
                                *quality.COLUMNS]
    assert df["yaw"].isna().all() and df["sharpness"].notna().all()  # chips: no landmarks, but a crop
    assert df["found"].all() and len(df) == 12
    assert list(df["site"]) == [sites[i % 3] for i in range(12)]
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["age_mae"] == pytest.approx((df["pred_age"] - df["age"]).abs().mean())
    assert m["gender_accuracy"] == pytest.approx(((df["p_female"] >= 0.5) == (df["gender"] == "female")).mean())


def test_a_labelled_dataset_needs_out_and_bad_input_is_one_line(tiny_checkpoint, fairface_folder, tmp_path):
    r = evaluate(["--checkpoint", str(tiny_checkpoint), "--data", str(fairface_folder)], tmp_path)
    assert r.returncode == 2 and r.stderr.strip() == f"error: {ERR_NEEDS_OUT}"
    r = evaluate(["--checkpoint", str(tiny_checkpoint), "--data", str(fairface_folder), "--format", "csv",
                  "--out", str(tmp_path / "p.csv")], tmp_path)
    assert r.returncode == 2 and r.stderr.strip() == f"error: {ERR_NEEDS_LABELS.format(format='csv')}"
    assert not (tmp_path / "p.csv").exists()


def test_fairface_sample_faces_found_and_figures_match_the_csv(tmp_path):
    path = fairface_sample_or_skip()
    shipped = ROOT / "checkpoints" / "dlib-resnet29-utkface"
    out, js = tmp_path / "pred.csv", tmp_path / "m.json"
    r = evaluate(["--checkpoint", str(shipped), "--data", str(path), "--out", str(out), "--json", str(js)],
                 tmp_path / "cache")
    assert r.returncode == 0, r.stderr
    df = pd.read_csv(out, keep_default_na=False, na_values=[""])
    m = json.loads(js.read_text())
    assert m["n"] == len(df) == 563 and m["n_found"] / m["n"] >= 0.98  # the target
    assert df["race"].nunique() == 7
    for key, value in independent(df).items():
        assert m[key] == pytest.approx(value), key
