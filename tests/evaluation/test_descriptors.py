"""Descriptors of a whole source through their cache (agegender.evaluation.descriptors).

UTKFace-named generated chips stand for a dataset: what is checked is the plumbing (rows and order, the
150 px resize, the cache's key, atomic files, a damaged or foreign cache ignored), not identity, which
tests/models/test_facerec.py checks against dlib. The photo set uses matplotlib's Grace Hopper, the only
real face that ships with the dependencies, so MTCNN finds a face to align.
"""

from __future__ import annotations

import json
import logging

import matplotlib.cbook
import numpy as np
import pytest
from PIL import Image

from agegender.data.datasets import read_dataset
from agegender.data.utkface import scan
from agegender.evaluation import descriptors as D
from agegender.evaluation import leakage
from agegender.models import facerec

from ..conftest import make_dataset


@pytest.fixture
def chips(tmp_path):
    make_dataset(tmp_path / "utk", n=12, size=200)
    return scan(tmp_path / "utk")


def expected(folder) -> dict[str, np.ndarray]:
    """Each chip decoded and resized by hand as dlib_check did, then described one at a time."""
    out = {}
    for p in sorted(folder.iterdir()):
        px = np.asarray(Image.open(p).convert("RGB").resize((150, 150), Image.Resampling.BILINEAR))
        out[p.name] = facerec.descriptors(px[None])[0]
    return out


def test_utkface_rows_are_the_chips_in_order(chips, tmp_path):
    d = D.utkface_descriptors(chips, tmp_path / "cache")
    assert d.files == [s.member for s in chips.samples] and not d.from_cache
    assert d.vectors.shape == (12, 128) and d.vectors.dtype == np.float32 and d.found.all()
    want = expected(tmp_path / "utk")
    np.testing.assert_allclose(d.vectors, np.stack([want[f] for f in d.files]), atol=1e-5)


def test_second_run_reads_the_cache(chips, tmp_path):
    first = D.utkface_descriptors(chips, tmp_path / "cache")
    stem = D._stem(tmp_path / "cache", chips.fingerprint, "utkface")
    assert stem.with_suffix(".npy").is_file() and facerec.network_sha256()[:12] in stem.name
    again = D.utkface_descriptors(chips, tmp_path / "cache")
    assert again.from_cache and again.files == first.files
    np.testing.assert_array_equal(again.vectors, first.vectors)
    assert not [p for p in (tmp_path / "cache").iterdir() if ".tmp" in p.name]  # atomic: no temporary left


def test_a_changed_dataset_gets_new_descriptors(chips, tmp_path):
    D.utkface_descriptors(chips, tmp_path / "cache")
    (tmp_path / "utk" / chips.samples[0].member).unlink()
    d = D.utkface_descriptors(scan(tmp_path / "utk"), tmp_path / "cache")
    assert not d.from_cache and len(d.files) == 11


@pytest.mark.parametrize("damage", ["truncate", "network", "shape"])
def test_damaged_or_foreign_cache_is_ignored(chips, tmp_path, caplog, damage):
    first = D.utkface_descriptors(chips, tmp_path / "cache")
    stem = D._stem(tmp_path / "cache", chips.fingerprint, "utkface")
    if damage == "truncate":
        stem.with_suffix(".npy").write_bytes(stem.with_suffix(".npy").read_bytes()[:300])
    elif damage == "network":  # another network's cache under this name cannot be read as this one's
        info = json.loads(stem.with_suffix(".json").read_text())
        stem.with_suffix(".json").write_text(json.dumps({**info, "network": "0" * 64}))
    else:
        np.save(stem.with_suffix(".npy"), np.zeros((12, 64), np.float32))
    with caplog.at_level(logging.WARNING):
        d = D.utkface_descriptors(chips, tmp_path / "cache")
    assert not d.from_cache
    np.testing.assert_array_equal(d.vectors, first.vectors)
    assert any(r.getMessage().startswith(f"ignoring a damaged descriptor cache at {stem} (") for r in caplog.records)


