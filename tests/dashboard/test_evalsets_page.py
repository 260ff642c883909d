"""The Evaluation sets page: register a dataset, evaluate the picked checkpoint on it with the results kept
outside the checkpoint, and read the cross-dataset table; every bad input is one error line."""

from __future__ import annotations

import shutil

import pytest
from streamlit.testing.v1 import AppTest

from agegender.data.datasets import ERR_LABELS_MISSING, ERR_NOT_FOUND
from agegender.evaluation import crossdata, results
from agegender.fairness import shift
from dashboard import caches, state

from ..conftest import ROOT
from ..evaluation.test_evalset import blank, fairface_like

APP = str(ROOT / "dashboard" / "app.py")
PAGE = "pages/evalsets.py"


@pytest.fixture
def page(tiny_checkpoint, tmp_path, monkeypatch):
    """The page with the tiny checkpoint picked, results and crops under tmp_path."""
    ck = tmp_path / "ck" / "tiny"
    shutil.copytree(tiny_checkpoint, ck)
    monkeypatch.setenv("AGEGENDER_CHECKPOINTS", str(tmp_path / "ck"))
    monkeypatch.setenv("AGEGENDER_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("AGEGENDER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("AGEGENDER_FAIRFACE", str(tmp_path / "no-sample"))
    for env in ("AGEGENDER_ALLOWED_ROOTS", "AGEGENDER_ALLOWED_DATA"):
        monkeypatch.delenv(env, raising=False)
    at = AppTest.from_file(APP, default_timeout=300)
    at.session_state["picker_names"] = []  # no prediction on the first page: it is not under test
    at.run()
    at.session_state[state.SELECTED] = [str(ck)]  # AppTest runs the sidebar once: what it would have stored
    return at.switch_page(PAGE).run(), ck


def register(at, name: str, path, labels: str = "") -> AppTest:
    at.text_input(key="es_name").input(name)
    at.text_input(key="es_path").input(str(path))
    at.text_input(key="es_labels").input(labels)
    return at.button(key="es_register").click().run()


def cross_rows(at) -> dict:
    table = at.dataframe[-1].value
    return {s: r for s, r in zip(table["set"], table.to_dict("records"), strict=True)}


def test_register_evaluate_and_compare_across_datasets(page, tmp_path):
    at, ck = page
    assert not at.exception
    assert [i.value for i in at.info][:1] == ["No evaluation set yet: register one above."]
    fairface_like(tmp_path / "ff")
    register(at, "ff", tmp_path / "ff")
    assert not at.exception and not at.error
    assert at.success[0].value == "Registered ff: 9 images (fairface, photos)."
    assert list(at.dataframe[0].value["name"]) == ["ff"]
    rows = cross_rows(at)
    assert list(rows) == ["UTKFace val", "UTKFace test", "ff"]
    assert rows["ff"]["note"] == crossdata.NOT_EVALUATED and rows["ff"]["gender accuracy"] == "–"
    assert rows["UTKFace val"]["gender accuracy"].endswith("%]")

    at.button(key="es_go").click().run()
    assert not at.exception and not at.error
    headline = at.dataframe[1].value
    assert list(headline["checkpoint"]) == ["tiny"]
    assert (headline["n"][0], headline["n_found"][0]) == (8, 6)  # the corrupt file dropped, two photos faceless
    assert 0 <= headline["gender_accuracy"][0] <= 1
    explained = at.dataframe[2].value  # the set at UTKFace's mix, against the checkpoint's own predictions
    assert list(explained["figure"][:2]) == [shift.FIGURE_LABELS["reference"], shift.FIGURE_LABELS["as measured"]]
    assert explained["faces"][1] == 6 and explained["gender accuracy"][1].endswith("]")
    assert len(explained) == 5 and [m.value for m in at.markdown] == ["**tiny**"]
    rows = cross_rows(at)
    assert rows["ff"]["images"] == "8" and rows["ff"]["faces found"] == "75.0%"
    assert rows["ff"]["note"] == crossdata.FEW_GROUPS.format(grouping="race", min_count=30)  # six faces: no gap
    assert rows["ff"]["age MAE"] == "–" and rows["ff"]["age bin accuracy"].endswith("%]")
    assert not (ck / "predictions-ff.csv").exists()  # kept in the results cache only
    assert list((tmp_path / "results" / results.SETS_FOLDER / "ff").glob("*.csv"))

    at.checkbox(key="es_save").check().run()
    at.button(key="es_go").click().run()
    assert not at.exception and not at.error
    assert (ck / "predictions-ff.csv").is_file()
    assert any(c.value == f"Saved a copy into {ck / 'predictions-ff.csv'}." for c in at.caption)

    at.selectbox(key="es_grouping").set_value("gender").run()
    assert not at.exception and cross_rows(at)["ff"]["gender accuracy gap"] == "–"  # groups under 30 faces
    at.button(key="es_remove").click().run()
    assert not at.exception and results.list_sets() == []


def test_bad_input_is_one_error_line(page, tmp_path):
    at, _ = page
    register(at, "x", "")
    assert [e.value for e in at.error] == ["Type the path of the images (folder, .zip or .tar.gz) or of the labels "
                                           "file first."]
    register(at, "x", tmp_path / "nowhere")
    assert [e.value for e in at.error] == [ERR_NOT_FOUND.format(path=tmp_path / "nowhere")]
    fairface_like(tmp_path / "ff")
    register(at, "x", tmp_path / "ff", labels=str(tmp_path / "no-labels.csv"))
    assert [e.value for e in at.error] == [ERR_LABELS_MISSING.format(path=tmp_path / "no-labels.csv")]
    register(at, "../x", tmp_path / "ff")
    assert [e.value for e in at.error] == [results.ERR_NAME.format(name="../x")]
    assert not at.exception and results.list_sets() == []


def test_a_set_without_faces_says_so(page, tmp_path):
    import pandas as pd

    at, _ = page
    (tmp_path / "walls" / "val").mkdir(parents=True)
    for i in range(2):
        blank(seed=i).save(tmp_path / "walls" / "val" / f"{i}.jpg")
    pd.DataFrame({"file": ["val/0.jpg", "val/1.jpg"], "age": ["20-29", "30-39"], "gender": ["Male", "Female"],
                  "race": ["White", "Black"]}).to_csv(tmp_path / "walls" / "labels.csv", index=False)
    register(at, "walls", tmp_path / "walls")
    at.button(key="es_go").click().run()
    assert not at.exception
    assert [e.value for e in at.error] == [results.NO_FACE.format(n=2, name="walls")]


def test_a_set_outside_the_allowed_folders_is_not_offered(page, tmp_path, monkeypatch):
    at, _ = page
    fairface_like(tmp_path / "ff")
    results.register("ff", tmp_path / "ff")
    monkeypatch.setenv("AGEGENDER_ALLOWED_DATA", str(tmp_path / "elsewhere"))
    at.run()
    assert not at.exception
    assert any(c.value == "Not offered here, being outside the folders this dashboard may read: ff."
               for c in at.caption)
    assert at.info[0].value == "No evaluation set this dashboard may read: register one in an allowed folder above."
    register(at, "ff2", tmp_path / "ff")
    assert at.error[0].value.startswith(f"dataset {tmp_path / 'ff'} is outside the folders this dashboard may read")


def test_review_pages_read_an_evaluation_set(page, tmp_path):
    """Once a set is evaluated, the bias report, the comparison and the error explorer offer it beside
    UTKFace val and test, and work on its bins, groups and aligned photos."""
    at, ck = page
    other = ck.parent / "tiny2"
    shutil.copytree(ck, other)
    at.session_state[state.SELECTED] = [str(ck), str(other)]
    fairface_like(tmp_path / "ff")
    register(at, "ff", tmp_path / "ff")
    at.button(key="es_go").click().run()
    assert not at.exception and not at.error

    at.switch_page("pages/bias.py").run()
    assert at.selectbox(key="bias_split").options == ["UTKFace val", "UTKFace test", "ff"]
    at.selectbox(key="bias_split").set_value("ff").run()
    assert not at.exception and not at.error
    assert "race" in at.selectbox(key="bias_grouping").options
    labels = [m.label for m in at.metric]
    assert any(label.startswith("age bin accuracy (n=6)") for label in labels), labels  # bins, faces found
    assert any("A face was found in 6 of 8 images" in c.value for c in at.caption)

    at.switch_page("pages/compare.py").run()
    at.selectbox(key="cmp_split").set_value("ff").run()
    assert not at.exception and not at.error
    assert any(m.label == "age bin accuracy" for m in at.metric)

    at.switch_page("pages/explorer.py").run()
    at.selectbox(key="ex_split").set_value("ff").run()
    assert not at.exception and not at.error
    assert "race" in at.selectbox(key="ex_group_col").options
    assert at.selectbox(key="ex_pick").options  # the worst errors' aligned faces, read from the crop cache


def test_a_set_not_evaluated_yet_points_to_the_evaluation_sets_page(page, tmp_path):
    at, _ = page
    fairface_like(tmp_path / "ff")
    register(at, "ff", tmp_path / "ff")
    at.switch_page("pages/bias.py").run()
    at.selectbox(key="bias_split").set_value("ff").run()
    assert not at.exception and not at.error
    assert [i.value for i in at.info] == [results.ERR_NOT_EVALUATED.format(checkpoint="tiny", source="ff")]


def test_the_pages_and_the_results_cache_name_the_same_own_splits():
    assert caches.OWN_SPLITS == tuple(results.OWN_SPLITS)


def test_a_set_evaluated_after_a_page_looked_for_it_is_seen_at_once(page, tmp_path):
    """The result-file lookup is cached for 30 s; neither it nor the failed read may hide a result just made."""
    at, _ = page
    fairface_like(tmp_path / "ff")
    register(at, "ff", tmp_path / "ff")
    at.switch_page("pages/bias.py").run()
    at.selectbox(key="bias_split").set_value("ff").run()
    assert [i.value for i in at.info] == [results.ERR_NOT_EVALUATED.format(checkpoint="tiny", source="ff")]
    at.switch_page(PAGE).run()
    at.button(key="es_go").click().run()
    at.switch_page("pages/bias.py").run()
    at.selectbox(key="bias_split").set_value("ff").run()  # a page's widgets reset when another page ran
    not_yet = results.ERR_NOT_EVALUATED.format(checkpoint="tiny", source="ff")
    assert not at.exception and not at.error and not_yet not in [i.value for i in at.info]  # within 30 s, found
    assert any("A face was found in 6 of 8 images" in c.value for c in at.caption)


def test_a_set_that_overlaps_the_training_faces_is_warned_with_the_count(page, tmp_path):
    import json

    from agegender import lookalikes
    from agegender.evaluation import sources

    at, ck = page
    fairface_like(tmp_path / "ff")
    register(at, "ff", tmp_path / "ff")
    assert not at.exception and not at.error
    unchecked = lookalikes.overlap_text(None, "ff", str(ck))[1]
    assert unchecked in [c.value for c in at.caption]
    path = sources.source(str(ck), "ff").leakage_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    pairs = [{"file": f"val/{i}.jpg", "match": "m", "distance": 0.2, "kind": k}
             for i, k in enumerate(["duplicate", "look-alike", "look-alike"])]
    path.write_text(json.dumps({"n": 9, "pairs": pairs}))
    at.run()
    assert not at.exception
    assert [w.value for w in at.warning] == [lookalikes.OVERLAP.format(k=3, n=9, name="ff", checkpoint="tiny", d=1)]
    path.write_text(json.dumps({"n": 9, "pairs": []}))
    at.run()
    assert not at.warning and lookalikes.NO_OVERLAP.format(n=9, name="ff", checkpoint="tiny") in [
        c.value for c in at.caption]
