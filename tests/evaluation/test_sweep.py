"""The counterfactual sweep (agegender.evaluation.sweep, agegender.fairness.sensitivity) on known answers: a fake
predictor that reads a marker only one group's faces carry, so a perturbation moves that group alone; a
perturbation that changes no pixel moves nobody; the command end to end on a tiny trained checkpoint."""

import json
import runpy

import numpy as np
import pandas as pd
import pytest

from agegender.evaluation import sweep as sw
from agegender.fairness import sensitivity as sens
from agegender.fairness.slices import bh

from ..conftest import make_dataset, tiny_config
from ..test_commands import help_of

SIZE = 32
RACES = ("White", "Black", "Asian", "Indian", "Others")
ROW_KEYS = {"grouping", "group", "n", "tested", "change_age", "change_p_female", "flip_rates", "flagged",
            *(f"{k}{s}" for k in ("sensitivity_age", "sensitivity_p_female")
              for s in ("", "_lo", "_hi", "_difference", "_p", "_q")),
            "flip_rate", "flip_rate_lo", "flip_rate_hi"}


def faces() -> tuple[pd.DataFrame, np.ndarray]:
    """200 grey faces, every race x gender x age bucket cell of five alike (the same five images in each cell,
    so that a group's response depends on its race alone); the Black faces carry a bright marker top left, the
    others a black one."""
    n = 200
    rng = np.random.default_rng(0)
    cell = rng.integers(60, 200, (5, SIZE, SIZE, 1), dtype=np.uint8).repeat(3, axis=3)  # grey: R = G = B
    table = pd.DataFrame({"race": [RACES[i % 5] for i in range(n)],
                          "gender": ["male" if (i // 5) % 2 else "female" for i in range(n)],
                          "age_bucket": [("20-29", "30-39", "40-49", "50-59")[(i // 10) % 4] for i in range(n)]})
    pixels = cell[np.arange(n) // 40].copy()
    pixels[:, :8, :8] = np.where((table["race"] == "Black").to_numpy(), 255, 0).reshape(-1, 1, 1, 1)
    return table, pixels


def marker_predictor(px: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Marked faces: age follows their brightness; everyone else: 40 years. P(female) 0.7 for all."""
    x = px.astype(np.float64) / 255
    marked = x[:, :8, :8].mean((1, 2, 3)) > 0.15
    age = np.where(marked, 20 + 40 * x.mean((1, 2, 3)), 40.0)
    return age, np.full(len(px), 0.7)


GROUPINGS = ["race", "gender", "age_bucket"]


def test_a_perturbation_that_changes_no_pixel_moves_nobody():
    """Grey faces have no colour to take: every sensitivity is 0, its interval holds 0, nobody is flagged."""
    table, pixels = faces()
    out = sw.sweep(pixels, table, GROUPINGS, marker_predictor, ["grayscale"], n_boot=200)
    rows = out["grayscale"]["by_group"]
    assert {(r["grouping"], r["group"]) for r in rows} == {(c, v) for c in GROUPINGS for v in table[c].unique()}
    for r in rows:
        for m in sens.METRICS:
            assert abs(r[f"sensitivity_{m}"]) < 1e-9
            assert r[f"sensitivity_{m}_lo"] <= 0 <= r[f"sensitivity_{m}_hi"]
        assert r["flagged"] == [] and r["flip_rate"] == 0


def test_a_perturbation_that_moves_one_group_flags_that_group_only():
    """Darkening moves the marked (Black) faces' predicted age down and nobody else's: race = Black is flagged
    for age, no other group of any grouping, and never for P(female), which nothing moves."""
    table, pixels = faces()
    out = sw.sweep(pixels, table, GROUPINGS, marker_predictor, ["brightness", "grayscale"], n_boot=200)
    rows = out["brightness"]["by_group"]
    hit = {(r["grouping"], r["group"], m) for r in rows for m in r["flagged"]}
    assert hit == {("race", "Black", "age")}
    black = next(r for r in rows if r["group"] == "Black")
    assert black["sensitivity_age_hi"] < -5  # darker reads younger: 40 x the mean brightness lost
    assert black["change_age"] == sorted(black["change_age"], reverse=True)  # the stronger, the younger
    white = next(r for r in rows if r["group"] == "White")
    assert white["sensitivity_age"] == 0 and white["sensitivity_age_q"] >= sens.ALPHA
    # the q-values are BH over every test of the sweep, both perturbations together
    cells = [(r, m) for p in out.values() for r in p["by_group"] for m in sens.METRICS]
    p = np.array([r[f"sensitivity_{m}_p"] for r, m in cells])
    ok = np.isfinite(p)
    np.testing.assert_allclose(np.array([r[f"sensitivity_{m}_q"] for r, m in cells])[ok], bh(p[ok]))


def test_flips_are_counted_against_the_face_as_it_is():
    """A predictor whose P(female) falls with brightness: women called at 0.6 turn male when darkened."""
    table, pixels = faces()

    def p_female(px):
        return 0.2 + 0.6 * px.astype(np.float64).mean((1, 2, 3)) / 128

    def predict(px):
        return np.full(len(px), 30.0), p_female(px)

    rows = sw.sweep(pixels, table, ["race"], predict, ["brightness"], n_boot=100)["brightness"]["by_group"]
    base, dark = p_female(pixels), p_female(sw.perturbed(pixels, sw.PERTURBATIONS["brightness"], 0.3))
    for r in rows:
        pos = (table["race"] == r["group"]).to_numpy()
        assert r["flip_rate"] == pytest.approx(((base[pos] >= 0.5) != (dark[pos] >= 0.5)).mean())
        assert r["flip_rate_lo"] <= r["flip_rate"] <= r["flip_rate_hi"]
    assert max(r["flip_rate"] for r in rows) > 0


def test_small_groups_are_shown_but_not_tested():
    table, pixels = faces()
    rows = sw.sweep(pixels, table, ["race"], marker_predictor, ["brightness"], min_count=41,
                    n_boot=100)["brightness"]["by_group"]
    assert all(not r["tested"] and np.isnan(r["sensitivity_age_p"]) and r["flagged"] == [] for r in rows)
    assert all(np.isfinite(r["sensitivity_age_lo"]) for r in rows)


@pytest.mark.parametrize("name", sw.PERTURBATIONS)
def test_each_perturbation_changes_a_face_more_as_it_grows(name):
    p = sw.PERTURBATIONS[name]
    assert len(p.levels) == len(p.strengths) >= 4 and p.strengths[-1] == pytest.approx(1)
    assert all(0 < a < b for a, b in zip(p.strengths, p.strengths[1:], strict=False))
    rng = np.random.default_rng(1)
    face = rng.integers(0, 256, (2, 48, 48, 3), dtype=np.uint8)
    moved = [np.abs(sw.perturbed(face, p, lv).astype(int) - face).mean() for lv in p.levels]
    assert moved[0] > 0 and moved[-1] >= moved[0]
    assert sw.perturbed(face, p, p.levels[0]).dtype == np.uint8


def test_occlusion_covers_the_bottom_rows_with_grey():
    face = np.zeros((1, 40, 40, 3), np.uint8)
    out = sw.perturbed(face, sw.PERTURBATIONS["occlusion"], 0.25)
    assert (out[0, -10:] == 128).all() and (out[0, :-10] == 0).all()


def test_unknown_perturbations_are_named():
    with pytest.raises(sens.SweepError) as e:
        sw.parse_names("blur,squint")
    assert str(e.value) == sw.ERR_UNKNOWN.format(names=["squint"], known=",".join(sw.PERTURBATIONS))


def test_read_sweep_says_what_is_wrong(tmp_path):
    missing = tmp_path / "sweep-test.json"
    with pytest.raises(sens.SweepError) as e:
        sens.read_sweep(missing, "python -m agegender.sweep --checkpoint X")
    assert str(e.value) == sens.ERR_NO_SWEEP.format(path=missing, command="python -m agegender.sweep --checkpoint X")
    missing.write_text('{"perturbations": []}')
    with pytest.raises(sens.SweepError, match="is not a sweep file"):
        sens.read_sweep(missing)


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory):
    """The command on a tiny trained checkpoint and its generated UTKFace-like chips."""
    from agegender.train.loop import train

    root = tmp_path_factory.mktemp("sweep")
    make_dataset(root / "UTKFace", n=48)
    ckpt = train(tiny_config(root / "UTKFace", root / "ckpt"))
    out = root / "sweep.json"
    code = sw.main(["--checkpoint", str(ckpt), "--data", str(root / "UTKFace"), "--split", "all",
                    "--perturb", "blur,occlusion", "--sample", "40", "--min-count", "5", "--threads", "1",
                    "--json", str(out)])
    return code, out


def test_the_command_writes_the_documented_json(tiny_sweep):
    code, out = tiny_sweep
    assert code == 0
    raw = json.loads(out.read_text())  # strict JSON: no NaN token
    assert raw["n_faces"] == 40 and raw["groupings"] == ["race", "gender", "age_bucket"]
    assert list(raw["perturbations"]) == ["blur", "occlusion"]
    for name, p in raw["perturbations"].items():
        assert p["strengths"] == list(sw.PERTURBATIONS[name].strengths)
        for r in p["by_group"]:
            assert set(r) == ROW_KEYS, set(r) ^ ROW_KEYS
            assert len(r["change_age"]) == len(r["change_p_female"]) == len(r["flip_rates"]) == len(p["strengths"])
        for grouping in raw["groupings"]:
            assert sum(r["n"] for r in p["by_group"] if r["grouping"] == grouping) == 40
    back = sens.read_sweep(out)
    assert len(sens.curves(back["perturbations"]["blur"], "gender", "age")) == 2 * 5  # strength 0 and four


def test_a_labelled_set_needs_json(tmp_path, capsys):
    labels = tmp_path / "labels.csv"
    labels.write_text("file,age,gender\n")
    code = sw.main(["--checkpoint", str(tmp_path), "--data", str(tmp_path), "--labels", str(labels),
                    "--format", "csv", "--columns", "file=file,age=age,gender=gender"])
    assert code == 2 and capsys.readouterr().err.strip() == f"error: {sw.ERR_NEEDS_JSON}"


def test_the_command_answers_help():
    code, text = help_of(lambda: runpy.run_module("agegender.sweep", run_name="__main__", alter_sys=True),
                         "agegender.sweep")
    assert code == 0 and "--perturb" in text and "--sample" in text
