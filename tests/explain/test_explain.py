import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from pytorch_grad_cam import GradCAM
from torch import nn

from agegender.explain.gradcam import MAPS, METHODS, HeadTarget, explain, explain_checkpoint, overlay
from agegender.models.checkpoint import Checkpoint
from agegender.models.inference import model_input
from agegender.models.model import create_model
from agegender.models.preprocess import Preprocess


class TwoHeads(nn.Module):
    """The textbook way to use the package: the whole model, hooks on it."""

    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x):
        return torch.stack(self.m(x), dim=1)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = create_model("resnet18").eval()
    # random BN statistics so the maps are not all alike
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.1, 0.1)
            mod.running_var.uniform_(0.5, 1.5)
    return m


def face(seed):
    return torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


def no_hooks(m):
    return all(not mod._forward_hooks and not mod._backward_hooks and not mod._forward_pre_hooks
               for mod in m.modules())


@pytest.mark.parametrize("method", [m for m in METHODS if m != "ScoreCAM"])
@pytest.mark.parametrize("layer", ["layer4", "layer3"])
def test_maps_equal_the_package_on_the_whole_model(model, method, layer):
    x = face(1)
    ours = explain(model, x, maps=tuple(MAPS), method=method, layer=layer)
    ref_model = TwoHeads(model)
    with METHODS[method](model=ref_model, target_layers=[model.cam_layers[layer]]) as cam:
        for c in ours:
            ref = cam(input_tensor=x, targets=[HeadTarget(*MAPS[c.name])])[0]
            np.testing.assert_allclose(c.heat, ref, atol=2e-4, err_msg=f"{method} {layer} {c.name}")
    assert no_hooks(model)


def test_scorecam_runs_and_heads_differ(model):
    older, female = explain(model, face(2), maps=("older", "female"), method="ScoreCAM")
    assert all(m.heat.shape == (64, 64) and np.isfinite(m.heat).all() for m in (older, female))
    # The heads weigh the same activation maps by different scores: the maps (each scaled to [0, 1]) part by
    # about 0.26 somewhere with this model; 0.05 is far above any rounding.
    assert np.abs(older.heat - female.heat).max() > 0.05


def test_older_and_younger_are_different_evidence(model):
    older, younger = explain(model, face(3), maps=("older", "younger"))
    assert not np.allclose(older.heat, younger.heat)


def test_shared_model_is_left_untouched(model):
    model.zero_grad(set_to_none=True)  # the reference tests above backpropagate through it
    before = {k: v.clone() for k, v in model.state_dict().items()}
    explain(model, face(4), faithfulness=True)
    assert no_hooks(model)
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_concurrent_requests_match_sequential_ones(model):
    jobs = [(face(10 + i), ("older", "younger", "female", "male")[i % 4:] or ("male",),
             ["GradCAM", "GradCAM++", "LayerCAM"][i % 3]) for i in range(8)]
    sequential = [explain(model, x, maps=m, method=meth) for x, m, meth in jobs]
    results = [None] * len(jobs)
    barrier = threading.Barrier(len(jobs))

    def work(i):
        barrier.wait()
        x, m, meth = jobs[i]
        results[i] = explain(model, x, maps=m, method=meth)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for seq, par in zip(sequential, results, strict=True):
        for a, b in zip(seq, par, strict=True):
            assert a.name == b.name
            np.testing.assert_allclose(a.heat, b.heat, atol=1e-5)
    assert no_hooks(model)


def test_faithfulness_figures(model):
    maps = explain(model, face(5), maps=("older", "female"), faithfulness=True, age_scale=20.0)
    for m in maps:
        assert np.isfinite(m.road_most) and np.isfinite(m.road_least)
        assert m.faithfulness == pytest.approx(m.road_least - m.road_most)


def test_explain_checkpoint_reads_preprocessing_and_age_scale_from_the_checkpoint(model):
    pp = Preprocess(cache_size=72, input_size=64)
    ckpt = Checkpoint(Path("fake"), model, {"preprocess": pp.to_dict(), "age_offset": 33.0, "age_scale": 20.0})
    pixels = np.random.default_rng(8).integers(0, 256, (72, 72, 3), dtype=np.uint8)
    torch.manual_seed(0)  # ROAD's imputation adds noise
    ours = explain_checkpoint(ckpt, pixels, maps=("older", "female"), faithfulness=True)
    torch.manual_seed(0)
    plain = explain(model, model_input(ckpt, pixels), maps=("older", "female"), faithfulness=True)
    for a, b in zip(ours, plain, strict=True):
        np.testing.assert_array_equal(a.heat, b.heat)
        unit = 20.0 if a.head == "age" else 1.0  # age figures in years, gender ones in logits
        assert (a.road_most, a.road_least) == pytest.approx((b.road_most * unit, b.road_least * unit))


@pytest.mark.parametrize("kw, message", [
    ({"method": "FooCAM"}, "unknown CAM method 'FooCAM'"),
    ({"layer": "layer2"}, "unknown target layer 'layer2'"),
    ({"maps": ("happier",)}, "unknown map"),
])
def test_bad_requests(model, kw, message):
    with pytest.raises(ValueError, match=message):
        explain(model, face(6), **kw)


def test_overlay_shape():
    img = np.zeros((50, 50, 3), np.uint8)
    out = overlay(img, np.random.default_rng(0).random((10, 10)).astype(np.float32), opacity=0.4)
    assert out.shape == (50, 50, 3) and out.dtype == np.uint8


def test_gradcam_reference_sanity(model):
    # guards the reference itself: the package gives different maps for the two heads
    with GradCAM(model=TwoHeads(model), target_layers=[model.cam_layers["layer4"]]) as cam:
        a = cam(input_tensor=face(7), targets=[HeadTarget(0, 1.0)])[0]
        b = cam(input_tensor=face(7), targets=[HeadTarget(1, 1.0)])[0]
    assert not np.allclose(a, b)
