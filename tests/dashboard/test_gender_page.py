"""The Gender threshold page on the shipped checkpoint, as a reviewer moves its sliders: the what-if answers every
threshold (the band follows it and the page says so), a band moved off the threshold takes the threshold along,
and the chart of rates against the threshold marks the figures of the table at the current threshold."""

import base64
import json

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from agegender.fairness import genderband as gb
from agegender.fairness import tables
from agegender.predictions import load_predictions
from agegender.report import charts

from ..conftest import ROOT

APP = str(ROOT / "dashboard" / "app.py")
SHIPPED = ROOT / "checkpoints"
CKPT = "dlib-resnet29-utkface"
WHAT_IF = "What the Uncertain band does, per group"
SWEEP = "Error rates against the threshold, per group"


@pytest.fixture(scope="module")
def page():
    mp = pytest.MonkeyPatch()
    mp.setenv("AGEGENDER_CHECKPOINTS", str(SHIPPED))
    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state["picker_names"] = [CKPT]
    at.run()
    at.switch_page("pages/gender.py").run()
    yield at
    mp.undo()


@pytest.fixture(scope="module")
def val():
    return load_predictions(SHIPPED / CKPT, "val")


def what_if_table(at) -> pd.DataFrame:
    tables = [d.value for d in at.dataframe if "setting" in d.value.columns]
    assert len(tables) == 1
    return tables[0]


def sweep_figure(at) -> dict:
    charts = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    found = [c for c in charts if c["layout"]["title"]["text"].startswith("Error rates and abstention")]
    assert len(found) == 1
    return found[0]


def values(v) -> np.ndarray:
    """A figure's array as the page sent it: a list, or plotly's typed array (base64 bytes and a dtype)."""
    if isinstance(v, dict):
        return np.frombuffer(base64.b64decode(v["bdata"]), dtype=v["dtype"])
    return np.asarray(v, np.float64)


def assert_section_drawn(at, threshold: float, val: pd.DataFrame):
    """No error, the what-if and the sweep drawn, with a band that holds the threshold, and the page's figures
    band_what_if's for that threshold and band."""
    assert not at.exception and not at.error
    assert [s.value for s in at.subheader] == [WHAT_IF, SWEEP]
    assert len(at.get("plotly_chart")) == 4  # ROC, reliability, abstention, rates against the threshold
    lo, hi = at.slider(key="gender_band").value
    assert lo <= threshold <= hi
    shown = what_if_table(at)
    expected = gb.band_what_if(val, "race", threshold, (lo, hi)).by_group
    pd.testing.assert_frame_equal(shown.reset_index(drop=True), expected, check_dtype=False)
    gap = gb.band_what_if(val, "race", threshold, (lo, hi)).gap
    if gap["groups_judged"] >= 2:  # the abstention gap is said with its interval, which holds it, and read in words
        said = next(c.value for c in at.caption if c.value.startswith("The band leaves"))
        assert gap["gap_lo"] <= gap["gap"] <= gap["gap_hi"] and gap["reading"] in said
        assert tables.metric_text("share", gap["gap_hi"], delta=True, signed=False) + "] among" in said
    return lo, hi


def test_every_threshold_gets_the_what_if_and_the_band_follows(page, val):
    at = page
    assert at.selectbox(key="gender_split").value == "val" and at.selectbox(key="gender_grouping").value == "race"
    band = at.slider(key="gender_band").value
    assert band == (0.45, 0.55) and at.slider(key="gender_threshold").value == 0.5
    for threshold in np.round(np.arange(0.05, 0.951, 0.05), 2).tolist():
        at.slider(key="gender_threshold").set_value(threshold).run()
        assert at.slider(key="gender_threshold").value == threshold
        lo, hi = assert_section_drawn(at, threshold, val)
        assert hi - lo == pytest.approx(0.10)  # the band keeps its width...
        assert (lo, hi) == pytest.approx((threshold - 0.05, threshold + 0.05))  # ...and its place around it
        assert at.caption[0].value == gb.BAND_MOVED.format(lo=lo, hi=hi, was_lo=band[0], was_hi=band[1])
        band = (lo, hi)


def test_a_band_moved_off_the_threshold_takes_it_along(page, val):
    at = page
    at.slider(key="gender_threshold").set_value(0.5).run()
    at.slider(key="gender_band").set_value((0.6, 0.8)).run()
    assert at.slider(key="gender_threshold").value == 0.6
    assert at.caption[0].value == gb.THRESHOLD_MOVED.format(threshold=0.6, was=0.5)
    assert_section_drawn(at, 0.6, val)
    at.slider(key="gender_band").set_value((0.1, 0.3)).run()
    assert at.slider(key="gender_threshold").value == 0.3
    assert_section_drawn(at, 0.3, val)
    at.slider(key="gender_band").set_value((0.2, 0.4)).run()  # holds 0.3: nothing moves, nothing said
    assert at.slider(key="gender_threshold").value == 0.3
    assert not any(c.value.startswith(("The threshold moved", "The Uncertain band moved")) for c in at.caption)


def test_the_rates_chart_marks_the_tables_band_rows(page, val):
    at = page
    at.slider(key="gender_threshold").set_value(0.4).run()
    at.slider(key="gender_band").set_value((0.3, 0.5)).run()  # holds 0.4: the threshold stays
    at.slider(key="gender_threshold").set_value(0.35).run()  # the band keeps its place: [0.3, 0.5] -> [0.25, 0.45]
    lo, hi = assert_section_drawn(at, 0.35, val)
    assert (lo, hi) == pytest.approx((0.25, 0.45))
    banded = what_if_table(at)
    banded = banded[banded["setting"] == gb.BANDED].set_index("group")
    fig = sweep_figure(at)
    markers = [t for t in fig["data"] if t["mode"] == "markers"]
    assert len(markers) == 3 * len(banded)  # one per rate and group, overall first
    names = {v: k for k, v in charts.SWEEP_NAMES.items()}
    for i, group in enumerate(banded.index):
        for trace in markers[3 * i: 3 * i + 3]:
            assert values(trace["x"]).tolist() == [0.35]
            assert values(trace["y"])[0] == pytest.approx(banded.loc[group, names[trace["name"]]], abs=1e-12)
    assert fig["layout"]["yaxis"]["tickformat"].endswith("%")
