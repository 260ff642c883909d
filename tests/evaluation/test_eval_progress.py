"""An evaluation's progress covers both of its stages, through the one callback the library calls: the faces
found (photos) or read (chips), then the model's pass over the found faces in batches. Before, the callback
heard detection only, so with cached crops the dashboard's bar stood at "563 of 563" through the model pass."""

from __future__ import annotations

import numpy as np
import pytest

from agegender.data.datasets import read_dataset
from agegender.evaluation import evaluate as evaluate_mod
from agegender.evaluation import results
from agegender.evaluation.evalset import FINDING, READING, SCORING, first_stage, overall_fraction
from agegender.evaluation.evaluate import evaluate_dataset
from agegender.models.checkpoint import load_checkpoint

from ..conftest import make_dataset
from .test_evalset import fairface_like


def stages(calls: list[tuple[str, int, int]]) -> list[str]:
    """The stages in the order they were first heard."""
    return list(dict.fromkeys(stage for stage, _, _ in calls))


def assert_stage_reaches_its_total(calls, stage: str, total: int) -> None:
    seen = [(done, t) for s, done, t in calls if s == stage]
    assert seen and seen[-1] == (total, total)
    assert all(t == total for _, t in seen)
    assert all(a <= b for (a, _), (b, _) in zip(seen, seen[1:], strict=False))


@pytest.fixture
def chips(tmp_path):
    folder = tmp_path / "chips"
    make_dataset(folder, n=20, size=40, seed=3)
    return read_dataset(folder)


def test_chips_are_read_then_scored_in_batches(tiny_checkpoint, chips, tmp_path, monkeypatch):
    monkeypatch.setattr(evaluate_mod, "SCORE_BATCH", 8)
    ckpt = load_checkpoint(tiny_checkpoint)
    calls = []
    df, _ = evaluate_dataset(ckpt, chips, cache_dir=tmp_path / "cache", progress=lambda *a: calls.append(a))
    assert stages(calls) == [READING, SCORING] and first_stage(chips.geometry) == READING
    assert_stage_reaches_its_total(calls, READING, 20)
    assert_stage_reaches_its_total(calls, SCORING, 20)
    assert [done for s, done, _ in calls if s == SCORING] == [8, 16, 20]  # one report per batch
    # from the crop cache: the first stage is done at once, the model pass is still reported
    again = []
    evaluate_dataset(ckpt, chips, cache_dir=tmp_path / "cache", progress=lambda *a: again.append(a))
    assert again[0] == (READING, 20, 20) and stages(again) == [READING, SCORING]
    assert [done for s, done, _ in again if s == SCORING] == [8, 16, 20]
    # batches of 8 score as the one batch did
    monkeypatch.setattr(evaluate_mod, "SCORE_BATCH", 256)
    whole, _ = evaluate_dataset(ckpt, chips, cache_dir=tmp_path / "cache")
    np.testing.assert_allclose(df["p_female"], whole["p_female"], atol=2e-4)
    np.testing.assert_allclose(df["pred_age"], whole["pred_age"], atol=0.02)


def test_photos_through_the_results_cache_hear_finding_then_scoring(tiny_checkpoint, tmp_path, monkeypatch):
    """What the Evaluation sets page calls: nine FairFace-like photos, six with a face, one unreadable."""
    monkeypatch.setenv("AGEGENDER_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("AGEGENDER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(evaluate_mod, "SCORE_BATCH", 4)
    fairface_like(tmp_path / "ff")
    results.register("ff", tmp_path / "ff")
    calls = []
    res = results.evaluate(tiny_checkpoint, "ff", progress=lambda *a: calls.append(a))
    assert stages(calls) == [FINDING, SCORING]
    assert_stage_reaches_its_total(calls, FINDING, 9)  # every record, the unreadable one too
    assert_stage_reaches_its_total(calls, SCORING, res.metrics["n_found"])
    assert res.metrics["n_found"] == 6 and [done for s, done, _ in calls if s == SCORING] == [4, 6]
    fractions = [overall_fraction(*c) for c in calls]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and fractions[0] <= 0.5


def test_no_face_found_still_ends_the_scoring_stage(tiny_checkpoint, chips, tmp_path):
    ckpt = load_checkpoint(tiny_checkpoint)
    crops = evaluate_mod.dataset_crops(chips, ckpt.preprocess.cache_size, tmp_path)
    crops.found[:] = False
    calls = []
    df = evaluate_mod.dataset_frame(ckpt, chips, crops, progress=lambda *a: calls.append(a))
    assert calls == [(SCORING, 0, 0)] and not df["found"].any() and df["pred_age"].isna().all()
    assert overall_fraction(*calls[-1]) == 1.0
