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


def test_distribution_head_expects_in_scaled_years_and_soft_labels_centre_on_the_age():
    from agegender.model import DistributionAgeHead

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
