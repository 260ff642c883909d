"""review.mapview on generated tables: colour columns against hand counts, the figure's customdata naming rows, a
selection event to rows, the kept selection across reruns, and a planted bad selection's figures and gap."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from agegender.fairness.groups import prepare
from agegender.review import mapview as M

N = 400


def table(seed: int = 0) -> pd.DataFrame:
    """N faces on a map; the first 50 with an age 20 years off and called the wrong gender."""
    rng = np.random.default_rng(seed)
    age = rng.integers(5, 80, N).astype(float)
    gender = np.where(np.arange(N) % 2, "female", "male")
    right = np.where(gender == "female", 0.9, 0.1)
    p_female = np.where(np.arange(N) < 50, 1 - right, right)
    return prepare(pd.DataFrame({
        "file": [f"{i:04d}.jpg" for i in range(N)], "x": rng.normal(size=N), "y": rng.normal(size=N),
        "split": "test", "age": age, "gender": gender, "race": rng.choice(["White", "Black", "Asian"], N),
        "found": True, "pred_age": age + np.where(np.arange(N) < 50, 20.0, rng.normal(0, 3, N)),
        "p_female": p_female, "brightness": rng.uniform(20, 200, N), "grayscale": rng.random(N) < 0.1}))


def test_colour_options_offer_groups_errors_and_what_was_given():
    t = table()
    options = M.colour_options(t)
    assert options[:3] == ["age_bucket", "gender", "age_bin"] and "race" in options and "grayscale" in options
    assert {M.ABS_AGE_ERROR, M.MISGENDERED, "brightness"} <= set(options)
    assert not {"x", "y", "brightness"} & set(M.map_groups(t))
    assert M.SUSPECT not in options and M.LOOK_ALIKE not in options
    given = M.colour_options(t, audit=pd.DataFrame(), leak={"pairs": []}, other="b")
    assert {M.SUSPECT, M.LOOK_ALIKE, M.AGE_DIFFERENCE.format(other="b"), M.GENDER_DIFFERS.format(other="b")} \
        <= set(given)


def test_colour_values_count_what_they_say():
    t = table()
    err, continuous = M.colour_values(t, M.ABS_AGE_ERROR)
    assert continuous and np.allclose(err, (t["pred_age"] - t["age"]).abs())
    wrong, continuous = M.colour_values(t, M.MISGENDERED)
    assert not continuous and list(np.flatnonzero(wrong == "misgendered")) == list(range(50))
    race, _ = M.colour_values(t, "race")
    assert (race == t["race"]).all()
    with pytest.raises(ValueError, match="unknown colour 'nope': the map can be coloured by age_bucket"):
        M.colour_values(t, "nope")


def test_a_second_checkpoints_disagreement_and_look_alikes():
    t = table()
    other = t[["file", "pred_age", "p_female"]].iloc[10:].copy()  # the first 10 faces were not scored by it
    other["pred_age"] += 5.0
    other.loc[other.index[:5], "p_female"] = 1 - other["p_female"].iloc[:5]
    diff, continuous = M.colour_values(t, M.AGE_DIFFERENCE.format(other="b"), other=("b", other))
    assert continuous and diff.iloc[:10].isna().all() and np.allclose(diff.iloc[10:], 5.0)
    calls, _ = M.colour_values(t, M.GENDER_DIFFERS.format(other="b"), other=("b", other))
    assert (calls.iloc[:10] == M.UNKNOWN).all()
    assert list(np.flatnonzero(calls == "differs")) == list(range(10, 15))
    leak = {"n": N, "pairs": [{"file": "0003.jpg", "kind": "duplicate"}, {"file": "0007.jpg", "kind": "look-alike"}]}
    kinds, _ = M.colour_values(t, M.LOOK_ALIKE, leak=leak)
    assert kinds.value_counts().to_dict() == {"none": N - 2, "duplicate": 1, "look-alike": 1}


def test_the_audit_suspects_colour_marks_their_faces():
    t = table()
    audit = t[["file", "age", "gender"]].assign(flagged=np.arange(N) % 100 == 0)
    marks, _ = M.colour_values(t, M.SUSPECT, audit=audit)
    assert list(np.flatnonzero(marks == "suspect")) == [0, 100, 200, 300]


@pytest.mark.parametrize("colour", ["race", M.ABS_AGE_ERROR, M.GENDER_DIFFERS.format(other="b")])
def test_the_figure_names_every_row_once(colour):
    t = table()
    other = ("b", t[["file", "pred_age", "p_female"]].iloc[100:])
    values, continuous = M.colour_values(t, colour, other=other)
    fig = M.figure(t, values, continuous)
    rows = np.concatenate([np.asarray(tr.customdata) for tr in fig.data])
    assert sorted(rows.tolist()) == list(range(N))
    for tr in fig.data:  # each dot where its row is
        assert np.allclose(tr.x, t["x"].to_numpy()[np.asarray(tr.customdata)])
    assert fig.layout.dragmode == "select"


def test_selection_events_become_rows_and_a_kept_selection():
    points = [{"customdata": 5}, {"customdata": [3]}, {"customdata": 5.0}, {"x": 1}, {"customdata": N + 3}]
    assert M.selected_rows(points, N).tolist() == [3, 5]
    kept, last = M.update_selection((), (), ("a", "b"))
    assert kept == ("a", "b") and last == ("a", "b")
    # the chart drawn again reports nothing: the selection stays; a cluster pick stays until a new event
    assert M.update_selection(kept, last, ()) == (("a", "b"), ())
    assert M.update_selection(("c",), ("a", "b"), ("a", "b")) == (("c",), ("a", "b"))
    assert M.update_selection(("c",), ("a", "b"), ("d",)) == (("d",), ("d",))


def test_a_bad_selection_is_worse_than_the_rest_with_intervals():
    t = table()
    files = list(t["file"].iloc[:50])
    f = M.selection_figures(t, files).set_index("metric")
    mae = f.loc["age_mae"]
    assert mae["n_selected"] == 50 and mae["n_rest"] == N - 50
    assert mae["selected"] == pytest.approx(20.0)
    rest = (t["pred_age"] - t["age"]).abs().iloc[50:].mean()
    assert mae["rest"] == pytest.approx(rest)
    assert mae["selected_lo"] <= mae["selected"] <= mae["selected_hi"]
    assert mae["gap"] == pytest.approx(20.0 - rest) and 0 < mae["gap_lo"] < mae["gap"] < mae["gap_hi"]
    assert mae["p_worse"] < 1e-10
    acc = f.loc["gender_accuracy"]
    assert acc["selected"] == 0.0 and acc["rest"] == 1.0
    assert acc["gap"] == -1.0 and acc["gap_lo"] <= -0.9 and acc["gap_hi"] < 0
    assert np.isnan(f.loc["age_bias", "gap"])  # no slice test behind a signed mean


def test_a_random_selection_is_no_worse_and_a_tiny_one_has_no_gap():
    t = table().iloc[50:].reset_index(drop=True)
    f = M.selection_figures(t, list(t["file"].iloc[::3])).set_index("metric")
    assert f.loc["age_mae", "gap_lo"] < 0 < f.loc["age_mae", "gap_hi"] and f.loc["age_mae", "p_worse"] > 0.01
    tiny = M.selection_figures(t, list(t["file"].iloc[:4])).set_index("metric")
    assert tiny.loc["age_mae", "n_selected"] == 4 and tiny["gap"].isna().all()
    assert "at least 10 faces on each side" in M.figures_note(4)
    assert M.selection_figures(t, []).empty and M.selection_figures(t, list(t["file"])).empty


def test_the_selected_table_lists_the_files_and_the_colour():
    t = table()
    values, _ = M.colour_values(t, M.MISGENDERED)
    shown = M.selected_table(t, ["0001.jpg", "0399.jpg"], values, M.MISGENDERED)
    assert list(shown["file"]) == ["0001.jpg", "0399.jpg"]
    assert list(shown[M.MISGENDERED]) == ["misgendered", "correct"]
    assert {"age", "gender", "pred_age", "race", M.ABS_AGE_ERROR} <= set(shown) and "x" not in shown
    url = M.thumbnail_url(Image.new("RGB", (144, 144), (200, 10, 10)))
    assert url.startswith("data:image/jpeg;base64,") and len(url) < 3000


def test_cam_sample_is_capped_and_spread():
    files = [str(i) for i in range(100)]
    picked = M.cam_sample(files, 32)
    assert len(picked) == 32 and picked[0] == "0" and picked[-1] == "99" and len(set(picked)) == 32
    assert M.cam_sample(files[:5]) == files[:5]


def test_clusters_to_choices_and_files():
    found = pd.DataFrame([
        {"cluster": 4, "description": "darker", "label": "age MAE", "size": 60, "value": 12.0, "rest_value": 5.0,
         "q": 1e-5, "expected": 5.5, "files": ["a", "b"]},
        {"cluster": 4, "description": "darker", "label": "gender error rate", "size": 60, "value": 0.3,
         "rest_value": 0.1, "q": 0.01, "files": ["a", "b"]},
        {"cluster": 1, "description": "blurrier", "label": "age MAE", "size": 40, "value": 9.0, "rest_value": 5.0,
         "q": 0.02, "files": ["c"]}])
    choices = M.cluster_choices(found)
    assert list(choices) == [4, 1]
    assert choices[4] == ("cluster 4, 60 faces: age MAE 12 vs 5, 5.5 its labelled groups predict (q=1e-05); "
                          "gender error rate 0.3 vs 0.1 (q=0.01) · darker")
    assert M.cluster_files(found, 1) == ("c",) and M.cluster_files(found, 9) == ()
