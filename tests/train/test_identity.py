"""train.py --split identity: the rule on synthetic descriptor graphs, and its record read back by evaluation."""

import json

import numpy as np
import pytest

from agegender.data.utkface import SPLIT_RULE, Sample, Scan, manifest_splits, split_of, with_splits
from agegender.evaluation.leakage import pairs_within
from agegender.labels import image_key
from agegender.train.config import TrainConfig
from agegender.train.identity import IDENTITY_RULE, MAX_GROUP, file_rule, identity_split, joined_pairs

from ..conftest import ROOT


def _keys(n, offset=0):
    return [f"{20 + i % 50}_{i % 2}_{i % 5}_2017{i + offset:011d}" for i in range(n)]


def _chains(rng, n_groups, size, spread=0.1, dim=128):
    """Groups of ``size`` points, each within ``spread`` of the previous one (a chain), groups far apart."""
    centres = rng.normal(size=(n_groups, dim)) * 10
    rows = []
    for c in centres:
        point = c.copy()
        for _ in range(size):
            step = rng.normal(size=dim)
            point = point + step / np.linalg.norm(step) * spread
            rows.append(point.copy())
    return np.array(rows, np.float32)


def test_pairs_within_matches_brute_force():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 8)).astype(np.float32) * 0.3
    x[17] = np.nan
    limits = rng.uniform(0.1, 0.6, 300)
    i, j, d = pairs_within(x, limits, block=64)
    full = np.sqrt(((x[:, None].astype(np.float64) - x[None].astype(np.float64)) ** 2).sum(-1))
    want = {(a, b) for a in range(300) for b in range(a + 1, 300)
            if np.isfinite(full[a, b]) and full[a, b] < min(limits[a], limits[b])}
    assert set(zip(i.tolist(), j.tolist(), strict=True)) == want
    assert len(want) > 20  # the case is not vacuous
    np.testing.assert_allclose(d, full[i, j], rtol=1e-9)


def test_no_joined_pair_straddles_and_loners_keep_the_file_split():
    rng = np.random.default_rng(1)
    groups = _chains(rng, 40, 5)
    loners = rng.normal(size=(200, 128)).astype(np.float32) * 10
    x = np.vstack([groups, loners])
    keys = _keys(len(x))
    i, j = joined_pairs(x, np.full(len(x), 30.0))
    assert len(i) >= 40 * 4  # every chain link is joined
    result = identity_split(keys, i, j)
    assert all(result.splits[keys[a]] == result.splits[keys[b]] for a, b in zip(i, j, strict=True))
    assert result.groups == 40 and result.largest == 5
    for k in keys[len(groups):]:
        assert result.splits[k] == split_of(k + ".jpg.chip.jpg")
    assert len({result.splits[k] for k in keys[:len(groups)]}) > 1  # groups are spread over the splits


def test_a_group_kept_whole_keeps_its_split_in_a_subset():
    rng = np.random.default_rng(2)
    x = _chains(rng, 30, 4)
    keys = _keys(len(x))
    i, j = joined_pairs(x, np.full(len(x), 40.0))
    whole = identity_split(keys, i, j)
    keep = np.arange(len(x)) < 60  # the first 15 groups, whole
    si, sj = joined_pairs(x[keep], np.full(keep.sum(), 40.0))
    part = identity_split([k for k, kept in zip(keys, keep, strict=True) if kept], si, sj)
    assert all(part.splits[k] == whole.splits[k] for k in part.splits)


def test_a_group_larger_than_the_cap_goes_to_train():
    rng = np.random.default_rng(3)
    x = _chains(rng, 1, MAX_GROUP + 20)
    keys = _keys(len(x))
    result = identity_split(keys, *joined_pairs(x, np.full(len(x), 30.0)))
    assert result.largest == MAX_GROUP + 20
    assert set(result.splits.values()) == {"train"} and result.to_train == MAX_GROUP + 20
    assert file_rule(min(keys)) in ("train", "val", "test")


