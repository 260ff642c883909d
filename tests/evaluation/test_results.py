"""Evaluation sets and the results cache: a registry of named datasets, results computed once and kept
outside the checkpoint, and the cross-dataset table checked against the cached CSVs with pandas."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from agegender.data.datasets import ERR_NO_MAPPING, ERR_NOT_FOUND
from agegender.data.utkface import DatasetError, default_cache_dir
from agegender.evaluation import crossdata, results, sources
from agegender.evaluation import evaluate as evaluate_module
from agegender.fairness.groups import GroupReport
from agegender.labels import FAIRFACE_BINS, bin_label
from agegender.predictions import load_predictions

from ..conftest import ROOT, make_dataset
from ..fairness.test_fairness import fake_predictions
from .test_evalset import blank, fairface_like

FEMALE = "female"


@pytest.fixture(scope="module")
def crop_cache(tmp_path_factory) -> Path:
    """One crop cache for the module: faces are detected once, results are what each test keeps apart."""
    return tmp_path_factory.mktemp("crops")


@pytest.fixture(autouse=True)
def places(tmp_path, crop_cache, monkeypatch) -> Path:
    monkeypatch.setenv("AGEGENDER_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("AGEGENDER_CACHE", str(crop_cache))
    monkeypatch.setenv("AGEGENDER_FAIRFACE", str(tmp_path / "no-fairface-here"))  # no seeding unless a test asks
    return tmp_path / "results"


@pytest.fixture(scope="module")
def ff_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ff") / "FairFace"
    fairface_like(folder)  # nine labelled photos: six faces, two without, one corrupt file
    return folder


@pytest.fixture
def ckpt(tiny_checkpoint, tmp_path) -> Path:
    """A copy of the tiny checkpoint whose predictions-val.csv is big enough to have groups of 30."""
    out = tmp_path / "ck" / "tiny"
    shutil.copytree(tiny_checkpoint, out)
    fake_predictions(900, seed=3).assign(split="val").to_csv(out / "predictions-val.csv", index=False)
    return out


def listing(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture
def counted(monkeypatch) -> list:
    """Each call of evaluate_dataset, i.e. each time a model really scores a set."""
    calls = []
    real = evaluate_module.evaluate_dataset

    def spy(*args, **kw):
        calls.append(args[1].fingerprint)
        return real(*args, **kw)

    monkeypatch.setattr(evaluate_module, "evaluate_dataset", spy)
    return calls


# ---- the registry ----------------------------------------------------------------------------------------

def test_registry_round_trip(ff_folder, tmp_path, places, monkeypatch):
    chips = tmp_path / "UTK"
    make_dataset(chips, n=12)
    monkeypatch.chdir(tmp_path)  # a relative path is kept resolved: the dashboard's folder does not matter
    ff = results.register("ff", ff_folder)
    utk = results.register("utk.small", "UTK")
    assert (ff.format, ff.geometry, ff.images, ff.skipped) == ("fairface", "photos", 9, 0)
    assert ff.labels == str(ff_folder / "fairface_label_val.csv") and ff.path == str(ff_folder)
    assert (utk.format, utk.geometry, utk.images, utk.labels, utk.path) == ("utkface", "chips", 12, None, str(chips))
    assert results.list_sets() == [ff, utk]
    assert json.loads((places / results.REGISTRY).read_text())["sets"][0]["name"] == "ff"
    assert results.get_set("utk.small") == utk
    assert sources.names() == ["val", "test", "ff", "utk.small"]
    assert [sources.label(s) for s in sources.names()] == ["UTKFace val", "UTKFace test", "ff", "utk.small"]
    results.remove("ff")
    assert results.list_sets() == [utk]
    with pytest.raises(results.ResultsError) as e:
        results.get_set("ff")
    assert str(e.value) == results.ERR_UNKNOWN.format(name="ff", known="utk.small")


def test_a_csv_set_keeps_its_column_mapping(tmp_path):
    folder = tmp_path / "mine"
    names = make_dataset(folder, n=6, chip=False)
    pd.DataFrame({"path": names, "years": [20, 30, 40, 50, 60, 70], "sex": list("MFMFMF"), "site": list("aabbcc")}
                 ).to_csv(folder / "labels.csv", index=False)
    es = results.register("mine", folder / "labels.csv", columns="file=path,age=years,gender=sex,groups=site,"
                                                                  "geometry=chips")
    assert (es.format, es.geometry, es.images) == ("csv", "chips", 6)
    assert results.get_set("mine").read().group_columns == ("site",)


@pytest.mark.parametrize("name", ["", " ", "../up", "a/b", "x y", ".hidden", "-dash", "a" * 65, "café", "a\\b", "end."])
def test_unsafe_names_are_refused(ff_folder, name):
    with pytest.raises(results.ResultsError) as e:
        results.register(name, ff_folder)
    assert str(e.value) == results.ERR_NAME.format(name=name)
    assert results.list_sets() == []


@pytest.mark.parametrize("name", ["val", "Test", "ALL"])
def test_the_checkpoints_own_split_names_are_reserved(ff_folder, name):
    with pytest.raises(results.ResultsError) as e:
        results.register(name, ff_folder)
    assert str(e.value) == results.ERR_RESERVED.format(name=name)


def test_names_are_unique_whatever_their_case(ff_folder):
    results.register("ff", ff_folder)
    for name in ("ff", "FF"):
        with pytest.raises(results.ResultsError) as e:
            results.register(name, ff_folder)
        assert str(e.value) == results.ERR_EXISTS.format(name="ff", path=ff_folder)


def test_a_dataset_error_comes_back_as_it_is(ff_folder, tmp_path):
    with pytest.raises(DatasetError) as e:
        results.register("gone", tmp_path / "nowhere")
    assert str(e.value) == ERR_NOT_FOUND.format(path=tmp_path / "nowhere")
    other = tmp_path / "other.csv"
    other.write_text("img,years,sex\n0.jpg,20,M\n")
    with pytest.raises(DatasetError) as e:
        results.register("other", other)
    assert str(e.value) == ERR_NO_MAPPING.format(path=other)
    assert results.list_sets() == []


def test_a_damaged_registry_is_named(places):
    places.mkdir(parents=True)
    (places / results.REGISTRY).write_text("{not json")
    with pytest.raises(results.ResultsError) as e:
        results.list_sets()
    assert str(e.value).startswith(f"cannot read the evaluation set registry {places / results.REGISTRY} (")
    assert str(e.value).endswith("): fix the file or delete it")


def test_the_fairface_sample_is_registered_once(ff_folder, monkeypatch):
    monkeypatch.setenv("AGEGENDER_FAIRFACE", str(ff_folder))
    assert [s.name for s in results.list_sets()] == [results.FAIRFACE_SAMPLE]
    results.remove(results.FAIRFACE_SAMPLE)
    assert results.list_sets() == []  # removed stays removed


def test_no_sample_no_set():
    assert results.list_sets() == [] and results.registry_path().is_file()


def test_the_results_folder_defaults_under_the_cache(monkeypatch):
    monkeypatch.delenv("AGEGENDER_RESULTS")
    assert results.results_dir() == default_cache_dir() / "results"


def test_importing_results_loads_no_torch():
    code = ("import sys, agegender.evaluation.results; "
            "assert 'torch' not in sys.modules, sorted(k for k in sys.modules if 'torch' in k)")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)


# ---- results ---------------------------------------------------------------------------------------------

def test_a_result_is_computed_once_kept_outside_the_checkpoint_and_reused(ckpt, ff_folder, places, counted):
    before = listing(ckpt)
    results.register("ff", ff_folder)
    assert results.lookup(ckpt, "ff") is None and sources.source(ckpt, "ff").predictions_path() is None
    seen = []
    first = results.evaluate(ckpt, "ff", progress=lambda *a: seen.append(a))
    assert not first.reused and len(counted) == 1 and seen[-1] == ("Scoring faces", 6, 6)
    assert first.predictions.parent == places / results.SETS_FOLDER / "ff" and first.saved_to is None
    assert (first.metrics["n"], first.metrics["n_found"], first.metrics["unreadable"]) == (8, 6, 1)
    assert first.metrics["set"] == "ff" and first.metrics["tta"] is True and first.problem == ""
    stamp = first.predictions.stat().st_mtime_ns
    second = results.evaluate(ckpt, "ff")
    assert second.reused and len(counted) == 1  # not scored again
    assert second.predictions == first.predictions and second.predictions.stat().st_mtime_ns == stamp
    assert second.metrics == first.metrics
    assert sources.source(ckpt, "ff").predictions_path() == first.predictions
    assert results.lookup(ckpt, "ff").metrics == first.metrics
    pd.testing.assert_frame_equal(sources.source(ckpt, "ff").load(), load_predictions(path=first.predictions))
    assert listing(ckpt) == before  # never written into the checkpoint folder unless asked
    results.evaluate(ckpt, "ff", tta=False)  # another key: scored again
    assert len(counted) == 2


def test_saved_into_the_checkpoint_only_when_asked(ckpt, ff_folder, counted):
    results.register("ff", ff_folder)
    res = results.evaluate(ckpt, "ff", save_into_checkpoint=True)
    assert res.saved_to == ckpt / "predictions-ff.csv"
    assert res.saved_to.read_bytes() == res.predictions.read_bytes()
    again = results.evaluate(ckpt, "ff", save_into_checkpoint=True)  # from the cache, saved again
    assert again.reused and again.saved_to.read_bytes() == res.predictions.read_bytes() and len(counted) == 1


def test_an_edited_labels_file_is_a_new_dataset(ckpt, ff_folder, tmp_path):
    folder = tmp_path / "ff-copy"
    shutil.copytree(ff_folder, folder)
    results.register("ff", folder)
    results.evaluate(ckpt, "ff")
    labels = folder / "fairface_label_val.csv"
    pd.read_csv(labels).iloc[:-1].to_csv(labels, index=False)  # one row fewer: other figures
    assert results.lookup(ckpt, "ff") is None  # the old result is not served for the new labels
    with pytest.raises(results.ResultsError) as e:
        sources.source(ckpt, "ff").load()
    assert str(e.value) == results.ERR_NOT_EVALUATED.format(checkpoint="tiny", source="ff")


def test_no_face_at_all_is_a_result_with_its_problem(ckpt, tmp_path):
    folder = tmp_path / "walls"
    (folder / "val").mkdir(parents=True)
    for i in range(2):
        blank(seed=i).save(folder / "val" / f"{i}.jpg")
    pd.DataFrame({"file": ["val/0.jpg", "val/1.jpg"], "age": ["20-29", "30-39"], "gender": ["Male", "Female"],
                  "race": ["White", "Black"]}).to_csv(folder / "labels.csv", index=False)
    results.register("walls", folder)
    res = results.evaluate(ckpt, "walls")
    assert res.metrics["n_found"] == 0 and res.problem == results.NO_FACE.format(n=2, name="walls")


def test_the_results_folder_may_not_lie_in_the_checkpoint(ckpt, ff_folder, monkeypatch):
    results.register("ff", ff_folder)
    shutil.copy(results.registry_path(), ckpt / "evalsets.json")
    monkeypatch.setenv("AGEGENDER_RESULTS", str(ckpt))
    with pytest.raises(results.ResultsError) as e:
        results.evaluate(ckpt, "ff")
    assert str(e.value) == results.ERR_INSIDE_CHECKPOINT.format(results=ckpt.resolve(), checkpoint=ckpt.resolve())


def test_a_predictions_picker_gets_the_checkpoints_own_files(ckpt):
    assert sources.source(ckpt, "val").predictions_path() == ckpt / "predictions-val.csv"
    (ckpt / "predictions-test.csv").unlink()
    assert sources.source(ckpt, "test").predictions_path() is None
    with pytest.raises(results.ResultsError) as e:
        sources.source(ckpt, "nope").predictions_path()
    assert str(e.value) == results.ERR_UNKNOWN.format(name="nope", known="none")


# ---- the cross-dataset view ------------------------------------------------------------------------------

def independent(path: Path, grouping: str, min_count: int) -> dict:
    """A cell's figures from its CSV alone, with pandas."""
    df = pd.read_csv(path, keep_default_na=False, na_values=[""])
    found = df["found"].astype(str).str.lower() == "true" if "found" in df else pd.Series(True, index=df.index)
    f = df[found].assign(right=lambda d: (d["p_female"] >= 0.5) == (d["gender"] == FEMALE),
                         abs_err=lambda d: (d["pred_age"] - d["age"]).abs())
    order = [bin_label(b) for b in FAIRFACE_BINS]
    if "age_bin" in f:
        f = f.assign(in_bin=f["pred_age_bin"].map(order.index) == f["age_bin"].map(order.index))
    out = {"n": len(df), "n_found": len(f), "found_rate": len(f) / len(df), "gender_accuracy": f["right"].mean(),
           "age_mae": f["abs_err"].mean() if f["age"].notna().any() else np.nan}
    if "in_bin" in f:
        out["age_bin_accuracy"] = f["in_bin"].mean()
    groups = f.groupby(grouping)
    big = groups.size()[groups.size() >= min_count].index
    acc = groups["right"].mean()[big]
    out.update({"gender_accuracy_gap": acc.max() - acc.min(), "gender_accuracy_best": acc.idxmax(),
                "gender_accuracy_worst": acc.idxmin()})
    if f["age"].notna().any():
        mae = groups["abs_err"].mean()[big]
        out.update({"age_mae_gap": mae.max() - mae.min(), "age_mae_best": mae.idxmin(), "age_mae_worst": mae.idxmax()})
    return out


