"""A checkpoint's pooled trunk features through their cache, and python -m agegender.embed
(agegender.evaluation.embed).

The checkpoints are generated here (random weights saved and loaded through the one loader), not trained: what
is checked is that the features are the heads' input, the cache and the command's rows, not what a model learnt.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
import torch

from agegender.data.utkface import cached_images, scan
from agegender.evaluation import embed as E
from agegender.evaluation.evaluate import evaluate_into_checkpoint
from agegender.evaluation.sources import source
from agegender.meta import WEIGHTS, write_meta
from agegender.models.checkpoint import load_checkpoint, save_weights
from agegender.models.inference import predict_checkpoint
from agegender.models.model import create_model
from agegender.models.preprocess import preprocess, to_batch

from ..conftest import make_dataset


def generated_checkpoint(folder, arch="resnet18", cache_size=40, input_size=32, seed=0):
    torch.manual_seed(seed)
    folder.mkdir(parents=True)
    digest = save_weights(create_model(arch), folder / WEIGHTS)
    write_meta(folder, {"arch": arch, "age_offset": 35.0, "age_scale": 20.0, "labels": {}, "weights_sha256": digest,
                        "preprocess": {"cache_size": cache_size, "input_size": input_size,
                                       "mean": [0.5, 0.45, 0.4], "std": [0.25, 0.25, 0.25]}})
    return folder


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return load_checkpoint(generated_checkpoint(tmp_path_factory.mktemp("emb") / "gen"))


def faces(n=6, size=40, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


@pytest.mark.parametrize("arch", ["resnet18", "dlib-resnet29"])
def test_features_are_what_the_heads_read(arch, tmp_path):
    c = load_checkpoint(generated_checkpoint(tmp_path / arch, arch))
    px = faces()
    seen = []
    hook = c.model.gender_head.register_forward_hook(lambda m, args, out: seen.append(args[0].detach().clone()))
    try:
        with torch.inference_mode():
            c.model(preprocess(to_batch(px), c.preprocess))
    finally:
        hook.remove()
    np.testing.assert_allclose(E.features(c, px, tta=False), seen[0].numpy(), rtol=1e-5, atol=1e-6)
    # with the mirror: the gender head is linear, so the mean features give evaluate's averaged P(female)
    f = torch.from_numpy(E.features(c, px, tta=True, batch_size=4))
    with torch.inference_mode():
        p = torch.sigmoid(c.model.gender_head(f).squeeze(1)).numpy()
    np.testing.assert_allclose(p, predict_checkpoint(c, px, tta=True)[1], atol=1e-5)
    assert not c.model.gender_head._forward_hooks  # nothing left on the model


def test_rows_pick_faces_in_the_order_asked(ckpt):
    px = faces(8)
    np.testing.assert_allclose(E.features(ckpt, px, np.array([5, 1]), tta=False),
                               E.features(ckpt, px[[5, 1]], tta=False), rtol=1e-5, atol=1e-6)


def test_pixel_measures_know_dark_grey_and_colour():
    px = np.zeros((3, 40, 40, 3), np.uint8)
    px[1] = 200
    px[2, ..., 0] = 200  # red: bright enough, but not grey
    m = E.pixel_measures(px)
    assert m["brightness"][0] == 0 and m["brightness"][1] == 200
    assert list(m["grayscale"]) == [True, True, False]
    assert m["sharpness"][0] == 0


def test_the_cache_returns_the_same_features_and_a_damaged_one_is_rebuilt(ckpt, tmp_path, caplog):
    px, files, rows = faces(5), [f"f{i}.jpg" for i in range(4)], np.array([4, 0, 2, 3])
    first = E.cached_features(ckpt, "stamp", files, px, rows, cache_dir=tmp_path)
    again = E.cached_features(ckpt, "stamp", files, px, rows, cache_dir=tmp_path)
    assert not first.from_cache and again.from_cache
    np.testing.assert_array_equal(again.vectors, first.vectors)
    np.testing.assert_array_equal(again.measures["brightness"], first.measures["brightness"])
    assert not E.cached_features(ckpt, "another stamp", files, px, rows, cache_dir=tmp_path).from_cache
    npy = next(tmp_path.glob("emb-*.npy"))
    stem = E.cache_stem(tmp_path, ckpt.meta["weights_sha256"], "stamp", True, first.vectors.shape[1])
    assert stem.with_suffix(".npy") in set(tmp_path.glob("emb-*.npy")), npy
    stem.with_suffix(".npy").write_bytes(stem.with_suffix(".npy").read_bytes()[:100])  # cut short
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=E.__name__):
        rebuilt = E.cached_features(ckpt, "stamp", files, px, rows, cache_dir=tmp_path)
    damaged = [r for r in caplog.records if "damaged embedding cache" in r.getMessage()]
    assert len(damaged) == 1 and not rebuilt.from_cache
    np.testing.assert_array_equal(rebuilt.vectors, first.vectors)
    assert E.cached_features(ckpt, "stamp", files, px, rows, cache_dir=tmp_path).from_cache


def test_a_cache_for_other_faces_is_not_read(ckpt, tmp_path):
    px = faces(4)
    E.cached_features(ckpt, "s", ["a", "b"], px, np.array([0, 1]), cache_dir=tmp_path)
    other = E.cached_features(ckpt, "s", ["a", "c"], px, np.array([0, 2]), cache_dir=tmp_path)
    assert not other.from_cache


def test_projection_is_pca_and_the_same_every_run():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 5)) * [10, 3, 1, 1, 1]
    xy = E.project(x)
    assert abs(np.corrcoef(xy[:, 0], x[:, 0])[0, 1]) > 0.99 and abs(np.corrcoef(xy[:, 1], x[:, 1])[0, 1]) > 0.95
    np.testing.assert_array_equal(E.project(x), xy)
    np.testing.assert_allclose(E.project(-x), -xy, atol=1e-9)  # the axes signed by their loadings, not by SVD


def test_the_command_writes_one_row_per_face_with_its_predictions(ckpt, tmp_path, capsys):
    make_dataset(tmp_path / "utk", n=20, size=40)
    out = tmp_path / "emb.parquet"
    args = ["--checkpoint", str(ckpt.path), "--data", str(tmp_path / "utk"), "--split", "all", "--out", str(out),
            "--cache-dir", str(tmp_path / "cache")]
    assert E.main(args) == 0
    frame = pd.read_parquet(out)
    assert len(frame) == 20 and frame["file"].is_unique
    for c in ("file", "x", "y", "age", "pred_age", "p_female", "race", "brightness", "sharpness", E.FEATURES):
        assert c in frame, c
    f = torch.from_numpy(np.stack(frame[E.FEATURES].to_numpy()).astype(np.float32))
    with torch.inference_mode():
        p = torch.sigmoid(ckpt.model.gender_head(f).squeeze(1)).numpy()
    np.testing.assert_allclose(p, frame["p_female"], atol=2e-4)  # predictions rounded to 4 places
    assert E.main(args) == 0 and "from the cache" in capsys.readouterr().out


def test_the_command_refuses_predictions_without_its_faces(ckpt, tmp_path, capsys):
    make_dataset(tmp_path / "utk", n=6, size=40)
    pred = tmp_path / "p.csv"
    pd.DataFrame({"file": ["x.jpg"], "age": [3], "gender": ["male"], "pred_age": [3.0], "p_female": [0.1]}
                 ).to_csv(pred, index=False)
    assert E.main(["--checkpoint", str(ckpt.path), "--data", str(tmp_path / "utk"), "--split", "all",
                   "--predictions", str(pred), "--out", str(tmp_path / "e.parquet"),
                   "--cache-dir", str(tmp_path / "cache")]) == 2
    assert "lack 6 of the faces" in capsys.readouterr().err


def test_an_own_split_through_its_source(tmp_path):
    folder = generated_checkpoint(tmp_path / "ck", seed=1)
    make_dataset(tmp_path / "utk", n=40, size=40)
    sc = scan(tmp_path / "utk")
    evaluate_into_checkpoint(folder, cached_images(sc, 40, tmp_path / "cache"), sc.fingerprint)
    c = load_checkpoint(folder)
    src = source(folder, "test")
    frame = E.source_embeddings(c, src, lambda: str(tmp_path / "utk"), tmp_path / "cache")
    table = src.load()
    assert list(frame["file"]) == list(table["file"]) and len(frame) > 0
    np.testing.assert_allclose(frame["p_female"], table["p_female"])
    assert np.isfinite(frame[["x", "y"]].to_numpy()).all()
    assert E.source_embeddings(c, src, lambda: str(tmp_path / "utk"), tmp_path / "cache")[
        "x"].equals(frame["x"])
