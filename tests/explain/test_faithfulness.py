"""ROAD against a random map: known answers on a model that looks at one corner, and the per-group figures."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from agegender.explain import faithfulness as fa
from agegender.explain.gradcam import GradCAM
from agegender.fairness import faithful as ff
from agegender.fairness import stats
from agegender.models.model import AgeGenderNet, Arch

SIZE = 24


def corner(flip: bool = False) -> np.ndarray:
    """A smooth map (no ties for ROAD's percentiles), highest at the top-left corner (bottom-right if flipped)."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    heat = np.exp(-np.hypot(yy, xx) / (SIZE / 3)).astype(np.float32)
    return heat[::-1, ::-1].copy() if flip else heat


class FixedCAM:
    """A CAM class the package's way (context manager, called on a batch) that always draws the same map."""

    heat = corner()

    def __init__(self, model, target_layers):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def __call__(self, input_tensor, targets, **kw):
        return np.repeat(self.heat[None], len(input_tensor), axis=0)


class OppositeCAM(FixedCAM):
    heat = corner(flip=True)


class TopLeft(nn.Module):
    """Keeps the top-left quarter of a feature map, zeroes the rest: the model sees nothing else."""

    def forward(self, f):
        keep = torch.zeros_like(f)
        keep[..., : SIZE // 2, : SIZE // 2] = 1
        return f * keep


def corner_model() -> AgeGenderNet:
    """Age and gender both rise with the brightness of the top-left quarter, and depend on nothing else."""
    trunk = nn.Module()
    trunk.conv = nn.Conv2d(3, 4, 1, bias=False)  # the CAM layer spans the whole image: a random map is not the corner
    trunk.keep = TopLeft()
    trunk.forward = lambda x: torch.flatten(nn.functional.adaptive_avg_pool2d(trunk.keep(trunk.conv(x)), 1), 1)
    arch = Arch(build=None, features=4, weights=None, stages=("conv", "keep"), cam_layers={"conv": "conv"})
    model = AgeGenderNet(trunk, 4, arch=arch)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.rand(p.shape, generator=g) + 0.5)  # positive weights: brighter corner, older and more female
    return model.eval()


def faces(n: int, seed: int = 0) -> list[torch.Tensor]:
    """Dark textured faces with a bright textured top-left quarter (imputing it from outside darkens it)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = 0.3 * torch.rand(1, 3, SIZE, SIZE, generator=g)
        x[..., : SIZE // 2, : SIZE // 2] += 2 + torch.rand(1, 3, SIZE // 2, SIZE // 2, generator=g)
        out.append(x)
    return out


@pytest.fixture(scope="module")
def scored():
    xs = faces(12)
    methods = {"marks": FixedCAM, "opposite": OppositeCAM, "GradCAM": GradCAM}
    return fa.score_faces(corner_model(), lambda i: xs[i], len(xs), methods, age_scale=10.0)


def test_a_map_of_the_region_the_model_uses_beats_random_and_its_opposite_does_not(scored):
    groups = pd.DataFrame({"gender": ["female", "male"] * 6})
    report = fa.build_report(groups, scored, {"source": "corner faces"}, n_boot=400)
    for head in fa.HEAD_MAPS:
        methods = report["heads"][head]["methods"]
        assert set(methods) == {"marks", "opposite", "GradCAM"}  # RandomCAM is the baseline, not a method
        assert methods["marks"]["beats_random"] and methods["GradCAM"]["beats_random"], (head, methods)
        assert not methods["opposite"]["beats_random"], (head, methods["opposite"]["overall"])
        assert methods["opposite"]["overall"]["difference_hi"] < 0  # worse than random, not just unproven
        assert [r["group"] for r in methods["marks"]["by_group"]] == ["female", "male"]
    # the sign convention: higher is more faithful, a map of the right region scores above 0
    assert report["heads"]["age"]["methods"]["marks"]["overall"]["score"] > 0
    json.dumps(report, allow_nan=False)


def test_age_is_scored_in_years(scored):
    """The age head's scores are scaled by the checkpoint's age scale (10 here), the gender head's are not."""
    again = fa.score_faces(corner_model(), lambda i: faces(1)[0], 1, {"marks": FixedCAM}, age_scale=1.0)
    assert scored.road[("age", "marks")][0] == pytest.approx(10 * again.road[("age", "marks")][0], rel=1e-4)
    assert scored.road[("gender", "marks")][0] == pytest.approx(again.road[("gender", "marks")][0], rel=1e-4)


def test_per_group_figures_on_known_numbers():
    groups = pd.DataFrame({"race": ["A"] * 4 + ["B"] * 4 + [None] * 2, "gender": ["female", "male"] * 5})
    score = np.array([3, 3, 3, 3, 1, 2, 3, 4, 0, 0], float)
    random = np.array([1, 1, 1, 1, 2, 2, 3, 3, 0, 0], float)  # differences: A all +2, B -1, 0, 0, +1
    r = fa.aggregate(groups, score, random, n_boot=500, seed=3)
    rows = {(x["grouping"], x["group"]): x for x in r["by_group"]}
    a, b = rows[("race", "A")], rows[("race", "B")]
    assert (a["n"], a["score"], a["random"], a["difference"]) == (4, 3.0, 1.0, 2.0)
    assert (a["difference_lo"], a["difference_hi"], a["beats_random"]) == (2.0, 2.0, True)
    assert (b["n"], b["difference"], b["beats_random"]) == (4, 0.0, False)
    assert b["difference_lo"] < 0 < b["difference_hi"] and a["too_small"]
    assert ("race", "None") not in rows and r["overall"]["n"] == 10  # a missing label leaves only its grouping
    assert r["overall"]["difference"] == pytest.approx(0.8)
    # the interval is the statistics core's paired bootstrap of the mean difference
    rng = np.random.default_rng(3)
    d = score - random
    lo, hi = stats.interval(d[stats.draws(10, 500, rng)].mean(1))
    assert (r["overall"]["difference_lo"], r["overall"]["difference_hi"]) == (round(lo, 4), round(hi, 4))
    assert r["beats_random"] == (lo > 0)


def report_with(beats: dict[str, bool]) -> dict:
    def result(ok):
        row = {"grouping": "race", "group": "Black", "n": 40, "beats_random": ok, "too_small": False}
        return {"overall": {"beats_random": ok}, "by_group": [row], "beats_random": ok}
    return {"source": "UTKFace test", "n": 200,
            "heads": {h: {"methods": {"GradCAM": result(ok)}} for h, ok in beats.items()}}


def test_picker_text_and_the_groups_it_fails_for():
    r = report_with({"age": False, "gender": True})
    assert ff.method_label("GradCAM", r) == "GradCAM  age: not shown better than random · gender: beats random"
    assert ff.method_label("EigenCAM", r) == "EigenCAM  age: not checked · gender: not checked"
    assert ff.method_label("GradCAM", None) == "GradCAM"
    note = ff.method_note("GradCAM", r)
    assert note.startswith("GradCAM is not shown better than random for age in: overall, race Black (n=40).")
    assert "for gender" not in note and ff.method_note("EigenCAM", r) is None
    assert "every head and group" in ff.method_note("GradCAM", report_with({"age": True, "gender": True}))


def test_read_report_finds_test_then_val_and_refuses_a_broken_file(tmp_path):
    assert ff.read_report(tmp_path) is None
    ff.report_path(tmp_path, "val").write_text(json.dumps(report_with({"age": True})))
    assert ff.read_report(tmp_path)["source"] == "UTKFace test"
    ff.report_path(tmp_path, "test").write_text("{not json")
    with pytest.raises(ff.FaithfulnessError) as e:
        ff.read_report(tmp_path)
    assert str(e.value).startswith(ff.ERR_UNREADABLE.split("{detail}")[0].format(path=ff.report_path(tmp_path, "test")))