def test_unwritable_cache_still_returns(chips, tmp_path, caplog):
    cache = tmp_path / "cache"
    stem = D._stem(cache, chips.fingerprint, "utkface")
    stem.with_suffix(".npy").mkdir(parents=True)  # a folder where the file goes: the rename fails, even as root
    with caplog.at_level(logging.WARNING):
        d = D.utkface_descriptors(chips, cache)
    assert len(d.files) == 12 and not d.from_cache
    assert [r.getMessage() for r in caplog.records if r.getMessage().startswith("could not write the descriptor")]


def test_describe_resizes_any_size_in_chunks(monkeypatch):
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (5, 200, 200, 3), dtype=np.uint8)
    monkeypatch.setattr(D, "CHUNK", 2)
    seen = []
    out = D.describe(pixels, progress=lambda done, total: seen.append((done, total)))
    np.testing.assert_allclose(out, facerec.descriptors(facerec.to_dlib_size(pixels)), atol=1e-5)
    assert seen == [(2, 5), (4, 5), (5, 5)]


def test_photo_set_uses_the_aligned_faces(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    hopper = Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB")
    hopper.save(folder / "a.jpg", quality=95)
    hopper.resize((hopper.width // 2, hopper.height // 2)).save(folder / "b.jpg", quality=80)
    Image.fromarray(np.full((300, 300, 3), 128, np.uint8)).save(folder / "blank.png")
    (folder / "labels.csv").write_text("path,years,sex\na.jpg,70,F\nb.jpg,70,F\nblank.png,30,M\n")
    ds = read_dataset(folder / "labels.csv", columns="file=path,age=years,gender=sex")
    d = D.photo_descriptors(ds, tmp_path / "cache")
    assert d.files == ["a.jpg", "b.jpg", "blank.png"] and list(d.found) == [True, True, False]
    assert np.isnan(d.vectors[2]).all() and not np.isnan(d.vectors[:2]).any()
    assert facerec.distances(d.vectors[0], d.vectors[1]) < facerec.SAME_PERSON
    again = D.photo_descriptors(ds, tmp_path / "cache")
    assert again.from_cache and list(again.found) == [True, True, False]
    np.testing.assert_array_equal(again.vectors, d.vectors)


def brute_force(query, reference):
    """The nearest reference of each query by a plain loop in float64: what leakage.nearest must equal."""
    index, distance = [], []
    for q in query.astype(np.float64):
        if not np.isfinite(q).all():
            index.append(-1)
            distance.append(np.nan)
            continue
        d = np.linalg.norm(reference.astype(np.float64) - q, axis=1)
        d[~np.isfinite(d)] = np.inf
        index.append(int(d.argmin()))
        distance.append(float(d.min()))
    return np.array(index), np.array(distance)


@pytest.mark.parametrize("blocks", [(7, 11), (1, 1), (1024, 8192)])
def test_nearest_equals_a_brute_force_loop(blocks):
    rng = np.random.default_rng(2)
    reference = rng.normal(0, 0.09, (300, 128)).astype(np.float32)  # dlib-like scale: distances ~0.5-1.4
    query = rng.normal(0, 0.09, (120, 128)).astype(np.float32)
    query[:10] = reference[rng.integers(0, 300, 10)] + rng.normal(0, 0.01, (10, 128))  # near copies
    query[10] = reference[5]  # an exact copy: distance 0
    query[11] = np.nan  # a photo with no face
    reference[7] = np.nan
    got = leakage.nearest(query, reference, *blocks)
    want_index, want_distance = brute_force(query, reference)
    np.testing.assert_array_equal(got.index, want_index)
    np.testing.assert_allclose(got.distance, want_distance, atol=1e-6)
    assert got.index[10] == 5 and got.distance[10] == 0 and got.index[11] == -1


def test_nearest_without_references():
    got = leakage.nearest(np.zeros((3, 128), np.float32), np.full((2, 128), np.nan, np.float32))
    assert list(got.index) == [-1, -1, -1] and np.isnan(got.distance).all()
    assert len(leakage.nearest(np.zeros((0, 128)), np.zeros((4, 128))).index) == 0


def test_leakage_search_imports_no_torch():
    import subprocess
    import sys

    code = "import sys, agegender.evaluation.leakage; print('torch' in sys.modules)"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.stdout.strip() == "False", run.stderr
