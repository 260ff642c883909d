"""What a reviewer sees in the first minute: tables with units and percentages (agegender.fairness.tables), the
compare page opening on two checkpoints, a grid for a photo of many faces, and validation curves."""

import io
import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest
from streamlit import dataframe_util
from streamlit.testing.v1 import AppTest

from agegender.fairness import tables
from agegender.meta import META, WEIGHTS
from agegender.models import catalog
from agegender.models.catalog import SUMMARY_METRICS, compare_pick, most_recent, trained_at
from agegender.report import charts
from dashboard.state import PAIR_BUTTON, PICKER, SELECTED

from ..conftest import ROOT

APP = str(ROOT / "dashboard" / "app.py")


# --- agegender.fairness.tables ---------------------------------------------------------------------------

@pytest.mark.parametrize("value, kind, kw, text", [
    (1.549174, tables.YEARS, {}, "1.55 y"),
    (12.3456, tables.YEARS, {}, "12.3 y"),
    (9.996, tables.YEARS, {}, "10.0 y"),  # rounded before the decimals are chosen: not "10.00 y"
    (-0.0312, tables.YEARS, {}, "-0.03 y"),
    (-0.001, tables.YEARS, {}, "0.00 y"),  # no "-0.00" unsigned
    (-0.001, tables.YEARS, {"delta": True, "signed": True}, "-0.00 y"),  # a delta keeps its direction
    (0.0, tables.YEARS, {"delta": True, "signed": True}, "0.00 y"),
    (0.31, tables.YEARS, {"delta": True, "signed": True}, "+0.31 y"),
    (0.994764, tables.PERCENT, {}, "99.5%"),
    (1.0, tables.PERCENT, {}, "100%"),
    (0.0345, tables.PERCENT, {}, "3.5%"),
    (0.021, tables.PERCENT, {"delta": True, "signed": True}, "+2.1 pp"),  # percentage points
    (0.05, tables.PERCENT, {"delta": True}, "5.0 pp"),
    (0.98765, tables.SCORE, {}, "0.988"),
    (0.5, tables.SCORE, {}, "0.500"),
    (12345, tables.COUNT, {}, "12,345"),
    (1.25, tables.BINS, {}, "1.25 bins"),
    (0.123456, tables.PLAIN, {}, "0.123"),
    (123456.7, tables.PLAIN, {}, "123,457"),
    (float("nan"), tables.YEARS, {}, tables.MISSING),
    (None, tables.PERCENT, {}, tables.MISSING),
    (float("inf"), tables.SCORE, {}, tables.MISSING),
    ("n/a", tables.YEARS, {}, "n/a"),
])
def test_format_value(value, kind, kw, text):
    assert tables.format_value(value, kind, **kw) == text


@pytest.mark.parametrize("column, kind, delta, signed", [
    ("age_mae", tables.YEARS, False, False),
    ("age_medae_lo", tables.YEARS, False, False),
    ("age_bias_hi", tables.YEARS, False, False),
    ("age_cs5", tables.PERCENT, False, False),
    ("gender_accuracy_b", tables.PERCENT, False, False),  # one side of a comparison
    ("female_as_male_a", tables.PERCENT, False, False),
    ("male_as_female", tables.PERCENT, False, False),
    ("gender_auc", tables.SCORE, False, False),
    ("gender_ece_lo", tables.SCORE, False, False),
    ("n", tables.COUNT, False, False),
    ("age_mae_delta", tables.YEARS, True, True),
    ("gender_accuracy_delta_lo", tables.PERCENT, True, True),
    ("d_age_cs5", tables.PERCENT, True, True),
    ("d_gender_auc_hi", tables.SCORE, True, True),
    # metrics still to come, and ones nobody has listed: by unit, by name, else 3 significant digits
    ("age_bin_accuracy", tables.PERCENT, False, False),
    ("age_bin_within1_hi", tables.PERCENT, False, False),
    ("age_bin_error", tables.BINS, False, False),
    ("missed_rate", tables.PERCENT, False, False),
    ("some_new_score", tables.PLAIN, False, False),
    ("d_some_new_score", tables.PLAIN, True, True),
])
def test_column_format_reads_the_name(column, kind, delta, signed):
    f = tables.column_format(column, pd.Series([0.5, 0.25]))
    assert (f.kind, f.delta, f.signed) == (kind, delta, signed)


