"""The look-alike contract: where a leakage check is kept, how it is read, which faces leave, and the model card's
lines from it."""

import json
import shutil

import pandas as pd
import pytest

from agegender import lookalikes as L
from agegender.report.modelcard import card_for, look_alike_lines

from .conftest import ROOT

SHIPPED = ROOT / "checkpoints" / "dlib-resnet29-utkface"


def leak(pairs, n=10, **extra):
    return {"n": n, "pairs": [{"file": f, "match": "m.jpg", "distance": 0.3, "kind": k} for f, k in pairs], **extra}


def test_paths_for_own_splits_and_registered_sets(tmp_path, monkeypatch):
    from agegender.evaluation import results, sources

    monkeypatch.setenv("AGEGENDER_RESULTS", str(tmp_path / "results"))
    assert L.leakage_path(tmp_path) == tmp_path / "leakage.json"
    assert sources.source(tmp_path, "val").leakage_path() == sources.source(tmp_path, "test").leakage_path() \
        == tmp_path / "leakage.json"
    in_results = sources.source(tmp_path, "fairface").leakage_path()
    assert in_results.parent == results.set_folder("fairface") and in_results.name.startswith("leakage-")
    assert in_results != sources.source(tmp_path / "other", "fairface").leakage_path()  # one file per checkpoint
    assert L.read_if_any(tmp_path / "leakage.json") is None


@pytest.mark.parametrize("content, detail", [
    ("not json", "Expecting value"),
    (json.dumps([1, 2]), "no list of pairs"),
    (json.dumps({"n": 3, "pairs": [{"file": "a.jpg", "kind": "cousin"}]}), "a pair without a file or a known kind"),
    (json.dumps({"pairs": []}), "no count of faces checked"),
    ("[" * 100_000 + "]" * 100_000, "maximum recursion"),
])
def test_a_file_that_is_not_a_leakage_check_is_one_message(tmp_path, content, detail):
    (tmp_path / "leakage.json").write_text(content)
    with pytest.raises(L.LeakageError) as e:
        L.read_if_any(tmp_path / "leakage.json")
    assert str(e.value).startswith(f"{tmp_path / 'leakage.json'} is not a leakage file agegender.leakage wrote (")
    assert detail in str(e.value)


def test_without_drops_flagged_faces_by_image_key():
    df = pd.DataFrame({"file": ["a/30_0_0_1.jpg.chip.jpg", "30_1_0_2.jpg", "30_1_0_3.jpg"], "age": [30, 30, 30]})
    out = L.without(df, leak([("30_0_0_1.jpg", "duplicate"), ("other/30_1_0_2.jpg.chip.jpg", "look-alike"),
                              ("40_0_0_9.jpg", "look-alike")]))
    assert out["file"].tolist() == ["30_1_0_3.jpg"]
    text = L.without_text(3, 1, leak([("x", "duplicate"), ("y", "look-alike"), ("z", "look-alike")]))
    assert text.startswith("without 2 of 3 faces") and "1 duplicates, 2 look-alikes" in text


def test_the_model_card_states_the_share_and_the_figures_without_look_alikes(tmp_path):
    ck = tmp_path / SHIPPED.name
    shutil.copytree(SHIPPED, ck)
    (ck / "leakage.json").unlink(missing_ok=True)
    assert look_alike_lines(ck) == [] and "Look-alikes" not in card_for(ck, n_boot=50)
    figures = {"all": {"n": 2114, "n_without": 1500,
                       "age_mae": {"with": 4.35, "without": 4.5, "difference": -0.15, "lo": -0.25, "hi": -0.05},
                       "gender_accuracy": {"with": 0.94, "without": 0.93, "difference": 0.01, "lo": None,
                                           "hi": None}},
               "Asian": {"n": 288, "n_without": 0,
                         "age_mae": {"with": 3.0, "without": None, "difference": None, "lo": None, "hi": None},
                         "gender_accuracy": {"with": 0.9, "without": None, "difference": None, "lo": None,
                                             "hi": None}}}
    (ck / "leakage.json").write_text(json.dumps(leak([("a", "duplicate"), ("b", "look-alike"), ("c", "look-alike")],
                                                     n=40, checkpoint_figures={"test": figures})))
    lines = look_alike_lines(ck)
    assert lines[0].startswith("Look-alikes (`python -m agegender.leakage`): 3 of the 40 val and test faces (7.5%)")
    assert "(1 of them the same picture)" in lines[0]
    assert "| **all** | 2114 | 1500 | 4.35 y | 4.50 y | -0.15 y [-0.25 y, -0.05 y] | 94.0% | 93.0% | +1.0 pts |" \
        in lines
    assert not any(line.startswith("| Asian") for line in lines)  # no face left: no figure to show
    assert "\n".join(lines) in card_for(ck, n_boot=50)


def test_the_shipped_checkpoints_carry_their_check_and_the_card_shows_it():
    for name in ("dlib-resnet29-utkface", "dlib-resnet29-balanced"):
        check = L.read_if_any(L.leakage_path(ROOT / "checkpoints" / name))
        assert check is not None and check["checkpoint_figures"]["test"]["all"]["n"] == len(
            pd.read_csv(ROOT / "checkpoints" / name / "predictions-test.csv"))
        card = (ROOT / "checkpoints" / "README.md").read_text()
        assert "\n".join(look_alike_lines(ROOT / "checkpoints" / name)) in card
