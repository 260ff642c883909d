"""The Bias page's age-threshold section (issue 34 item 4) on the shipped checkpoint: the table of the page's
grouping at the picked threshold and buffer is fairness.thresholds' own, and it follows the page's choice of faces
(without confirmed label errors, it is recomputed without them)."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from agegender.fairness import tables
from agegender.fairness import thresholds as T
from agegender.predictions import load_predictions
from agegender.review import audit as A
from agegender.review import verdicts as R

from ..conftest import ROOT

SHIPPED = ROOT / "checkpoints" / "dlib-resnet29-utkface"


@pytest.fixture
def shipped(tmp_path, monkeypatch):
    """A copy of the shipped checkpoint with one suspect reviewed "label wrong"; (the page on its val split, the
    predictions, that face's file)."""
    ck = tmp_path / "ck" / SHIPPED.name
    shutil.copytree(SHIPPED, ck)
    df = load_predictions(ck, "val")
    audit = A.audit_from_predictions(df, ck)
    wrong = audit[audit["flagged"]].head(1)
    R.mark(R.review_path(ck, "val"), wrong, R.WRONG)
    monkeypatch.setenv("AGEGENDER_CHECKPOINTS", str(ck.parent))
    at = AppTest.from_file(str(ROOT / "dashboard" / "app.py"), default_timeout=180).run()
    at.switch_page("pages/bias.py").run()
    assert not at.exception and not at.error
    return at, df, wrong["file"].iloc[0]


def ages_table(at) -> pd.DataFrame:
    return next(d for d in at.dataframe if "false_adult_rate" in d.value).value


def expected(df: pd.DataFrame, threshold: int, buffer: int, grouping: str) -> pd.DataFrame:
    return T.threshold_errors(df, (threshold,), buffer, [grouping]).drop(columns=["threshold", "decision"])


def test_the_section_shows_the_librarys_table_at_the_picked_threshold_and_buffer(shipped):
    at, df, _ = shipped
    assert "Age thresholds" in [s.value for s in at.subheader]
    grouping = at.selectbox(key="bias_grouping").value
    assert at.selectbox(key="bias_age_t").value == 18 and at.slider(key="bias_age_buffer").value == 0
    pd.testing.assert_frame_equal(ages_table(at).reset_index(drop=True), expected(df, 18, 0, grouping))
    before = ages_table(at).iloc[0]
    assert before["group"] == T.OVERALL and before["false_adults"] > 0

    at.slider(key="bias_age_buffer").set_value(7).run()
    assert not at.exception and not at.error
    after = ages_table(at).iloc[0]
    assert after["false_adults"] < before["false_adults"] and after["n_minors"] == before["n_minors"]
    assert any("predicted age of 25 or over" in c.value for c in at.caption)

    at.selectbox(key="bias_age_t").set_value(13)
    at.selectbox(key="bias_grouping").set_value("race").run()
    assert not at.exception and not at.error
    pd.testing.assert_frame_equal(ages_table(at).reset_index(drop=True), expected(df, 13, 7, "race"))
    shares = next(d for d in at.dataframe if "false_adult_rate" in d.value)
    assert shares.proto.placeholder == tables.MISSING


def test_the_section_follows_the_pages_choice_of_faces(shipped):
    at, df, wrong = shipped
    n = len(df)
    overall = ages_table(at).iloc[0]
    assert overall["n_minors"] + overall["n_adults"] + overall["n_unknown"] == n
    at.radio(key="bias_leave_out").set_value(A.CONFIRMED_ERRORS).run()
    assert not at.exception and not at.error
    overall = ages_table(at).iloc[0]
    assert overall["n_minors"] + overall["n_adults"] + overall["n_unknown"] == n - 1
    grouping = at.selectbox(key="bias_grouping").value
    pd.testing.assert_frame_equal(ages_table(at).reset_index(drop=True),
                                  expected(df[df["file"] != wrong], 18, 0, grouping))
