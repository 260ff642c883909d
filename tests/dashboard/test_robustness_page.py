"""The Robustness page on a copy of the shipped checkpoint: a sweep file beside it (written by the library from known
arrays, one group moved) is drawn per group with that group flagged; a source without one shows the command. And
the shipped checkpoints' own sweeps, as a reviewer first sees them."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from agegender.fairness import sensitivity as sens

from ..conftest import ROOT

APP = str(ROOT / "dashboard" / "app.py")
CKPT = "dlib-resnet29-utkface"
STRENGTHS = (0.25, 0.5, 0.75, 1.0)


def write_sweep(folder) -> None:
    """A val sweep of 'blur' over 240 faces: the Black faces' predicted age falls 8 years at full strength."""
    rng = np.random.default_rng(0)
    n = 240
    table = pd.DataFrame({"race": [("White", "Black", "Asian", "Indian")[i % 4] for i in range(n)],
                          "gender": ["female" if i % 3 else "male" for i in range(n)]})
    base_age, base_pf = rng.uniform(20, 60, n), rng.uniform(0, 1, n)
    shift = np.where(table["race"] == "Black", -8.0, 0.0)[:, None] * np.array(STRENGTHS)
    age = base_age[:, None] + shift + rng.normal(0, 0.3, (n, 4))
    pf = base_pf[:, None] + rng.normal(0, 0.01, (n, 4))
    rows = sens.group_rows(table, ["race", "gender"], STRENGTHS, base_age, base_pf, age, pf, n_boot=200)
    perturbations = sens.with_q({"blur": {"parameter": "Gaussian sigma (px of the chip)", "levels": [0.7, 1, 1.4, 2],
                                          "strengths": list(STRENGTHS), "by_group": rows}})
    (folder / "sweep-val.json").write_text(sens.to_json({"n_faces": n, "tta": False, "perturbations": perturbations}))


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpts")
    folder = root / CKPT
    shutil.copytree(ROOT / "checkpoints" / CKPT, folder)
    (folder / "sweep-test.json").unlink(missing_ok=True)  # the shipped sweep: this copy is the one without
    write_sweep(folder)
    mp = pytest.MonkeyPatch()
    mp.setenv("AGEGENDER_CHECKPOINTS", str(root))
    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state["picker_names"] = [CKPT]
    at.run()
    at.switch_page("pages/robustness.py").run()
    yield at, folder
    mp.undo()


def test_the_page_draws_each_group_and_flags_the_one_that_moved(page):
    at, _ = page
    assert not at.exception and not at.error
    figs = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    assert len(figs) == 1
    traces = {t["name"]: t for t in figs[0]["data"]}
    assert set(traces) == {"White", "Black (flagged)", "Asian", "Indian"}
    assert traces["Black (flagged)"]["line"]["width"] == 4 and traces["White"]["line"]["width"] == 2
    flagged = at.dataframe[-1].value
    assert list(zip(flagged["perturbation"], flagged["grouping"], flagged["group"], flagged["metric"],
                    strict=True)) == [("blur", "race", "Black", "age")]
    groups = at.dataframe[0].value
    black = groups[groups["group"] == "Black"].iloc[0]
    assert -8.5 < black["sensitivity_age"] < -7.5  # the 8 years planted at full strength
    assert black["sensitivity_age_lo"] < black["sensitivity_age"] < black["sensitivity_age_hi"]


def test_the_grouping_picker_redraws(page):
    at, _ = page
    at.selectbox(key="rob_grouping").set_value("gender").run()
    names = {t["name"] for t in json.loads(at.get("plotly_chart")[0].proto.spec)["data"]}
    assert names == {"male", "female"}
    at.selectbox(key="rob_grouping").set_value("race").run()


def test_a_source_without_a_sweep_shows_the_command(page):
    at, folder = page
    at.selectbox(key="rob_source").set_value("test").run()
    assert not at.exception and not at.error
    assert not at.get("plotly_chart")
    code = [c.value for c in at.code]
    assert any(c.startswith("python -m agegender.sweep --checkpoint") and "--split test" in c
               and str(folder / "sweep-test.json") in c for c in code), code
    assert "No counterfactual sweep" in at.info[0].value


@pytest.mark.parametrize("name", ["dlib-resnet29-utkface", "dlib-resnet29-balanced"])
def test_the_shipped_sweep_is_drawn_and_every_interval_holds_its_estimate(name, monkeypatch):
    shipped = ROOT / "checkpoints" / name / "sweep-test.json"
    assert shipped.is_file(), f"{name} ships no test-split sweep"
    monkeypatch.setenv("AGEGENDER_CHECKPOINTS", str(ROOT / "checkpoints"))  # the module's fixture points elsewhere
    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state["picker_names"] = [name]
    at.run()
    at.switch_page("pages/robustness.py").run()
    at.selectbox(key="rob_source").set_value("test").run()
    assert not at.exception and not at.error
    names = {t["name"].removesuffix(" (flagged)") for t in json.loads(at.get("plotly_chart")[0].proto.spec)["data"]}
    assert names == {"White", "Black", "Asian", "Indian", "Others"}
    groups = at.dataframe[0].value
    assert len(groups) and (groups["n"] >= 1).all()
    for col in ("sensitivity_age", "sensitivity_p_female", "flip_rate"):
        inside = (groups[f"{col}_lo"] <= groups[col] + 1e-12) & (groups[col] <= groups[f"{col}_hi"] + 1e-12)
        assert inside[groups[col].notna()].all(), groups.loc[~inside, ["group", col, f"{col}_lo", f"{col}_hi"]]
    every = json.loads(shipped.read_text())["perturbations"]
    assert set(every) == {"yaw", "blur", "downscale", "jpeg", "brightness", "grayscale", "occlusion"}
