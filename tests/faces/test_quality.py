"""Pose, size and sharpness of a face from what detection gives."""

import matplotlib.cbook
import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageFilter

from agegender.faces import quality
from agegender.labels import DEFAULT_BAND

HOPPER = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)


def head(yaw_deg: float, roll_deg: float = 0.0, eye: float = 30.0, centre=(100.0, 100.0)) -> np.ndarray:
    """Five landmarks of a model head (eyes at +-eye, the nose tip NOSE_DEPTH * eye in front of them, mouth
    corners in the eyes' plane) turned by ``yaw_deg``, tilted by ``roll_deg``, seen orthographically."""
    p = quality.NOSE_DEPTH * eye
    pts = np.array([[-eye, 0, 0], [eye, 0, 0], [0, 35, p], [-22, 60, 0], [22, 60, 0]], float)
    t = np.radians(yaw_deg)
    x = pts[:, 0] * np.cos(t) + pts[:, 2] * np.sin(t)
    y = pts[:, 1]
    r = np.radians(roll_deg)
    xy = np.stack([x * np.cos(r) - y * np.sin(r), x * np.sin(r) + y * np.cos(r)], axis=1)
    return xy + np.asarray(centre)


@pytest.mark.parametrize("yaw_deg", [-60, -30, -10, 0, 15, 45, 70])
@pytest.mark.parametrize("roll_deg", [-25, 0, 10])
def test_pose_of_a_model_head(yaw_deg, roll_deg):
    lm = head(yaw_deg, roll_deg)
    assert quality.roll(lm) == pytest.approx(roll_deg, abs=1e-6)
    assert quality.yaw(lm) == pytest.approx(yaw_deg, abs=1e-6)


def test_pose_is_batched_and_a_missing_face_is_nan():
    lm = np.stack([head(20), head(-40, 5), np.full((5, 2), np.nan)])
    np.testing.assert_allclose(quality.yaw(lm)[:2], [20, -40], atol=1e-6)
    assert np.isnan(quality.yaw(lm)[2]) and np.isnan(quality.roll(lm)[2])


def test_face_size_is_the_longer_side_of_the_box():
    np.testing.assert_array_equal(quality.face_px(np.array([[10, 20, 110, 150], [0, 0, 50, 40]])), [130, 50])


def test_blur_lowers_sharpness():
    im = Image.open(HOPPER).convert("RGB").crop((150, 100, 380, 330)).resize((128, 128))
    levels = [quality.sharpness(np.asarray(im.filter(ImageFilter.GaussianBlur(r)))) for r in (0, 1, 2, 4)]
    assert all(a > b for a, b in zip(levels, levels[1:], strict=False)), levels
    flat = np.full((128, 128, 3), 77, np.uint8)
    assert quality.sharpness(flat) == 0
    batch = np.stack([np.asarray(im), flat])
    np.testing.assert_allclose(quality.sharpness(batch), [levels[0], 0])


def test_measure_gives_every_column():
    out = quality.measure(np.stack([head(10)]), np.array([[0, 0, 80, 100.0]]), np.zeros((1, 16, 16, 3), np.uint8))
    assert tuple(out) == quality.COLUMNS and out["yaw"][0] == 10.0 and out["face_px"][0] == 100.0


