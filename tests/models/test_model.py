import dataclasses
import urllib.error

import pytest
import torch
from torch import nn
from torchvision import models as tvm

from agegender.explain.gradcam import ERR_NO_LAYERS, MAPS, explain
from agegender.models.model import (
    ARCHS,
    AgeScaling,
    Arch,
    PretrainedUnavailable,
    UnknownArchitecture,
    create_model,
    decode_age,
    submodule,
)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_every_arch_gives_two_heads(arch):
    m = create_model(arch).eval()
    with torch.no_grad():
        age, logit = m(torch.randn(2, 3, 64, 64))
    assert age.shape == (2,) and logit.shape == (2,)
    assert torch.isfinite(age).all() and torch.isfinite(logit).all()
    assert list(m.cam_layers) == list(ARCHS[arch].cam_layers)
    if arch.startswith("resnet"):
        assert set(m.cam_layers) == {"layer4", "layer3"}


# Not registered: a trunk unlike ResNet's, to show that an architecture's own declaration is all
# explain() needs. MobileNetV3's forward is features -> avgpool -> flatten -> classifier.
MOBILENET = Arch(tvm.mobilenet_v3_small, 576, None, "classifier", ("features",), {"last": "features.-1",
                                                                                   "middle": "features.8"})


def every_arch():
    return [*ARCHS, "mobilenet (unregistered)"]


@pytest.fixture
def arch_model(request, monkeypatch):
    name = request.param
    if name not in ARCHS:
        monkeypatch.setitem(ARCHS, name, MOBILENET)
    torch.manual_seed(0)
    return create_model(name).eval()


@pytest.mark.parametrize("arch_model", every_arch(), indirect=True)
def test_cam_layers_are_blocks_and_the_blocks_are_the_trunk(arch_model):
    """explain() runs the blocks before the target on the shared model and the rest on a copy: that is only
    the network itself if the blocks, then global pooling, are the trunk, and every target is a block."""
    blocks = arch_model.blocks()
    layers = arch_model.cam_layers
    assert layers and all(any(b is layer for b in blocks) for layer in layers.values())
    assert list(layers) == list(arch_model.arch.cam_layers)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        f = x
        for b in blocks:
            f = b(f)
        torch.testing.assert_close(torch.flatten(nn.functional.adaptive_avg_pool2d(f, 1), 1), arch_model.trunk(x))


@pytest.mark.parametrize("arch_model", every_arch(), indirect=True)
def test_a_cam_runs_on_every_declared_layer(arch_model):
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    for layer in arch_model.cam_layers:
        maps = explain(arch_model, x, maps=tuple(MAPS), layer=layer)
        assert [m.name for m in maps] == list(MAPS)
        assert all(m.heat.shape == (64, 64) and torch.isfinite(torch.from_numpy(m.heat)).all() for m in maps)
    assert explain(arch_model, x, maps=("older",))[0].heat.shape == (64, 64)  # the first layer by default


def test_an_architecture_without_cam_layers_says_how_to_declare_them(monkeypatch):
    monkeypatch.setitem(ARCHS, "plain", dataclasses.replace(ARCHS["resnet18"], stages=(), cam_layers={}))
    m = create_model("plain").eval()
    assert m.cam_layers == {} and m.blocks() == []
    with pytest.raises(ValueError) as e:
        explain(m, torch.randn(1, 3, 64, 64))
    assert str(e.value) == ERR_NO_LAYERS.format(arch="ResNet")


def test_submodule_follows_attribute_paths_and_indices():
    m = create_model("resnet18")
    assert submodule(m.trunk, "layer4.-1") is m.trunk.layer4[-1] is submodule(m.trunk, "layer4.1")
    assert submodule(m.trunk, "conv1") is m.trunk.conv1
    assert "arch" not in dict(m.named_children()) and not any(k.startswith("arch") for k in m.state_dict())


def test_age_scaling_is_the_checkpoints_contract():
    s = AgeScaling.from_meta({"age_offset": 33, "age_scale": 20, "age_bins": 121})
    assert s == AgeScaling(33.0, 20.0, (0.0, 120.0))
    years = torch.tensor([0.0, 33.0, 53.0, 120.0])
    torch.testing.assert_close(s.encode(years), torch.tensor([-1.65, 0.0, 1.0, 4.35]))
    torch.testing.assert_close(s.decode(s.encode(years)), years)
    assert s.decode(torch.tensor([1e6, -1e6])).tolist() == [120.0, 0.0]


def test_unknown_arch_message():
    with pytest.raises(UnknownArchitecture, match=r"unknown architecture 'vgg11'; known: resnet18, resnet34, resnet50"):
        create_model("vgg11")


def test_pretrained_download_failure_is_explained(monkeypatch):
    def offline(weights=None):
        raise urllib.error.URLError("no network")

    monkeypatch.setitem(ARCHS, "resnet18", dataclasses.replace(ARCHS["resnet18"], build=offline))
    with pytest.raises(PretrainedUnavailable, match="could not load torchvision's ImageNet weights for resnet18"):
        create_model("resnet18", pretrained=True)


def test_decoded_age_is_never_negative():
    ages = decode_age(torch.tensor([-10.0, 0.0, 1.0]), offset=30, scale=20)
    assert ages.tolist() == [0.0, 30.0, 50.0]


def test_distribution_head_expects_in_scaled_years_and_soft_labels_centre_on_the_age():
    from agegender.models.model import DistributionAgeHead

    head = DistributionAgeHead(8, bins=121, offset=33.0, scale=20.0)
    torch.manual_seed(0)
    f = torch.randn(4, 8)
    logits = head.fc(f)
    years = (logits.softmax(-1) * torch.arange(121.0)).sum(-1)
    assert torch.allclose(decode_age(head(f).squeeze(1), 33.0, 20.0), years, atol=1e-4)
    assert head(f).shape == (4, 1)  # shaped like the regression head's output
    ages = torch.tensor([0.0, 25.0, 80.0])
    soft = head.soft_labels((ages - 33) / 20, sigma_years=2.0)
    assert torch.allclose(soft.sum(-1), torch.ones(3))
    assert soft.argmax(-1).tolist() == [0, 25, 80]
    mean = (soft * torch.arange(121.0)).sum(-1)
    spread = ((soft * (torch.arange(121.0) - mean[:, None]) ** 2).sum(-1)).sqrt()
    assert torch.allclose(mean[1:], ages[1:], atol=1e-3)
    assert torch.allclose(spread[1:], torch.tensor([2.0, 2.0]), atol=1e-2)
    m = create_model("resnet18", age_bins=121, age_offset=33.0, age_scale=20.0).eval()
    with torch.no_grad():
        age, logit, bins = m(torch.randn(2, 3, 64, 64), with_age_logits=True)
    assert age.shape == (2,) and bins.shape == (2, 121) and torch.allclose(age, m.age_head.expect(bins).squeeze(1))