def test_a_new_metric_takes_the_kind_of_its_unit(monkeypatch):
    from agegender.fairness import groups as fairness

    new = fairness.Metric("age_p90", "age 90th percentile error", False, lambda c: c, "y")
    monkeypatch.setitem(fairness.METRICS, "age_p90", new)
    assert tables.column_format("age_p90_hi").kind == tables.YEARS
    odd = fairness.Metric("age_logit", "age logit", None, lambda c: c, "logit")
    monkeypatch.setitem(fairness.METRICS, "age_logit", odd)
    assert tables.format_value(0.51234, tables.kind_of("age_logit")) == "0.512 logit"


def test_columns_left_alone_and_whole_numbers_as_counts():
    assert tables.column_format("race", pd.Series(["Asian", "Black"])) is None
    assert tables.column_format("too_small", pd.Series([True, False])) is None
    assert tables.column_format("input px", pd.Series([224, 224])).kind == tables.COUNT
    assert tables.column_format("epochs", pd.Series([3.0, np.nan])).kind == tables.COUNT
    assert tables.column_format("train min", pd.Series([1.25, 3.5])).kind == tables.PLAIN


def metrics_table() -> pd.DataFrame:
    return pd.DataFrame({
        "race": ["Asian", "Black"], "n": [1234, 25], "too_small": [False, True],
        "age_mae": [1.549174, 12.3], "age_mae_lo": [1.4, 10.0], "age_mae_hi": [1.7, 14.25],
        "gender_accuracy": [0.994764, 0.5], "gender_auc": [0.98765, np.nan],
        "age_mae_delta": [0.31, -0.2], "gender_accuracy_delta": [0.021, -0.003], "new_figure": [0.123456, 2.5],
    })


def test_display_shows_units_percentages_and_few_digits():
    shown = tables.display(metrics_table())
    assert shown.to_dict("list") == {
        "race": ["Asian", "Black"], "n": ["1,234", "25"], "too_small": [False, True],
        "age_mae": ["1.55 y", "12.3 y"], "age_mae_lo": ["1.40 y", "10.0 y"], "age_mae_hi": ["1.70 y", "14.2 y"],
        "gender_accuracy": ["99.5%", "50.0%"], "gender_auc": ["0.988", tables.MISSING],
        "age_mae_delta": ["+0.31 y", "-0.20 y"], "gender_accuracy_delta": ["+2.1 pp", "-0.3 pp"],
        "new_figure": ["0.123", "2.50"],
    }


def test_styled_keeps_the_numbers_and_shows_the_text():
    df = metrics_table()
    styler = tables.styled(df)
    pd.testing.assert_frame_equal(styler.data, df)  # the cells stay numbers: columns sort by value
    html = styler.to_html()
    for text in ("1.55 y", "99.5%", "0.988", "1,234", "+2.1 pp", tables.MISSING):
        assert text in html
    assert "1.549174" not in html and "0.994764" not in html


def test_a_disparity_table_formats_each_row_by_its_metric():
    disp = pd.DataFrame({"metric": ["age_mae", "gender_accuracy"], "label": ["age MAE", "gender accuracy"],
                         "best_group": ["a", "b"], "best": [1.2, 0.95], "worst_group": ["c", "d"],
                         "worst": [2.5, 0.9], "gap": [1.3, 0.05], "ratio": [2.0833, 0.947368], "overall": [1.5, 0.93]})
    shown = tables.display(disp)
    assert list(shown.iloc[0][["best", "worst", "gap", "ratio", "overall"]]) == ["1.20 y", "2.50 y", "1.30 y", "2.08",
                                                                              "1.50 y"]
    assert list(shown.iloc[1][["best", "worst", "gap", "ratio", "overall"]]) == ["95.0%", "90.0%", "5.0 pp", "0.947",
                                                                              "93.0%"]
    html = tables.styled(disp).to_html()
    assert "5.0 pp" in html and "1.30 y" in html


