"""The Compare page's tiles on the shipped pair: a change is coloured only when its paired interval leaves
out 0, and the interval is on the tile (agegender.fairness.compare.verdict decides; the page draws)."""

import math

import numpy as np
import pytest
from streamlit.proto.Metric_pb2 import Metric as MetricProto
from streamlit.testing.v1 import AppTest

from agegender.fairness.compare import BETTER, NO_FIGURE, NOISE, WORSE, gaps, pair, paired_deltas, verdict
from agegender.fairness.measures import METRICS
from agegender.predictions import load_predictions

from ..conftest import ROOT

APP = str(ROOT / "dashboard" / "app.py")
SHIPPED = ROOT / "checkpoints"
BASE, OTHER = "dlib-resnet29-utkface", "dlib-resnet29-balanced"
TILES = ("age_mae", "age_bias", "gender_accuracy", "female_as_male", "male_as_female")


# ---- the decision --------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("delta", "lo", "hi", "higher", "before", "said"), [
    (0.02, 0.01, 0.03, True, 0.9, BETTER),  # accuracy up, interval above 0
    (0.02, 0.01, 0.03, False, 4.0, WORSE),  # an error up
    (-0.5, -0.8, -0.2, False, 4.0, BETTER),
    (0.0, -0.01, 0.01, True, 0.9, NOISE),  # the "+0%" that was drawn red
    (-0.005, -0.011, 0.0, False, 0.05, NOISE),  # an end on 0 holds 0
    (0.3, -0.1, 0.7, None, 1.0, NOISE),
    (0.14, 0.11, 0.17, None, 0.32, WORSE),  # a positive bias grew
    (-0.2, -0.3, -0.1, None, 0.32, BETTER),  # ... shrank: every b the interval allows is nearer zero
    (-0.8, -0.9, -0.7, None, 0.32, WORSE),  # ... crossed zero to a larger negative bias
    (-0.5, -0.7, -0.3, None, 0.32, NOISE),  # ... crossed zero, maybe nearer, maybe farther
    (-0.1, -0.2, -0.05, None, -0.5, WORSE),  # a negative bias grew more negative
    (float("nan"), float("nan"), float("nan"), False, 0.1, NO_FIGURE),
])
def test_verdict(delta, lo, hi, higher, before, said):
    assert verdict(delta, lo, hi, higher, before) == said


def test_verdict_colours_nothing_whose_interval_holds_zero():
    rng = np.random.default_rng(0)
    for _ in range(2000):
        lo, hi = np.sort(rng.normal(0, 1, 2))
        delta, before = rng.uniform(lo, hi), rng.normal(0, 1)
        for higher in (True, False, None):
            said = verdict(delta, lo, hi, higher, before)
            assert (said == NOISE) == (lo <= 0 <= hi) or (higher is None and said == NOISE)
            if said == BETTER and higher is None:
                assert abs(before + lo) < abs(before) and abs(before + hi) < abs(before)


# ---- the page ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def figures():
    """What the page computes, computed here the same way (same seed): overall deltas and race gaps."""
    m = pair(load_predictions(SHIPPED / BASE, "test"), load_predictions(SHIPPED / OTHER, "test"))
    return paired_deltas(m, None, TILES).iloc[0], gaps(m, "race")


@pytest.fixture(scope="module")
def page():
    mp = pytest.MonkeyPatch()
    mp.setenv("AGEGENDER_CHECKPOINTS", str(SHIPPED))
    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state["picker_names"] = [BASE, OTHER]
    at.run()
    at.switch_page("pages/compare.py").run()
    at.selectbox(key="cmp_split").set_value("test").run()
    at.selectbox(key="cmp_grouping").set_value("race").run()
    yield at
    mp.undo()


def expected_colour(delta, lo, hi, higher, before):
    """The rule said independently of verdict: grey unless the interval leaves out 0; then green when the
    change is the good way (for a signed error: every b the interval allows nearer zero)."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo <= 0 <= hi:
        return {MetricProto.GRAY}
    if higher is None:
        nearer = abs(before + lo) < abs(before) and abs(before + hi) < abs(before)
        farther = before + lo > abs(before) or before + hi < -abs(before)
        return {MetricProto.GREEN} if nearer else {MetricProto.RED} if farther else {MetricProto.GRAY}
    return {MetricProto.GREEN if (lo > 0) == higher else MetricProto.RED}


def test_page_shows_the_pair(page):
    assert not page.exception and not page.error
    assert any(h.value == f"{OTHER} against {BASE}" for h in page.header)


def test_headline_tiles_colour_only_what_their_interval_shows(page, figures):
    o, _ = figures
    tiles = {m.label: m for m in page.metric}
    colours = []
    for name in TILES:
        tile = tiles[METRICS[name].label]
        delta, lo, hi = o[f"{name}_delta"], o[f"{name}_delta_lo"], o[f"{name}_delta_hi"]
        assert lo <= delta <= hi  # no interval leaves out its own estimate
        assert tile.proto.color in expected_colour(delta, lo, hi, METRICS[name].higher_is_better, o[f"{name}_a"])
        said = verdict(delta, lo, hi, METRICS[name].higher_is_better, o[f"{name}_a"])
        assert tile.proto.delta_description.startswith("95% [") and tile.proto.delta_description.endswith(said)
        colours.append(tile.proto.color)
    # the shipped pair has both kinds, so the test sees a coloured tile and a grey one
    assert MetricProto.GRAY in colours and set(colours) - {MetricProto.GRAY}


def test_gap_tiles_colour_only_what_their_interval_shows(page, figures):
    _, gap_tables = figures
    tiles = {m.label: m for m in page.metric}
    seen = 0
    for std, table in gap_tables.items():
        mix = " with each group given the overall age mix" if std else ""
        for _, r in table.iterrows():
            tile = tiles[f"Gap in {r['label']} between race groups{mix}"]
            assert r["change_lo"] <= r["change"] <= r["change_hi"]
            assert tile.proto.color in expected_colour(r["change"], r["change_lo"], r["change_hi"], False, 0.0)
            said = verdict(r["change"], r["change_lo"], r["change_hi"], False)
            text = f"95% [{r['change_lo']:+.0%}, {r['change_hi']:+.0%}]: {said}"
            assert tile.proto.delta_description == text
            seen += 1
    assert seen == 4  # age MAE and gender accuracy, as they are and age-standardised


def test_a_noise_tile_says_so_on_the_tile(page):
    grey = [m for m in page.metric if m.proto.delta and m.proto.color == MetricProto.GRAY]
    assert grey and all(m.proto.delta_description.endswith(NOISE) for m in grey)