def test_children_join_only_as_the_same_picture():
    rng = np.random.default_rng(4)
    base = rng.normal(size=(3, 128)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    near = base[0] + 0.2 * rng.normal(size=128).astype(np.float32) / np.sqrt(128)
    x = np.vstack([base[0], near, base[1], base[1] + 0.001, base[2]])
    ages = np.array([5, 5, 30, 30, 30], float)
    face = rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)
    other = rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)
    pixels = np.stack([face, other, face, face, other])
    i, j = joined_pairs(x, ages, pixels)
    assert {(int(a), int(b)) for a, b in zip(i, j, strict=True)} == {(2, 3)}  # two different 5-year-olds: apart
    pixels[1] = face  # the same picture of a child: joined
    i, j = joined_pairs(x, ages, pixels)
    assert {(int(a), int(b)) for a, b in zip(i, j, strict=True)} == {(0, 1), (2, 3)}


def test_evaluation_reads_an_identity_checkpoints_own_split(tmp_path):
    names = [f"{k}.jpg.chip.jpg" for k in _keys(6)]
    samples = [Sample(n, n, 10, 30, 0, 0) for n in names]
    sc = Scan(tmp_path, "folder", samples)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    meta = json.loads((ROOT / "checkpoints" / "dlib-resnet29-utkface" / "meta.json").read_text())
    (ckpt / "meta.json").write_text(json.dumps({**meta, "split_rule": SPLIT_RULE}))
    (ckpt / "manifest.csv").write_text("file,split,age,gender,race\n" +
                                       "".join(f"{n},test,30,0,0\n" for n in names))
    assert manifest_splits(ckpt) is None  # the file rule: the hash decides, as before
    (ckpt / "meta.json").write_text(json.dumps({**meta, "split_rule": IDENTITY_RULE}))
    splits = manifest_splits(ckpt)
    assert [s.split for s in with_splits(sc, splits).samples] == ["test"] * 6
    assert [s.split for s in sc.samples] == [split_of(n) for n in names]
    assert with_splits(sc, splits).fingerprint == sc.fingerprint
    assert image_key(names[0]) == _keys(1)[0]


def test_the_split_flag_is_checked():
    with pytest.raises(ValueError, match="--split must be file or identity"):
        TrainConfig(data="x", out="y", split="person").validate()


def test_a_run_on_the_identity_split_keeps_copies_together_and_records_the_rule(tiny_data, tmp_path, monkeypatch):
    """The run's wiring. Generated noise chips all look alike to dlib (one group), so their descriptors are
    stood in for: far apart, but a copy's is its original's (the real network is checked in tests/models)."""
    import shutil

    import pandas as pd

    from agegender.evaluation.descriptors import Descriptors
    from agegender.train import identity
    from agegender.train.loop import train

    from ..conftest import tiny_config

    data = tmp_path / "UTKFace"
    shutil.copytree(tiny_data, data)
    originals = sorted(p.name for p in data.iterdir())[:12]
    copies = {}
    for k, name in enumerate(originals):  # the same picture uploaded again under another name
        copy = name.replace("_2017010915", f"_2018{k:02d}0915")
        shutil.copy(data / name, data / copy)
        copies[name] = copy

    def descriptors(scan_, cache_dir=None):
        files = sorted(s.member for s in scan_.samples)
        seed = {f: int(image_key(copies.get(f, f))[-7:]) for f in files}  # a copy has its original's key digits
        seed.update({c: seed[o] for o, c in copies.items()})
        vectors = np.stack([np.random.default_rng(seed[f]).normal(size=128) for f in files]).astype(np.float32)
        return Descriptors(files, vectors, np.ones(len(files), bool))

    monkeypatch.setattr(identity, "utkface_descriptors", descriptors)
    out = train(tiny_config(data, tmp_path / "id", split="identity"))
    meta = json.loads((out / "meta.json").read_text())
    assert meta["split_rule"] == IDENTITY_RULE
    assert meta["identity_split"]["pairs"] == len(copies)
    split = dict(pd.read_csv(out / "manifest.csv").set_index("file")["split"])
    assert all(split[a] == split[b] for a, b in copies.items())
    assert any(split_of(a) != split_of(b) for a, b in copies.items())  # the file split would part some pairs
    assert manifest_splits(out) == split