def test_summary_table_columns_by_their_metric():
    table = pd.DataFrame({"checkpoint": ["x"], "test n": [2371], "test age MAE": [5.4321], "test CS@5": [0.6123],
                          "test age bias": [-0.25], "test gender acc": [0.9012], "test gender AUC": [0.96543]})
    assert tables.display(table, metrics=SUMMARY_METRICS).iloc[0].tolist() == [
        "x", "2,371", "5.43 y", "61.2%", "-0.25 y", "90.1%", "0.965"]


def test_metric_and_interval_text():
    assert tables.metric_text("age_mae", 1.549174) == "1.55 y"
    assert tables.metric_text("gender_accuracy", -0.0123, delta=True) == "-1.2 pp"
    assert tables.metric_text("gender_accuracy", 0.05, delta=True, signed=False) == "5.0 pp"
    assert tables.metric_text("n", 1234) == "1,234"
    assert tables.interval_text("age_mae", 1.4, 1.7) == "[1.40 y, 1.70 y]"
    assert tables.interval_text("age_bias", -0.5, 0.25, delta=True) == "[-0.50 y, +0.25 y]"


# --- which checkpoints the compare page opens on ------------------------------------------------

def make_checkpoints(root, ages: dict[str, float]):
    """Checkpoint-like folders whose weights were written ``ages`` seconds ago."""
    paths = []
    for name, age in ages.items():
        folder = root / name
        folder.mkdir(parents=True)
        (folder / META).write_text("{}")
        (folder / WEIGHTS).write_bytes(b"")
        t = 1_700_000_000 - age
        os.utime(folder / WEIGHTS, (t, t))
        paths.append(folder)
    return sorted(paths)


def test_most_recent_reads_the_weights_time_not_meta(tmp_path):
    paths = make_checkpoints(tmp_path, {"a": 300, "b": 100, "c": 200, "d": 400})
    (paths[3] / META).write_text("{}")  # re-evaluated now: meta.json is rewritten, the training time is not
    assert [p.name for p in most_recent(paths)] == ["c", "b"]  # oldest first: c is the baseline
    assert [p.name for p in most_recent(paths, 3)] == ["a", "c", "b"]
    assert most_recent(paths[:1]) == paths[:1] and most_recent([]) == []
    (paths[2] / WEIGHTS).unlink()  # no weights: meta.json's time (now), the most recent
    assert most_recent(paths)[-1].name == "c"
    assert trained_at(tmp_path / "missing") == 0.0


def test_most_recent_tie_goes_by_name(tmp_path):
    paths = make_checkpoints(tmp_path, {"b": 0, "a": 0, "c": 0})
    assert [p.name for p in most_recent(paths)] == ["b", "c"]


def test_compare_pick(tmp_path):
    a, b, c, d = make_checkpoints(tmp_path, {"a": 300, "b": 100, "c": 200, "d": 400})
    paths = [a, b, c, d]
    assert compare_pick([d], paths, untouched=True) == [c, b]  # a fresh session: the two most recent
    assert compare_pick([d], paths, untouched=False) == [d, b]  # the user's pick stays; the newest joins it
    assert compare_pick([b], paths, untouched=False) == [b, c]
    assert compare_pick([], paths, untouched=False) == [c, b]
    assert compare_pick([a, d], paths, untouched=True) == [a, d]  # two already: as they are
    assert compare_pick([a], [a], untouched=True) == [a]  # nothing to add
    assert compare_pick([], [a], untouched=False) == []