def test_cross_dataset_matches_the_cached_csvs_and_reports_missing_cells(ckpt, ff_folder, tmp_path, counted):
    other = tmp_path / "ck" / "other"
    shutil.copytree(ckpt, other)
    (other / "predictions-test.csv").unlink()  # never evaluated on its test split
    results.register("ff", ff_folder)
    res = results.evaluate(ckpt, "ff")
    assert results.lookup(other, "ff").predictions == res.predictions  # the same weights share their results
    meta = json.loads((other / "meta.json").read_text())
    (other / "meta.json").write_text(json.dumps({**meta, "weights_sha256": "0" * 64}))  # as if retrained
    files = sorted(results.results_dir().rglob("*"))
    table = crossdata.cross_dataset([ckpt, other], ["val", "test", "ff"], min_count=1, n_boot=200)
    assert len(counted) == 1 and sorted(results.results_dir().rglob("*")) == files  # nothing computed
    assert list(table.columns) == list(crossdata.CROSS_COLUMNS)
    assert list(zip(table["checkpoint"], table["set"], table["evaluated"], strict=True)) == [
        ("tiny", "UTKFace val", True), ("tiny", "UTKFace test", True), ("tiny", "ff", True),
        ("other", "UTKFace val", True), ("other", "UTKFace test", False), ("other", "ff", False)]
    missing = table[~table["evaluated"]]
    assert (missing["note"] == crossdata.NOT_EVALUATED).all()
    assert missing[["n", "gender_accuracy", "gender_accuracy_gap", "age_bin_accuracy"]].isna().all().all()
    cells = {("tiny", "val"): ckpt / "predictions-val.csv", ("tiny", "test"): ckpt / "predictions-test.csv",
             ("tiny", "ff"): res.predictions, ("other", "val"): other / "predictions-val.csv"}
    for (name, source), path in cells.items():
        row = table[(table["checkpoint"] == name) & (table["source"] == source)].iloc[0]
        want = independent(path, "race", min_count=1)
        for key, value in want.items():
            if isinstance(value, str):
                if source == "val":  # the small tables tie between groups; the 900-row ones do not
                    assert row[key] == value, (name, source, key)
            elif np.isnan(value):
                assert np.isnan(row[key]), (name, source, key)
            else:
                assert row[key] == pytest.approx(value), (name, source, key)
        for metric in ("gender_accuracy", "gender_accuracy_gap"):
            lo, hi = row[f"{metric}_lo"], row[f"{metric}_hi"]
            assert np.isfinite([lo, hi]).all() and lo <= hi, (name, source, metric)
    ff_row = table[(table["checkpoint"] == "tiny") & (table["source"] == "ff")].iloc[0]
    assert ff_row["age_metric"] == "age_bin_accuracy" and np.isnan(ff_row["age_mae_gap"])
    assert (ff_row["n"], ff_row["n_found"]) == (8, 6)
    again = crossdata.cross_dataset([ckpt, other], ["val", "test", "ff"], min_count=1, n_boot=200)
    pd.testing.assert_frame_equal(table, again)  # the same draws: the same intervals


