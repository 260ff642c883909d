"""Every chart writes a figure the way the tables write it (agegender.fairness.tables): shares, rates and accuracies in
percent on the axis and in the hover, a difference of rates in percentage points, years with at most one decimal,
scores as 0.xx, counts whole. Read from the figures' layouts and hovertemplates, on the shipped checkpoints."""

import re

import numpy as np
import pandas as pd
import pytest

from agegender.fairness import genderband as gb
from agegender.fairness import tables
from agegender.fairness.compare import pair, paired_deltas
from agegender.fairness.groups import GroupReport
from agegender.fairness.measures import METRICS
from agegender.predictions import load_predictions
from agegender.report import charts

from ..conftest import ROOT

SHIPPED = ROOT / "checkpoints"
RATES = ("gender_accuracy", "female_as_male", "male_as_female", "age_cs5")


@pytest.fixture(scope="module")
def test_split():
    return load_predictions(SHIPPED / "dlib-resnet29-utkface", "test")


@pytest.fixture(scope="module")
def by_race(test_split):
    return GroupReport(test_split, "race", n_boot=20)


def hovers(fig) -> list[str]:
    return [t.hovertemplate for t in fig.data if t.hovertemplate]


def number_formats(template: str) -> list[str]:
    """The d3 formats of a hovertemplate's figures: "%{y:.1%}" -> ".1%"."""
    return re.findall(r"%\{[^}:]+:([^}]+)\}", template)


def assert_percent(axis_layout, hover: str, ref: str = "y"):
    assert axis_layout.tickformat == charts.PERCENT.ticks and axis_layout.tickformat.endswith("%")
    assert f"%{{{ref}:.1%}}" in hover


# ---- the rule --------------------------------------------------------------------------------------------------

def test_every_metric_reads_in_a_chart_as_in_a_table():
    for name in METRICS:
        axis, kind = charts.axis_of(name), tables.kind_of(name)
        assert (axis is charts.PERCENT) == (kind is tables.PERCENT), name
        assert (axis is charts.YEARS) == (kind is tables.YEARS), name
        if axis is charts.PERCENT:  # a difference of rates: percentage points, as the tables write it
            d = charts.axis_of(name, delta=True)
            assert (d.scale, d.tick_suffix, d.hover) == (100.0, " pp", "+.1f")
            assert tables.metric_text(name, 0.021, delta=True).endswith(d.suffix)
    assert charts.axis_of("age_mae").ticks == ".1~f"  # years: at most one decimal
    assert charts.axis_of("gender_auc").ticks == ".2~f" and charts.axis_of("n").hover == ",.0f"
    assert charts.axis_of("age_mae", delta=True).text("y") == "%{y:+.1f} y"


# ---- the bias report -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("metric", [*RATES, "age_mae", "gender_auc"])
def test_group_bars_write_the_metric_as_the_tables_do(by_race, metric):
    fig = charts.group_bars(by_race, metric)
    axis = charts.axis_of(metric)
    (hover,) = hovers(fig)
    assert fig.layout.yaxis.tickformat == axis.ticks
    assert number_formats(hover) == [axis.hover] * 3 + [",.0f"]  # the figure, its interval, n
    if metric in RATES:
        assert_percent(fig.layout.yaxis, hover)
    else:
        assert "%" not in fig.layout.yaxis.tickformat and "%}" not in hover


def test_delta_bars_draw_a_difference_of_rates_in_percentage_points(test_split):
    other = load_predictions(SHIPPED / "dlib-resnet29-balanced", "test")
    d = paired_deltas(pair(test_split, other), "race", ("gender_accuracy", "age_mae"), n_boot=20)
    fig = charts.delta_bars(d, "gender_accuracy", "race", "A", "B")
    np.testing.assert_allclose(fig.data[0].y, 100 * d["gender_accuracy_delta"])
    assert fig.layout.yaxis.ticksuffix == " pp" and "%" not in fig.layout.yaxis.tickformat
    assert fig.layout.yaxis.title.text == "B − A (pp)"
    assert "%{y:+.1f} pp" in fig.data[0].hovertemplate
    years = charts.delta_bars(d, "age_mae", "race", "A", "B")
    np.testing.assert_allclose(years.data[0].y, d["age_mae_delta"])  # years are drawn as they are
    assert years.layout.yaxis.tickformat == "+.1~f" and "%{y:+.1f} y" in years.data[0].hovertemplate


@pytest.mark.parametrize("metric", ["gender_accuracy", "age_mae"])
def test_the_heatmap_cells_read_as_the_tables(test_split, metric):
    report = GroupReport(test_split, "race:gender", n_boot=10)
    fig = charts.intersection_heatmap(report, metric)
    heat = fig.data[0]
    assert heat.colorbar.tickformat == charts.axis_of(metric).ticks
    g = report.by_group.set_index(["race", "gender"])
    for i, race in enumerate(heat.y):
        for j, gender in enumerate(heat.x):
            value = g.loc[(race, gender), metric]
            assert heat.text[i][j].split("<br>")[0] == tables.metric_text(metric, value)
    if metric == "gender_accuracy":
        assert heat.text[0][0].split("<br>")[0].endswith("%")


