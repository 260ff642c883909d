import urllib.error

import pytest
import torch

from agegender import model as model_mod
from agegender.model import ARCHS, PretrainedUnavailable, UnknownArchitecture, create_model, decode_age


@pytest.mark.parametrize("arch", list(ARCHS))
def test_every_arch_gives_two_heads(arch):
    m = create_model(arch).eval()
    with torch.no_grad():
        age, logit = m(torch.randn(2, 3, 64, 64))
    assert age.shape == (2,) and logit.shape == (2,)
    assert torch.isfinite(age).all() and torch.isfinite(logit).all()
    assert set(m.cam_layers) == {"layer4", "layer3"}


def test_unknown_arch_message():
    with pytest.raises(UnknownArchitecture, match=r"unknown architecture 'vgg11'; known: resnet18, resnet34, resnet50"):
        create_model("vgg11")


def test_pretrained_download_failure_is_explained(monkeypatch):
    def offline(weights=None):
        raise urllib.error.URLError("no network")

    spec = ARCHS["resnet18"]
    monkeypatch.setitem(ARCHS, "resnet18", model_mod.Arch(offline, spec.features, spec.weights))
    with pytest.raises(PretrainedUnavailable, match="could not load torchvision's ImageNet weights for resnet18"):
        create_model("resnet18", pretrained=True)


def test_decoded_age_is_never_negative():
    ages = decode_age(torch.tensor([-10.0, 0.0, 1.0]), offset=30, scale=20)
    assert ages.tolist() == [0.0, 30.0, 50.0]