def test_the_gaps_are_the_bias_reports_disparity(ckpt):
    table = crossdata.cross_dataset([ckpt], ["val"])  # the defaults: groups of 30 or more, 1,000 draws
    row = table.iloc[0]
    disparity = GroupReport(pd.read_csv(ckpt / "predictions-val.csv"), "race", n_boot=0).disparity()
    for metric in ("gender_accuracy", "age_mae", "age_bin_accuracy"):
        d = disparity.set_index("metric").loc[metric]
        assert row[f"{metric}_gap"] == pytest.approx(d["gap"]), metric
        assert (row[f"{metric}_best"], row[f"{metric}_worst"]) == (d["best_group"], d["worst_group"]), metric
        assert row[f"{metric}_gap_lo"] <= row[f"{metric}_gap_hi"]


def test_a_set_without_the_grouping_or_with_too_few_groups_says_so(ckpt):
    none = crossdata.cross_dataset([ckpt], ["val"], grouping="site", n_boot=50).iloc[0]
    assert none["note"] == crossdata.NO_GROUPING.format(grouping="site") and np.isnan(none["gender_accuracy_gap"])
    assert np.isfinite(none["gender_accuracy"])  # the headline figures are still there
    few = crossdata.cross_dataset([ckpt], ["val"], min_count=10_000, n_boot=50).iloc[0]
    assert few["note"] == crossdata.FEW_GROUPS.format(grouping="race", min_count=10_000)


