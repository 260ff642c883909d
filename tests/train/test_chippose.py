"""Chip pose for --balance-by pose: measured once per dataset, cached, grouped like the report's pose groups."""

import json

import numpy as np
import pytest

from agegender.data.utkface import scan
from agegender.faces import detect as faces
from agegender.faces import quality
from agegender.train import chippose
from agegender.train.balance import groups, parse_by, sampling_weights
from agegender.train.loop import train

from ..conftest import make_dataset, tiny_config


def landmarks_for(yaw_deg: float) -> np.ndarray:
    """Five level landmarks whose nose sits off the eyes' midpoint by what quality.yaw reads as yaw_deg."""
    d = 20 * quality.NOSE_DEPTH * np.tan(np.radians(yaw_deg))
    return np.array([[30.0, 40], [70, 40], [50 + d, 60], [35, 80], [65, 80]])


def fake_yaw(im) -> float | None:
    """The stand-in detector's pose for a chip: from its mean brightness; none for the darkest chips."""
    m = float(np.asarray(im).mean())
    return None if m < 110 else (m - 110) / 2


class FakeDetector:
    calls = 0

    def detect_many(self, photos):
        FakeDetector.calls += len(photos)
        out = []
        for im in photos:
            y = fake_yaw(im)
            out.append([] if y is None else [faces.Face((0, 0, 10, 10), 0.99, landmarks_for(y))])
        return out


def test_landmarks_for_reads_back_as_the_same_yaw():
    for y in (0.0, 12.0, 33.0, 50.0):
        assert abs(float(quality.yaw(landmarks_for(y)))) == pytest.approx(y, abs=1e-6)


def test_pose_cells_follow_the_report_groups_and_count_unmeasured_chips_as_frontal():
    labels = {"age": np.array([30.0, 30, 30, 30, 30]), "gender": np.array([0.0, 1, 0, 1, 0]),
              "race": np.array([0, 0, 0, 0, 0]), "abs_yaw": np.array([3.0, 20, 35, np.nan, 15])}
    cell, names = groups(labels, parse_by("pose"))
    assert names == list(quality.POSE_LABELS)
    assert [names[c] for c in cell] == [quality.POSE_LABELS[i] for i in (0, 1, 2, 0, 1)]
    cell, names = groups(labels, parse_by("gender,pose"))
    assert len(names) == 6 and names[cell[1]] == f"female / {quality.POSE_LABELS[1]}"
    w, desc = sampling_weights(*groups(labels, ("pose",)), ("pose",), power=1.0)
    assert desc["cells"] == "pose" and w[2] > w[0]  # the one turned chip is drawn more often than a frontal one


def test_yaws_are_measured_once_then_read_from_the_cache(tmp_path):
    make_dataset(tmp_path / "utk", n=30, size=48)
    sc = scan(tmp_path / "utk")
    FakeDetector.calls = 0
    got = chippose.cached_yaws(sc, sc.samples, tmp_path / "cache", FakeDetector())
    assert FakeDetector.calls == 30
    from PIL import Image

    want = [fake_yaw(Image.open(sc.path / s.member).convert("RGB")) for s in sc.samples]
    assert np.isnan(got).sum() == sum(w is None for w in want) > 0  # no face: NaN, kept through the cache
    np.testing.assert_allclose(got[~np.isnan(got)], [w for w in want if w is not None], atol=1e-3)
    again = chippose.cached_yaws(sc, sc.samples[::-1], tmp_path / "cache", FakeDetector())
    assert FakeDetector.calls == 30  # nothing measured twice
    np.testing.assert_array_equal(again, got[::-1])
    assert json.loads(chippose.cache_path(sc, tmp_path / "cache").read_text())  # plain JSON, nulls for NaN


def test_a_damaged_pose_cache_is_measured_again(tmp_path, caplog):
    make_dataset(tmp_path / "utk", n=12, size=48)
    sc = scan(tmp_path / "utk")
    path = chippose.cache_path(sc, tmp_path / "cache")
    path.parent.mkdir(parents=True)
    path.write_text("[not json")
    FakeDetector.calls = 0
    got = chippose.cached_yaws(sc, sc.samples, tmp_path / "cache", FakeDetector())
    assert FakeDetector.calls == 12 and len(got) == 12 and "damaged pose cache" in caplog.text


def test_training_balanced_by_pose_measures_the_chips_and_records_the_cells(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setattr(faces, "FaceDetector", FakeDetector)
    FakeDetector.calls = 0
    out = train(tiny_config(tiny_data, tmp_path / "pose", balance="sampling", balance_by="pose",
                            balance_power=1.0))
    meta = json.loads((out / "meta.json").read_text())
    assert 0 < FakeDetector.calls <= 80  # the training split's chips, once
    assert meta["balance"]["cells"] == "pose" and set(meta["balance"]["by_cell"]) <= set(quality.POSE_LABELS)
    FakeDetector.calls = 0
    train(tiny_config(tiny_data, tmp_path / "plain"))
    assert FakeDetector.calls == 0  # an unbalanced run never measures pose