def test_composition_shares_and_the_metric(by_race):
    fig = charts.composition_vs_error(by_race, "female_as_male")
    share, metric = fig.data
    assert_percent(fig.layout.yaxis, share.hovertemplate)
    assert_percent(fig.layout.yaxis2, metric.hovertemplate)
    # the right-hand axis places its own round ticks rather than the left one's gridlines (88.7%, 89.6%, ...)
    assert fig.layout.yaxis2.tickmode == "auto"
    years = charts.composition_vs_error(by_race, "age_mae")
    assert years.layout.yaxis2.tickformat == ".1~f" and "%{y:.1f} y" in years.data[1].hovertemplate


def test_age_scatters_in_years(test_split):
    for fig in (charts.predicted_vs_true(test_split), charts.residual_by_age(test_split)):
        assert fig.layout.xaxis.tickformat == ".1~f"
        assert all("%{x:.1f} y" in h for h in hovers(fig))
        assert not any(re.search(r":\.[2-9]f\}", h) for h in hovers(fig))  # never more than one decimal of a year
    assert charts.residual_by_age(test_split).layout.yaxis.tickformat == "+.1~f"


# ---- training ---------------------------------------------------------------------------------------------------

def test_training_accuracy_panels_in_percent():
    history = pd.DataFrame({"epoch": [1, 2, 3], "train_loss": [5.5, 4.5, 4.0], "train_age_mae": [15.3, 9.3, 8.0],
                            "train_gender_acc": [0.70, 0.81, 0.85], "val_age_mae": [9.2, 10.2, 8.1],
                            "val_gender_acc": [0.80, 0.81, 0.83], "ext_age_bin_acc": [None, 0.30, 0.35]})
    fig = charts.training_curves(history, best_epoch=3)
    assert [fig.layout[f"yaxis{i}"].tickformat for i in ("", 2, 3, 4)] == ["", ".1~f", ".1~%", ".1~%"]
    for trace in fig.data:
        rate = trace.yaxis in ("y3", "y4")
        assert ("%{y:.1%}" in trace.hovertemplate) == rate, trace.yaxis
    assert {fig.layout[f"xaxis{i}"].dtick for i in ("", 2, 3, 4)} == {1}  # three epochs: no tick at half an epoch


# ---- the gender threshold page ------------------------------------------------------------------------------------

def test_gender_threshold_charts_in_percent(test_split):
    roc = gb.roc_by_group(test_split, "race")
    fig = charts.roc_curves(roc.curves, roc.by_group, 0.5)
    for axis in (fig.layout.xaxis, fig.layout.yaxis):
        assert axis.tickformat == charts.PERCENT.ticks
    for hover in hovers(fig)[1:]:  # every group's line and marker (the diagonal has none)
        assert "%{x:.1%}" in hover and "%{y:.1%}" in hover
    rel = charts.reliability_diagram(gb.reliability_by_group(test_split, "race").bins)
    assert rel.layout.xaxis.tickformat == ".2~f"  # mean P(female), as the slider and the tables write it
    for hover in hovers(rel):
        assert_percent(rel.layout.yaxis, hover)
    what_if = gb.band_what_if(test_split, "race")
    bars = charts.abstention_bars(gb.abstention(what_if), 0.05)
    assert_percent(bars.layout.yaxis, bars.data[0].hovertemplate)
    assert number_formats(bars.data[0].hovertemplate) == [".1%", ".1%", ".1%", ",.0f"]


def test_threshold_rates_chart(test_split):
    sweep = gb.threshold_sweep(test_split, "race", 0.35, (0.3, 0.4))
    fig = charts.threshold_rates(sweep, 0.35)
    groups = list(dict.fromkeys(sweep["group"]))
    assert len(fig.data) == 2 * 3 * len(groups)  # per group and rate: the line and the marker at 0.35
    assert [a.text for a in fig.layout.annotations[:len(groups)]] == [
        f"{g} (n={int(sweep.loc[sweep['group'] == g, 'n'].iloc[0]):,})" for g in groups]
    yaxes = [fig.layout[k] for k in fig.layout if k.startswith("yaxis")]
    xaxes = [fig.layout[k] for k in fig.layout if k.startswith("xaxis")]
    assert len(yaxes) == len(groups) and all(a.tickformat == charts.PERCENT.ticks for a in yaxes)
    assert all(a.tickformat == ".2~f" and tuple(a.range) == (0, 1) for a in xaxes)
    for trace in fig.data:
        assert "%{y:.1%}" in trace.hovertemplate and "%{x:.3f}" in trace.hovertemplate
    markers = [t for t in fig.data if t.mode == "markers"]
    assert all(list(t.x) == [0.35] for t in markers)
    assert sum(s.type == "line" and s.x0 == 0.35 for s in fig.layout.shapes) == len(groups)  # dotted in each panel
    assert {t.name for t in fig.data if t.showlegend} == set(charts.SWEEP_NAMES.values())