def test_the_cross_table_as_a_reader_sees_it(ckpt, ff_folder):
    results.register("ff", ff_folder)
    table = crossdata.cross_dataset([ckpt], ["val", "ff"], n_boot=100)
    shown = crossdata.cross_display(table)
    assert list(shown.columns) == list(crossdata.CROSS_DISPLAY)
    val, ff = shown.iloc[0], shown.iloc[1]
    assert val["set"] == "UTKFace val" and val["images"] == "900" and val["faces found"] == "100%"
    assert val["gender accuracy"].endswith("%]") and " [" in val["gender accuracy"]
    assert val["age MAE"].endswith(" y]")
    assert " pp [" in val["gender accuracy gap"] and ": worst " in val["gender accuracy gap"]
    assert " y [" in val["age gap"] and ", best " in val["age gap"]
    assert list(ff[["images", "gender accuracy", "age gap"]]) == ["–", "–", "–"]
    assert ff["note"] == crossdata.NOT_EVALUATED


def test_headline_row_without_a_result_is_marked_not_evaluated(tmp_path):
    row = crossdata.headline_row(tmp_path / "ck", None)
    assert row["checkpoint"] == "ck" and row["evaluated"] == crossdata.NOT_EVALUATED
    assert all(row[k] is None for k in crossdata.HEADLINE_FIGURES)
