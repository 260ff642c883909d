"""A Source, a checkpoint's own held-out split or a registered evaluation set, answers every question whose answer
differs between the two kinds (label, predictions, review file, stamp files, faces, command line), and the pages
and the review ask it instead of branching on the kind themselves."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from agegender.data.utkface import scan
from agegender.evaluation import results, sources
from agegender.meta import META
from agegender.predictions import ERR_NO_PREDICTIONS, OWN_SPLITS, load_predictions
from agegender.review import verdicts

from ..conftest import ROOT
from .test_evalset import fairface_like


@pytest.fixture(scope="module")
def crop_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("crops")


@pytest.fixture(autouse=True)
def places(tmp_path, crop_cache, monkeypatch) -> Path:
    monkeypatch.setenv("AGEGENDER_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("AGEGENDER_CACHE", str(crop_cache))
    monkeypatch.setenv("AGEGENDER_FAIRFACE", str(tmp_path / "no-fairface-here"))  # no seeding
    monkeypatch.delenv(sources.IN_CHECKPOINT_ENV, raising=False)
    return tmp_path / "results"


@pytest.fixture
def ckpt(tiny_checkpoint, tmp_path) -> Path:
    out = tmp_path / "ck" / "tiny"
    shutil.copytree(tiny_checkpoint, out)
    return out


@pytest.fixture
def ff(tmp_path) -> str:
    fairface_like(tmp_path / "FairFace")  # six faces, two photos without one, one corrupt file
    return results.register("ff", tmp_path / "FairFace").name


def no_data() -> str:
    raise AssertionError("a set's faces never ask for the UTKFace folder")


def test_an_own_split_is_the_checkpoints_file_and_its_reviews_are_kept_per_checkpoint(ckpt, places):
    val, test = sources.source(ckpt, "val"), sources.source(ckpt, "test")
    assert (val.label, test.label) == ("UTKFace val", "UTKFace test")
    assert val.predictions_path() == ckpt / "predictions-val.csv"
    pd.testing.assert_frame_equal(val.load(), load_predictions(ckpt, "val"))
    assert val.stamp_files() == (ckpt / META, ckpt / "predictions-val.csv")
    assert val.cli_args() == f"--checkpoint {ckpt} --split val"
    key = sources.checkpoint_key(ckpt)
    assert val.review_path() == places / "reviews" / key / "label-review-val.csv"
    assert val.review_path(in_checkpoint=True) == val.earlier_review_path() == ckpt / "label-review-val.csv"
    assert verdicts.review_path(ckpt, "val") == val.review_path()  # the review asks the Source
    (ckpt / "predictions-test.csv").unlink()
    assert test.predictions_path() is None
    with pytest.raises(ValueError) as e:  # the message names the command that writes it
        test.load()
    assert str(e.value) == ERR_NO_PREDICTIONS.format(path=ckpt, split="test")


def test_a_set_is_the_results_cache_and_its_reviews_are_the_sets(ckpt, ff, places):
    src = sources.source(ckpt, ff)
    assert src.label == "ff" and src.cli_args() == sources.SET_CLI
    assert src.stamp_files() == (ckpt / META, results.set_folder("ff"))
    assert src.predictions_path() is None
    with pytest.raises(results.ResultsError) as e:
        src.load()
    assert str(e.value) == results.ERR_NOT_EVALUATED.format(checkpoint="tiny", source="ff")
    shared = results.set_folder("ff") / "label-review-ff.csv"
    assert src.review_path() == src.review_path(in_checkpoint=True) == shared  # a verdict is on the set's label
    assert src.earlier_review_path() is None and verdicts.review_path(ckpt, ff) == shared
    res = results.evaluate(ckpt, ff)
    assert src.predictions_path() == res.predictions and res.predictions.parent == results.set_folder("ff")
    pd.testing.assert_frame_equal(src.load(), load_predictions(path=res.predictions))


def test_an_unknown_set_says_so(ckpt):
    with pytest.raises(results.ResultsError) as e:
        sources.source(ckpt, "nope").predictions_path()
    assert str(e.value) == results.ERR_UNKNOWN.format(name="nope", known="none")


def test_the_sources_are_the_own_splits_then_the_sets_a_caller_keeps(ckpt, ff, tmp_path):
    fairface_like(tmp_path / "other")
    results.register("other", tmp_path / "other")
    assert [s.name for s in sources.sources(ckpt)] == [*OWN_SPLITS, "ff", "other"]
    assert sources.names(lambda s: s.name != "ff") == [*OWN_SPLITS, "other"]
    assert [s.label for s in sources.sources(ckpt)] == ["UTKFace val", "UTKFace test", "ff", "other"]


def test_an_own_splits_faces_are_utkface_chips_of_the_data_asked_for(ckpt, tiny_data):
    asked = []
    faces = sources.source(ckpt, "val").faces(lambda: asked.append(1) or str(tiny_data))
    assert asked == [1] and faces.where == str(tiny_data) and faces.stamp_files() == (tiny_data,)
    loaded = faces.load(32)
    members = [s.member for s in scan(tiny_data).samples[:3]]
    chips = faces.chips(loaded, [*members, "not/there.jpg"])
    assert list(chips) == members and all(isinstance(c, Image.Image) for c in chips.values())
    kept, pixels = faces.pixels(loaded, members, 32)
    assert sorted(kept) == sorted(members) and pixels.shape == (3, 32, 32, 3) and pixels.dtype == np.uint8


def test_a_sets_faces_are_its_aligned_crops_without_asking_for_utkface(ckpt, ff):
    results.evaluate(ckpt, ff)  # detects and caches the crops
    faces = sources.source(ckpt, ff).faces(no_data)
    assert faces.where == "ff" and faces.stamp_files() == (results.set_folder("ff"),)
    loaded = faces.load(32)
    files = [f"val/{i}.jpg" for i in range(9)]
    found = [f for f, hit in zip(loaded.files, loaded.found, strict=True) if hit]
    chips = faces.chips(loaded, files)
    assert list(chips) == found and len(found) >= 1 and "val/6.jpg" not in chips  # a blank photo has no face
    kept, pixels = faces.pixels(loaded, files, 32)
    assert kept == found and pixels.shape == (len(found), 32, 32, 3)
    np.testing.assert_array_equal(np.asarray(chips[found[0]]), pixels[0])


# ---- no page or review module branches on the kind ------------------------------------------------------

BRANCH = re.compile(r"\bin\s+(?:\w+\.)?OWN_SPLITS\b")  # `x in OWN_SPLITS`, `not in caches.OWN_SPLITS`, ...
ASKERS = ("dashboard/pages/*.py", "dashboard/*.py", "agegender/review/*.py")
# The audit command's --split names UTKFace splits (train, val, test, all), not a source: it picks the images
# to score by it, so it may ask which of them are a checkpoint's own.
SPLIT_ARGUMENT = {"agegender/review/audit_run.py"}


def kind_branches() -> dict[str, int]:
    found = {}
    for pattern in ASKERS:
        for path in sorted(ROOT.glob(pattern)):
            n = len(BRANCH.findall(path.read_text(encoding="utf-8")))
            if n and path.relative_to(ROOT).as_posix() not in SPLIT_ARGUMENT:
                found[path.relative_to(ROOT).as_posix()] = n
    return found


def test_no_page_and_no_review_module_branches_on_the_kind():
    assert kind_branches() == {}


def test_the_branch_search_is_not_blind():
    for line in ("if source in caches.OWN_SPLITS:", "if s not in OWN_SPLITS:", "x = a if s in results.OWN_SPLITS"):
        assert BRANCH.search(line), line
    assert not BRANCH.search("from agegender.predictions import OWN_SPLITS")
    assert not BRANCH.search("names = [*OWN_SPLITS, *sets]")
