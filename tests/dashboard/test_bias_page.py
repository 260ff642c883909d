"""What leaves the bias report's figures (issue 35, item 4): by default nothing; on request only the labels a
reviewer marked "label wrong"; all suspects only as a what-if that says so. The rule (agegender.review.audit.left_out),
the report's --leave-out, and the Bias page on the shipped checkpoint."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pandas as pd
import pytest
from streamlit import dataframe_util
from streamlit.testing.v1 import AppTest

from agegender.fairness import tables
from agegender.fairness.groups import prepare
from agegender.labels import called_female
from agegender.predictions import load_predictions, write_predictions
from agegender.report import bias as report
from agegender.report import command
from agegender.review import audit as A
from agegender.review import verdicts as R

from ..conftest import ROOT
from ..review.test_audit import fake_table

SHIPPED = ROOT / "checkpoints" / "dlib-resnet29-utkface"


# ---- the rule -------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def reviewed():
    """A table, its audit with verdicts: one suspect reviewed wrong, one confirmed, one face the audit did not
    flag reviewed wrong, the other suspects unreviewed; and those files."""
    table, _ = fake_table(seed=3)
    audit = A.audit_table(table)
    flagged, clean = list(audit[audit["flagged"]]["file"]), list(audit[~audit["flagged"]]["file"])
    files = {"wrong": flagged[0], "confirmed": flagged[1], "wrong_unflagged": clean[0], "unreviewed": set(flagged[2:])}
    verdict = {flagged[0]: R.WRONG, flagged[1]: R.CONFIRMED, clean[0]: R.WRONG}
    assert len(files["unreviewed"]) >= 5
    return table, audit.assign(verdict=audit["file"].map(verdict).fillna("")), files


def gone(table, kept) -> set[str]:
    return set(table["file"]) - set(kept["file"])


def test_all_faces_keeps_every_row(reviewed):
    table, audit, _ = reviewed
    pd.testing.assert_frame_equal(A.leave_out(table, audit, A.ALL_FACES), table)
    assert not A.left_out(audit, A.ALL_FACES).any()


def test_without_confirmed_errors_only_the_labels_reviewed_wrong_leave(reviewed):
    table, audit, f = reviewed
    kept = A.leave_out(table, audit, A.CONFIRMED_ERRORS)
    assert gone(table, kept) == {f["wrong"], f["wrong_unflagged"]}
    assert f["unreviewed"] <= set(kept["file"]) and f["confirmed"] in set(kept["file"])
    assert list(kept["file"]) == [x for x in table["file"] if x in set(kept["file"])]  # the table's order


def test_the_what_if_leaves_out_unreviewed_suspects_and_keeps_confirmed_ones(reviewed):
    table, audit, f = reviewed
    kept = A.leave_out(table, audit, A.ALL_SUSPECTS)
    assert gone(table, kept) == f["unreviewed"] | {f["wrong"], f["wrong_unflagged"]}
    assert f["confirmed"] in set(kept["file"])
    pd.testing.assert_frame_equal(A.without_suspects(table, audit), kept)


def test_without_verdicts_nothing_is_confirmed_wrong(reviewed):
    table, audit, _ = reviewed
    bare = audit.drop(columns="verdict")
    assert len(A.leave_out(table, bare, A.CONFIRMED_ERRORS)) == len(table)
    assert gone(table, A.leave_out(table, bare, A.ALL_SUSPECTS)) == set(audit["file"][audit["flagged"]])


def test_an_unknown_mode_is_refused(reviewed):
    table, audit, _ = reviewed
    with pytest.raises(ValueError) as e:
        A.leave_out(table, audit, "clean")
    assert str(e.value) == A.ERR_MODE.format(mode="clean", known="all, confirmed, suspects")


@pytest.mark.parametrize("mode", A.LEAVE_OUT)
def test_the_share_per_group_counts_what_each_mode_leaves_out(reviewed, mode):
    table, audit, f = reviewed
    shares = A.suspect_share_by_group(prepare(table), audit, ["race"], mode=mode)
    left = gone(table, A.leave_out(table, audit, mode))
    for r in shares.itertuples():
        inside = table[table["race"] == r.group]["file"]
        assert r.left_out == inside.isin(left).sum() and r.n == len(inside)
        assert r.unreviewed == inside.isin(f["unreviewed"]).sum()
        assert r.wrong == inside.isin({f["wrong"], f["wrong_unflagged"]}).sum()
        assert r.suspects == r.gender_suspects + r.age_suspects
    assert shares["suspects"].sum() == A.counts(audit)["total"] and shares["left_out"].sum() == len(left)


def test_each_mode_says_what_left(reviewed):
    table, audit, f = reviewed
    n, u = len(table), len(f["unreviewed"])
    text = report.leave_out_text(audit, A.CONFIRMED_ERRORS, n, n - 2)
    assert text.startswith(f"Without confirmed label errors: 2 of {n} faces left out, those a reviewer marked "
                           f"\"{R.WRONG}\"; the {u} unreviewed suspects stay in.")
    text = report.leave_out_text(audit, A.ALL_SUSPECTS, n, n - u - 2)
    assert text.startswith(f"What-if, not a corrected figure: {u + 2} of {n} faces left out, every suspect not "
                           f"confirmed and every label reviewed wrong, of which {u} unreviewed suspects nobody has "
                           "judged")
    assert "What-if" not in report.leave_out_text(audit, A.ALL_FACES, n, n)


def test_the_report_leaves_out_confirmed_errors_or_all_suspects_as_asked(reviewed, tmp_path):
    table, audit, f = reviewed
    path, review, js = tmp_path / "p.csv", tmp_path / "review.csv", tmp_path / "r.json"
    write_predictions(table, path)
    R.mark(review, audit[audit["file"] == f["wrong"]], R.WRONG)
    base = ["--predictions", str(path), "--json", str(js), "--by", "race", "--n-boot", "20", "--review", str(review),
            "--label-audit"]
    assert command.main(base) == 0  # the documented default: the what-if, named as one
    section = json.loads(js.read_text())["label_audit"]
    assert (section["mode"], section["what_if"]) == (A.ALL_SUSPECTS, True)
    k = A.counts(audit)["total"]
    assert section["left_out"] == k and section["unreviewed_left_out"] == k - 1
    assert "a what-if, not corrected figures" in report.label_audit_text(section)
    assert command.main([*base, "--leave-out", "confirmed"]) == 0
    section = json.loads(js.read_text())["label_audit"]
    assert (section["mode"], section["what_if"], section["left_out"], section["unreviewed_left_out"]) == \
        (A.CONFIRMED_ERRORS, False, 1, 0)
    assert sum(r["left_out"] for r in section["share_by_group"]["race"]) == 1
    with pytest.raises(SystemExit):  # keeping every face is the report's own figures, not a label-audit choice
        command.main([*base, "--leave-out", "all"])


# ---- the page, on the shipped checkpoint ----------------------------------------------------------------------

def shown(element) -> pd.DataFrame:
    """The text a styled st.dataframe shows (its Styler's display values)."""
    return dataframe_util.convert_arrow_bytes_to_pandas_df(element.proto.arrow_data.styler.display_values)


def gender_metric(at):
    return next(m for m in at.metric if m.label.startswith("gender accuracy"))


@pytest.fixture
def shipped(tmp_path, monkeypatch):
    """A copy of the shipped checkpoint (its verdicts are written outside it anyway) with one suspect reviewed
    "label wrong" and one "label confirmed"; (the page on its val split, predictions, audit with verdicts)."""
    ck = tmp_path / "ck" / SHIPPED.name
    shutil.copytree(SHIPPED, ck)
    df = load_predictions(ck, "val")
    assert A.audit_needs_model(df, ck) == ""  # the audit reads the predictions alone: no model run
    audit = A.audit_from_predictions(df, ck)
    flagged = audit[audit["flagged"]]
    R.mark(R.review_path(ck, "val"), flagged.head(1), R.WRONG)
    R.mark(R.review_path(ck, "val"), flagged.iloc[1:2], R.CONFIRMED)
    audit = R.with_reviews(audit, R.read_review(R.review_path(ck, "val")))
    monkeypatch.setenv("AGEGENDER_CHECKPOINTS", str(ck.parent))
    at = AppTest.from_file(str(ROOT / "dashboard" / "app.py"), default_timeout=180).run()
    at.switch_page("pages/bias.py").run()
    assert not at.exception and not at.error
    return at, df, audit


def accuracy_text(df) -> str:
    return tables.metric_text("gender_accuracy", float(np.mean(called_female(df["p_female"]) ==
                                                               (df["gender"] == "female"))))


def test_the_bias_page_keeps_every_face_by_default_and_says_what_each_mode_leaves_out(shipped):
    at, df, audit = shipped
    n, k = len(df), A.counts(audit)["total"]
    unreviewed = k - 2
    assert at.radio(key="bias_leave_out").value == A.ALL_FACES
    assert gender_metric(at).label == f"gender accuracy (n={n:,})"
    assert gender_metric(at).value == accuracy_text(df)  # the full figure: every suspect counted
    assert not any("left out" in c.value for c in at.caption)

    at.radio(key="bias_leave_out").set_value(A.CONFIRMED_ERRORS).run()
    assert not at.exception and not at.error
    wrong = audit[audit["verdict"] == R.WRONG]["file"]
    assert gender_metric(at).label == f"gender accuracy (n={n - 1:,})"
    assert gender_metric(at).value == accuracy_text(df[~df["file"].isin(wrong)])
    assert any(c.value.startswith(f"Without confirmed label errors: 1 of {n:,} faces left out") and
               f"the {unreviewed} unreviewed suspects stay in" in c.value for c in at.caption)

    at.radio(key="bias_leave_out").set_value(A.ALL_SUSPECTS).run()
    assert not at.exception and not at.error
    assert gender_metric(at).label == f"gender accuracy (n={n - k + 1:,})"  # the confirmed one stays
    assert any(c.value.startswith(f"What-if, not a corrected figure: {k - 1} of {n:,} faces left out") and
               f"of which {unreviewed} unreviewed suspects" in c.value for c in at.caption)


def test_the_bias_page_shows_counts_as_counts_and_no_ratio_of_signed_errors(shipped):
    at, df, audit = shipped
    disparity = next(d for d in at.dataframe if "ratio" in d.value)
    raw, text = disparity.value.set_index("metric"), shown(disparity).set_index("metric")
    assert np.isnan(raw.loc["age_bias", "ratio"]) and text.loc["age_bias", "ratio"] == tables.MISSING
    assert raw.loc["age_mae", "ratio"] > 1 and text.loc["age_mae", "ratio"] != tables.MISSING
    assert any("left empty for signed metrics" in c.value for c in at.caption)

    at.radio(key="bias_leave_out").set_value(A.CONFIRMED_ERRORS).run()
    assert len(at.dataframe) >= 4 and all(d.proto.placeholder == tables.MISSING for d in at.dataframe)  # not "None"
    shares = next(d for d in at.dataframe if "suspects" in d.value)
    assert shares.value["suspects"].sum() == A.counts(audit)["total"]
    text = shown(shares)
    for col in A.SHARE_COUNTS:  # "0", "12": never "0.00 y"
        assert text[col].map(lambda s: re.fullmatch(r"\d[\d,]*", s) is not None).all(), col