def test_catalog_stays_torch_free():
    import subprocess
    import sys

    code = ("import sys, agegender.models.catalog, agegender.fairness.tables, agegender.report.charts; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "False"
    assert catalog.most_recent and tables.styled


# --- training curves ----------------------------------------------------------------------------

HISTORY = pd.DataFrame({"epoch": [1, 2, 3], "train_loss": [5.5, 4.5, 4.0], "train_age_mae": [15.3, 9.3, 8.0],
                        "train_gender_acc": [0.70, 0.81, 0.85], "val_age_mae": [9.2, 10.2, 8.1],
                        "val_gender_acc": [0.80, 0.81, 0.83], "val_score": [11.2, 12.1, 9.8]})


def test_training_history_long_form():
    long = charts.training_history(HISTORY)
    assert len(long) == 5 * 3
    val = long[(long["panel"] == "age MAE (years)") & (long["split"] == "validation")]
    assert val["value"].tolist() == [9.2, 10.2, 8.1] and val["epoch"].tolist() == [1, 2, 3]
    assert set(long[long["panel"] == "loss"]["split"]) == {"train"}


def test_training_history_missing_columns_and_bad_values():
    old = HISTORY.drop(columns=["val_gender_acc"]).assign(val_age_mae=["9.2", "nan", "oops"])
    long = charts.training_history(old)
    assert not ((long["panel"] == "gender accuracy") & (long["split"] == "validation")).any()
    assert long[(long["split"] == "validation")]["value"].tolist() == [9.2]
    assert charts.training_history(pd.DataFrame({"epoch": [1]})).empty


def test_training_curves_put_validation_beside_train():
    fig = charts.training_curves(HISTORY, best_epoch=3)
    traces = [(t.name, t.xaxis, list(t.y)) for t in fig.data]
    assert traces == [("train", "x", [5.5, 4.5, 4.0]),
                      ("train", "x2", [15.3, 9.3, 8.0]), ("validation", "x2", [9.2, 10.2, 8.1]),
                      ("train", "x3", [0.70, 0.81, 0.85]), ("validation", "x3", [0.80, 0.81, 0.83])]
    assert [t.showlegend for t in fig.data] == [True, False, True, False, False]  # one legend entry per split
    assert [a.text for a in fig.layout.annotations] == ["loss", "age MAE (years)", "gender accuracy"]
    assert sum(s.type == "line" and s.x0 == 3 for s in fig.layout.shapes) == 3  # the best epoch on each panel


# --- the pages ----------------------------------------------------------------------------------

@pytest.fixture
def app(monkeypatch):
    def make(root, picks=None, state=None):
        monkeypatch.setenv("AGEGENDER_CHECKPOINTS", str(root))
        monkeypatch.delenv("AGEGENDER_ALLOWED_ROOTS", raising=False)
        at = AppTest.from_file(APP, default_timeout=90)
        # AppTest runs only the page after switch_page, not app.py's sidebar: preset the picker instead
        if picks is not None:
            at.session_state[PICKER] = picks
        for k, v in (state or {}).items():
            at.session_state[k] = v
        return at.run()
    return make


def shown(element) -> pd.DataFrame:
    """The text a styled st.dataframe shows (its Styler's display values)."""
    return dataframe_util.convert_arrow_bytes_to_pandas_df(element.proto.arrow_data.styler.display_values)


def copies(tiny_checkpoint, root, ages: dict[str, float]):
    """Copies of the tiny checkpoint whose weights were written ``ages`` seconds ago."""
    for name, age in ages.items():
        shutil.copytree(tiny_checkpoint, root / name)
        t = 1_700_000_000 - age
        os.utime(root / name / WEIGHTS, (t, t))


def picked(at) -> list[str]:
    return [os.path.basename(p) for p in at.session_state[SELECTED]]


def test_compare_page_offers_the_two_most_recent_and_leaves_the_picker_alone(app, tiny_checkpoint, tmp_path, caplog):
    root = tmp_path / "three"
    copies(tiny_checkpoint, root, {"a-old": 300, "b-new": 100, "c-mid": 200})
    at = app(root)  # a fresh session: the predict page on its one default checkpoint
    assert at.session_state[PICKER] == ["a-old"]
    at.switch_page("pages/compare.py").run()
    assert not at.exception
    assert picked(at) == ["a-old"]  # visiting the page changes nothing by itself
    assert "two or more" in at.info[0].value
    offer = at.button(key="offer_pair")
    assert offer.label == PAIR_BUTTON.format(names="c-mid and b-new")
    offer.click().run()
    assert not at.exception
    assert picked(at) == ["c-mid", "b-new"] and at.session_state[PICKER] == ["c-mid", "b-new"]
    assert [h.value for h in at.header][0] == "b-new against c-mid"  # the older one is the baseline
    assert "Session State" not in caplog.text  # no "default value and Session State API" clash


def test_compare_page_offers_a_users_pick_plus_the_newest(app, tiny_checkpoint, tmp_path):
    root = tmp_path / "three"
    copies(tiny_checkpoint, root, {"a-old": 300, "b-new": 100, "c-mid": 200})
    at = app(root, picks=["c-mid"]).switch_page("pages/compare.py").run()
    assert not at.exception and picked(at) == ["c-mid"]
    at.button(key="offer_pair").click().run()
    assert picked(at) == ["c-mid", "b-new"]


def test_the_picker_drops_a_folder_gone_since(app, tiny_checkpoint, tmp_path):
    root = tmp_path / "three"
    copies(tiny_checkpoint, root, {"a-old": 300, "b-new": 100})
    at = app(root, picks=["b-new", "gone"])
    assert not at.exception and picked(at) == ["b-new"]


def test_compare_page_with_one_checkpoint_still_asks_for_two(app, tiny_checkpoint, tmp_path):
    copies(tiny_checkpoint, tmp_path / "one", {"only": 0})
    at = app(tmp_path / "one").switch_page("pages/compare.py").run()
    assert not at.exception and [i.value for i in at.info] == ["Pick two or more checkpoints in the sidebar to "
                                                               "compare them."]
    assert not at.button  # nothing to offer


def test_compare_page_tables_show_units(app, tiny_checkpoint, tmp_path):
    root = tmp_path / "two"
    copies(tiny_checkpoint, root, {"a": 200, "b": 100})
    at = app(root, picks=["a", "b"]).switch_page("pages/compare.py").run()
    assert not at.exception
    groups = next(d for d in at.dataframe if "age_mae_delta" in d.value)
    assert groups.value["age_mae_delta"].dtype.kind == "f"  # numbers underneath
    text = shown(groups)
    assert text["age_mae_a"].str.endswith(" y").all() and text["gender_accuracy_b"].str.endswith("%").all()
    agree = next(d for d in at.dataframe if "gender_disagreement" in d.value)
    assert shown(agree)["gender_disagreement"].str.endswith("%").all()
    mae = next(m for m in at.metric if m.label == "age MAE")
    assert mae.value.endswith(" y") and "delta interval [" in mae.help


def test_bias_and_checkpoints_tables_show_units(app, tiny_checkpoint, tmp_path):
    copies(tiny_checkpoint, tmp_path / "ck", {"tiny": 0})
    at = app(tmp_path / "ck", picks=[]).switch_page("pages/checkpoints.py").run()
    assert not at.exception
    table, text = at.dataframe[0].value, shown(at.dataframe[0])
    assert table["test gender acc"].between(0, 1).all()  # raw underneath
    assert text["test gender acc"].str.endswith("%").all() and text["test age MAE"].str.endswith(" y").all()
    at.session_state[SELECTED] = [str(tmp_path / "ck" / "tiny")]  # what the picker would hold
    at.switch_page("pages/bias.py").run()
    at.number_input(key="bias_min").set_value(1).run()
    assert not at.exception
    disparity, groups = at.dataframe[0], at.dataframe[1]
    text = shown(groups)
    assert text["age_mae"].str.endswith(" y").all() and text["gender_accuracy_lo"].str.endswith("%").all()
    assert text["n"].str.fullmatch(r"[\d,]+").all()
    assert groups.value["age_mae"].dtype.kind == "f"  # and the CSV download is this frame: raw values
    d = shown(disparity).set_index("metric")
    assert d.loc["age_mae", "gap"].endswith(" y") and d.loc["gender_accuracy", "gap"].endswith(" pp")
    mae = next(m for m in at.metric if m.label.startswith("age MAE"))
    assert mae.value.endswith(" y") and mae.help.startswith("95% interval [")


def test_training_page_shows_validation_curves(app, tiny_checkpoint, tmp_path):
    copies(tiny_checkpoint, tmp_path / "ck", {"tiny": 0})
    at = app(tmp_path / "ck", picks=["tiny"]).switch_page("pages/training.py").run()
    assert not at.exception
    (chart,) = at.get("plotly_chart")
    spec = json.loads(chart.proto.spec)
    names = [(t["name"], t["xaxis"]) for t in spec["data"]]
    assert ("validation", "x2") in names and ("validation", "x3") in names and ("train", "x") in names


def faces_png(n: int = 3) -> bytes:
    """The example photo, halved, ``n`` times side by side: a photo of n faces."""
    import matplotlib.cbook
    from PIL import Image

    img = Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB")
    tile = img.resize((img.width // 2, img.height // 2))
    out = Image.new("RGB", (tile.width * n, tile.height))
    for i in range(n):
        out.paste(tile, (i * tile.width, 0))
    buf = io.BytesIO()
    out.save(buf, "PNG")
    return buf.getvalue()


def test_predict_page_grid_of_faces_and_the_one_explained(app, tiny_checkpoint, tmp_path):
    copies(tiny_checkpoint, tmp_path / "ck", {"tiny": 0})
    at = app(tmp_path / "ck", picks=["tiny"])
    at.radio(key="source").set_value("Upload").run()
    at.file_uploader[0].set_value([("three.png", faces_png(3), "image/png")]).run()
    assert not at.exception
    captions = [c for img in at.image for c in img.captions]
    grid = [c for c in captions if c.startswith(("Face ", "▶ Face "))]
    assert len(grid) == 3 and grid[0].startswith("▶ Face 1: ") and all(" y · " in c for c in grid)
    assert [m.value for m in at.markdown if m.value.startswith("#### Face")] == ["#### Face 1"]  # one detail view
    assert "model input (aligned)" in captions
    pick = at.radio(key=next(r.key for r in at.radio if r.key.startswith("face_pick-")))
    assert pick.options == ["Face 1", "Face 2", "Face 3"] and pick.label == "Grad-CAMs of"
    pick.set_value(3).run()
    assert not at.exception
    assert [m.value for m in at.markdown if m.value.startswith("#### Face")] == ["#### Face 3"]
    grid = [c for img in at.image for c in img.captions if "Face " in c]
    assert [c.startswith("▶") for c in grid] == [False, False, True]
    assert tables.MISSING not in shown(at.dataframe[-1])["age"].tolist()
    assert shown(at.dataframe[-1])["age"].str.endswith(" y").all() and len(at.dataframe[-1].value) == 3


def test_predict_page_one_face_stays_as_it_was(app, tiny_checkpoint, tmp_path):
    copies(tiny_checkpoint, tmp_path / "ck", {"tiny": 0})
    at = app(tmp_path / "ck", picks=["tiny"])  # the example photo: one face
    assert not at.exception
    assert not [r for r in at.radio if (r.key or "").startswith("face_pick-")]  # no picker, no grid
    assert not [c for img in at.image for c in img.captions if c.startswith(("Face ", "▶ Face "))]
    assert [m.value for m in at.markdown if m.value.startswith("#### Face")] == ["#### Face 1"]


COMPARE_FIRST = """
import streamlit as st

from dashboard import state, ui

state.sidebar()
ui.run_page(st.navigation([st.Page({page!r}, title="Compare checkpoints", default=True)]))
"""


def test_compare_pages_pair_button_fills_the_picker_itself(tiny_checkpoint, tmp_path, monkeypatch):
    # app.py's order (sidebar, then the page) with the compare page first: here a rerun runs the sidebar
    # too, as in a real session, so the picker widget itself ends up holding the two
    root = tmp_path / "three"
    copies(tiny_checkpoint, root, {"a-old": 300, "b-new": 100, "c-mid": 200})
    monkeypatch.setenv("AGEGENDER_CHECKPOINTS", str(root))
    monkeypatch.delenv("AGEGENDER_ALLOWED_ROOTS", raising=False)
    script = tmp_path / "compare_first.py"
    script.write_text(COMPARE_FIRST.format(page=str(ROOT / "dashboard" / "pages" / "compare.py")))
    at = AppTest.from_file(str(script), default_timeout=90).run()
    assert not at.exception and at.multiselect(key=PICKER).value == ["a-old"]
    at.button(key="offer_pair").click().run()
    assert at.multiselect(key=PICKER).value == ["c-mid", "b-new"]
    assert picked(at) == ["c-mid", "b-new"] and [h.value for h in at.header][0] == "b-new against c-mid"