def test_pose_and_size_become_report_groups_not_dataset_groups(tmp_path):
    from agegender.fairness.groups import GroupReport, groupings_for, prepare
    from agegender.predictions import group_columns, load_predictions, write_predictions

    rng = np.random.default_rng(0)
    n = 300
    yaw = rng.uniform(-60, 60, n)
    df = pd.DataFrame({"file": [f"{i}.jpg" for i in range(n)], "age": rng.uniform(20, 70, n),
                       "gender": rng.choice(["male", "female"], n), "race": rng.choice(["A", "B"], n),
                       "found": True, "pred_age": rng.uniform(20, 70, n), "p_female": rng.uniform(0, 1, n),
                       "face_px": rng.uniform(30, 200, n), "yaw": yaw, "roll": 0.0, "sharpness": 50.0})
    df.loc[:9, ["found", "pred_age", "p_female", "face_px", "yaw", "roll", "sharpness"]] = [False] + [np.nan] * 6
    write_predictions(df, tmp_path / "p.csv")
    back = load_predictions(path=tmp_path / "p.csv")
    assert group_columns(back) == ["race"]  # the measurements are figures, not the dataset's groups
    assert back["yaw"].dtype == float and back["yaw"].isna().sum() == 10
    table = prepare(back)
    turned = np.abs(yaw[10:]) > 30
    assert (table["pose"][10:] == quality.POSE_LABELS[2]).to_numpy().tolist() == turned.tolist()
    assert (table["pose"][:10] == quality.UNKNOWN).all()
    assert "pose" in groupings_for(back) and "face_size" in groupings_for(back)
    rep = GroupReport(table, "pose", n_boot=0)
    by = rep.by_group.set_index("pose")
    assert by.loc[quality.POSE_LABELS[2], "n"] == turned.sum()
    ok = ((back["p_female"] >= 0.5) == (back["gender"] == "female"))[10:][turned]
    assert by.loc[quality.POSE_LABELS[2], "gender_accuracy"] == pytest.approx(ok.mean())


def test_a_table_without_measurements_has_no_pose_groups():
    from agegender.fairness.groups import groupings_for

    df = pd.DataFrame({"age": [30.0], "gender": ["male"], "race": ["A"], "pred_age": [31.0], "p_female": [0.2]})
    assert "pose" not in groupings_for(df)


def test_reliability_notes_name_each_reason_beyond_training():
    assert quality.reliability_notes(150, 10, 40) == []
    assert quality.reliability_notes(np.nan, np.nan, np.nan) == []  # nothing measured, nothing claimed
    notes = quality.reliability_notes(45, -41, 5)
    assert notes == [quality.NOTE_TURNED.format(yaw=41), quality.NOTE_BLURRED.format(sharpness=5),
                     quality.NOTE_SMALL.format(face_px=45)]
    assert quality.reliability_notes(200, quality.TRAINED_YAW, quality.TRAINED_SHARPNESS) == []  # edges are inside


def test_sharpness_is_taken_at_one_size_whatever_the_crop():
    im = Image.open(HOPPER).convert("RGB").crop((150, 100, 380, 330))
    small = np.asarray(im.resize((64, 64)))[None]
    assert quality.at_sharpness_size(small).shape == (1, quality.SHARPNESS_SIZE, quality.SHARPNESS_SIZE, 3)
    same = np.asarray(im.resize((quality.SHARPNESS_SIZE,) * 2))[None]
    assert quality.at_sharpness_size(same) is same


def test_a_predicted_face_carries_its_quality_and_notes(tiny_checkpoint):
    from agegender.explain.predict import analyse
    from agegender.faces.detect import FaceDetector, load_photo
    from agegender.models.checkpoint import load_checkpoint

    photo = load_photo(HOPPER)
    result = analyse(photo, "hopper", load_checkpoint(tiny_checkpoint), FaceDetector().detect(photo))
    face = result.faces[0]
    assert set(face.quality) == set(quality.COLUMNS)
    assert abs(face.quality["yaw"]) < 15 and face.quality["face_px"] > 150  # a frontal portrait
    assert face.notes == quality.reliability_notes(face.quality["face_px"], face.quality["yaw"],
                                                   face.quality["sharpness"])
    out = face.to_json(DEFAULT_BAND)
    assert out["quality"] == face.quality and out["less_reliable"] == face.notes
    small = photo.resize((photo.width // 6, photo.height // 6))  # the face under 60 px
    tiny = analyse(small, "small", load_checkpoint(tiny_checkpoint), FaceDetector().detect(small)).faces[0]
    assert any(n.startswith("small (") for n in tiny.notes)
