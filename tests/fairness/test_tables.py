"""Numbers that mislead (issue 35, item 5): counts shown as years, a ratio of signed errors, two texts for a
missing value."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from agegender.fairness import tables
from agegender.fairness.groups import RATIO_NOTE, GroupReport, prepare
from agegender.fairness.measures import METRICS
from agegender.report import bias as report
from agegender.review import audit as A

from ..review.test_audit import fake_table
from .test_fairness import fake_predictions

SIGNED = [m for m, metric in METRICS.items() if metric.higher_is_better is None]


def display_values(styler) -> list[list[str]]:
    """The text each cell of a Styler shows (what st.dataframe draws)."""
    styler._compute()
    return [[c["display_value"] for c in row[1:]] for row in styler._translate(False, False)["body"]]


# ---- counts read as whole numbers ------------------------------------------------------------------------------

@pytest.mark.parametrize("column", [*A.SHARE_COUNTS, "n", "n_images", "n_missed"])
def test_count_columns_are_counts_by_name_alone(column):
    assert tables.column_format(column).kind == tables.COUNT
    assert tables.column_format(column, pd.Series([0, 12_345])).kind == tables.COUNT


def test_the_suspect_table_shows_its_counts_as_integers():
    table, _ = fake_table(seed=3)
    shares = A.suspect_share_by_group(prepare(table), A.audit_table(table), ["race"])
    assert shares["age_suspects"].sum() >= 0 and shares["gender_suspects"].sum() > 0
    shown = tables.display(shares)
    for col in A.SHARE_COUNTS:
        assert shown[col].str.fullmatch(r"\d[\d,]*").all(), col
        assert list(shown[col]) == [f"{v:,}" for v in shares[col]]
    assert shown["share"].str.endswith("%").all()


def test_a_true_age_is_still_shown_in_years():
    assert tables.display(pd.DataFrame({"age": [25.0]}))["age"].iloc[0] == "25.0 y"


# ---- one text for a missing value ------------------------------------------------------------------------------

def awkward() -> pd.DataFrame:
    """A missing value of every sort pandas has, in every sort of column."""
    return pd.DataFrame({
        "group": ["a", None], "worst_group_clean": pd.Series([None, "x"], dtype=object),
        "age_mae": [1.5, np.nan], "n": pd.Series([3, pd.NA], dtype="Int64"), "too_small": [True, None],
        "new_figure": pd.Series([0.5, None], dtype=object),
    })


def test_display_writes_every_missing_cell_the_same_way():
    shown = tables.display(awkward())
    assert shown.iloc[1].to_dict() == {"group": tables.MISSING, "worst_group_clean": "x", "age_mae": tables.MISSING,
                                       "n": tables.MISSING, "too_small": tables.MISSING,
                                       "new_figure": tables.MISSING}
    assert shown.iloc[0].to_dict() == {"group": "a", "worst_group_clean": tables.MISSING, "age_mae": "1.50 y",
                                       "n": "3", "too_small": True, "new_figure": 0.5}


def test_styled_writes_every_missing_cell_the_same_way():
    cells = display_values(tables.styled(awkward()))
    missing = [cells[0][1], cells[1][0], *cells[1][2:]]
    assert missing == [tables.MISSING] * 6
    assert cells[0][2:4] == ["1.50 y", "3"]


@pytest.mark.parametrize("value", [None, np.nan, pd.NA, pd.NaT, float("inf")])
def test_format_value_writes_any_missing_value_as_missing(value):
    assert tables.format_value(value, tables.YEARS) == tables.MISSING


# ---- no ratio of signed figures --------------------------------------------------------------------------------

def test_the_ratio_is_only_given_where_it_means_something():
    assert set(SIGNED) == {"age_bias", "age_bin_error"}
    d = GroupReport(prepare(fake_predictions(3000)), "race", n_boot=0, min_count=10).disparity().set_index("metric")
    assert np.isnan(d.loc["age_bias", "ratio"]) and np.isfinite(d.loc["age_bias", "gap"])
    unsigned = d.drop(index=[m for m in SIGNED if m in d.index])
    assert np.allclose(unsigned["ratio"], unsigned["worst"] / unsigned["best"])
    shown = tables.display(d.reset_index())
    assert shown.set_index("metric").loc["age_bias", "ratio"] == tables.MISSING


def test_the_json_and_html_reports_carry_no_ratio_of_signed_figures():
    df = fake_predictions(3000)
    reports = report.build(df, ["race"], n_boot=20, min_count=10)
    rows = {r["metric"]: r for r in report.to_json(reports, "t")["groupings"]["race"]["disparity"]}
    assert rows["age_bias"]["ratio"] is None and rows["age_mae"]["ratio"] > 1
    json.dumps(rows, allow_nan=False)  # null, never NaN
    assert RATIO_NOTE in report.to_html(reports, df, "t", searched=None)
