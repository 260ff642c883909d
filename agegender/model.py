"""Models: one factory over a small registry of torchvision backbones with two heads."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torchvision import models as tvm

from .labels import MAX_AGE


@dataclass(frozen=True)
class Arch:
    build: Callable[..., nn.Module]
    features: int
    weights: object  # torchvision weights enum member used by --pretrained


ARCHS: dict[str, Arch] = {
    "resnet18": Arch(tvm.resnet18, 512, tvm.ResNet18_Weights.IMAGENET1K_V1),
    "resnet34": Arch(tvm.resnet34, 512, tvm.ResNet34_Weights.IMAGENET1K_V1),
    "resnet50": Arch(tvm.resnet50, 2048, tvm.ResNet50_Weights.IMAGENET1K_V2),
}


class UnknownArchitecture(ValueError):
    pass


class PretrainedUnavailable(RuntimeError):
    pass


class DistributionAgeHead(nn.Module):
    """Label-distribution age head (DLDL): logits over whole years 0..bins-1. Its output is the
    expected age, scaled like the regression head's and shaped (N, 1) like it, so inference,
    test-time augmentation and Grad-CAM treat both heads alike."""

    def __init__(self, features: int, bins: int, offset: float, scale: float):
        super().__init__()
        self.fc = nn.Linear(features, bins)
        self.scale = scale
        self.register_buffer("centers", (torch.arange(bins, dtype=torch.float32) - offset) / scale, persistent=False)

    def expect(self, logits: torch.Tensor) -> torch.Tensor:
        # elementwise and in fp32: autocast would run a matmul in bf16, a few tenths of a year off
        return (logits.float().softmax(-1) * self.centers).sum(-1, keepdim=True)

    def soft_labels(self, age_scaled: torch.Tensor, sigma_years: float) -> torch.Tensor:
        """A Gaussian over the bins around each true age: the DLDL training target."""
        z = (self.centers[None, :] - age_scaled[:, None]) * (self.scale / sigma_years)
        return torch.softmax(-0.5 * z * z, dim=-1)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.expect(self.fc(f))


class AgeGenderNet(nn.Module):
    """A shared trunk, an age head (scaled years) and a gender head (logit of P(female))."""

    def __init__(self, trunk: nn.Module, features: int, dropout: float = 0.0, age_head: nn.Module | None = None):
        super().__init__()
        self.trunk = trunk
        self.dropout = nn.Dropout(dropout)
        self.age_head = age_head or nn.Linear(features, 1)
        self.gender_head = nn.Linear(features, 1)

    def forward(self, x: torch.Tensor, with_age_logits: bool = False):
        """(age, gender logit), plus the age head's logits over years when asked (DLDL training)."""
        f = self.dropout(self.trunk(x))
        logit = self.gender_head(f).squeeze(1)
        if with_age_logits:
            bins = self.age_head.fc(f)
            return self.age_head.expect(bins).squeeze(1), logit, bins
        return self.age_head(f).squeeze(1), logit

    @property
    def cam_layers(self) -> dict[str, nn.Module]:
        """Layers Grad-CAM can target, by name: the last block of layer4 by default."""
        t = self.trunk
        return {"layer4": t.layer4[-1], "layer3": t.layer3[-1]}


def create_model(arch: str, pretrained: bool = False, dropout: float = 0.0, age_bins: int = 0,
                 age_offset: float = 0.0, age_scale: float = 1.0) -> AgeGenderNet:
    """``age_bins`` > 0 gives a label-distribution age head over whole years (DLDL); it needs the
    age scaling, so its output matches the regression head's."""
    if arch not in ARCHS:
        raise UnknownArchitecture(f"unknown architecture {arch!r}; known: {', '.join(ARCHS)}")
    spec = ARCHS[arch]
    weights = None
    if pretrained:
        try:
            weights = spec.weights
            trunk = spec.build(weights=weights)
        except Exception as e:  # noqa: BLE001 - any download failure gets the same advice
            raise PretrainedUnavailable(
                f"could not load torchvision's ImageNet weights for {arch} ({type(e).__name__}: {e}). "
                "Without internet access, train from scratch (drop --pretrained) or put the weights "
                "file in $TORCH_HOME/hub/checkpoints/."
            ) from e
    else:
        trunk = spec.build(weights=None)
    trunk.fc = nn.Identity()
    head = DistributionAgeHead(spec.features, age_bins, age_offset, age_scale) if age_bins else None
    return AgeGenderNet(trunk, spec.features, dropout, head)


def age_range(meta: dict) -> tuple[float, float]:
    """The youngest and oldest age a checkpoint may predict: meta's explicit ``age_range`` when it
    records one; else 0 to the DLDL head's last bin (its expectation cannot leave them); else 0 to the
    oldest age a UTKFace name may carry, since a regression head has no bound of its own (an
    undertrained one says 997)."""
    if "age_range" in meta:
        lo, hi = meta["age_range"]
        return float(lo), float(hi)
    bins = int(meta.get("age_bins", 0))
    return 0.0, float(bins - 1 if bins else MAX_AGE)


def decode_age(raw: torch.Tensor, offset: float, scale: float,
               limits: tuple[float, float] = (0.0, float(MAX_AGE))) -> torch.Tensor:
    """Model output (scaled) -> years, kept inside the label range ``limits`` (see age_range):
    every place that turns outputs into ages comes through here."""
    return (raw.float() * scale + offset).clamp(*limits)
