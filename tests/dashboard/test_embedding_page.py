"""The Embedding map page on a copy of the shipped checkpoint whose val predictions are those of 60 generated
UTKFace-named chips: the map draws every face, a colour picker recolours it, and a selection set through session
state (what a box selection leaves there) fills the table with exactly the selected files and their figures."""

import base64
import json
import shutil

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from agegender.predictions import write_predictions

from ..conftest import ROOT, make_dataset

APP = str(ROOT / "dashboard" / "app.py")
CKPT = "dlib-resnet29-utkface"
N = 60


def small_source(root, data) -> list[str]:
    """A copy of the shipped checkpoint in ``root`` whose val predictions are made up for N chips at ``data``: the
    first 20 with an age 30 years off."""
    folder = root / CKPT
    shutil.copytree(ROOT / "checkpoints" / CKPT, folder)
    names = make_dataset(data, n=N, size=48)
    rng = np.random.default_rng(0)
    age = np.array([int(n.split("_")[0]) for n in names], float)
    table = pd.DataFrame({
        "file": names, "split": "val", "age": age, "gender": ["male" if n.split("_")[1] == "0" else "female"
                                                              for n in names],
        "race": [("White", "Black", "Asian", "Indian", "Others")[int(n.split("_")[2])] for n in names],
        "found": True, "pred_age": age + np.where(np.arange(N) < 20, 30.0, rng.normal(0, 2, N)),
        "p_female": rng.uniform(0, 1, N)})
    write_predictions(table, folder / "predictions-val.csv")
    return names


def open_page(root, data, cache) -> AppTest:
    mp = pytest.MonkeyPatch()
    mp.setenv("AGEGENDER_CHECKPOINTS", str(root))
    mp.setenv("AGEGENDER_UTKFACE", str(data))
    mp.setenv("AGEGENDER_CACHE", str(cache))
    at = AppTest.from_file(APP, default_timeout=300)
    at.session_state["picker_names"] = [CKPT]
    at.run()
    at.switch_page("pages/embedding.py").run()
    return at, mp


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpts")
    data = tmp_path_factory.mktemp("utk") / "UTKFace"
    names = small_source(root, data)
    at, mp = open_page(root, data, tmp_path_factory.mktemp("cache"))
    yield at, names, root / CKPT
    mp.undo()


def decoded(v) -> list:
    """A figure's array as plotly's JSON holds it: a list, or a typed array ({"dtype", "bdata": base64})."""
    if isinstance(v, dict):
        return np.frombuffer(base64.b64decode(v["bdata"]), v["dtype"]).tolist()
    return list(v)


def map_points(at) -> dict[str, list]:
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    return {t["name"]: decoded(t["customdata"]) for t in spec["data"]}


def test_the_map_draws_every_face(page):
    at, names, _ = page
    assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])
    points = map_points(at)
    rows = sorted(r for v in points.values() for r in v)
    assert rows == list(range(N))
    assert "Drag a box" in at.info[-1].value  # nothing selected yet


def test_the_colour_picker_recolours_by_group(page):
    at, _, _ = page
    at.selectbox(key="emb_colour").set_value("gender").run()
    assert not at.exception
    assert set(map_points(at)) == {"female", "male"}


def test_a_selection_fills_the_table_with_its_files_and_figures(page):
    at, names, folder = page
    key = f"emb_selected|{folder}|val"  # the page keeps a selection per checkpoint and source
    assert at.session_state[key] == ()
    picked = tuple(names[:20])  # the faces whose age is 30 years off
    at.session_state[key] = picked
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    figures, listed = at.dataframe[-2].value, at.dataframe[-1].value
    assert sorted(listed["file"]) == sorted(picked)
    assert listed["face"].str.startswith("data:image/jpeg;base64,").all()
    mae = figures.set_index("metric").loc["age_mae"]
    assert mae["n_selected"] == 20 and mae["n_rest"] == N - 20
    assert mae["selected"] == pytest.approx(30.0)
    assert mae["gap"] > 25 and mae["gap_lo"] > 20 and mae["p_worse"] < 1e-6
    assert any(f"20 faces selected of {N}" in c.value for c in at.caption)


def test_the_selection_survives_a_rerun_and_a_colour_change(page):
    at, names, _ = page
    at.selectbox(key="emb_colour").set_value("race").run()
    assert sorted(at.dataframe[-1].value["file"]) == sorted(names[:20])
    at.button(key="emb_clear").click().run()
    assert "Drag a box" in at.info[-1].value
