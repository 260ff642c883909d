"""Models: one factory over a small registry of torchvision backbones with two heads."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torchvision import models as tvm


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


class AgeGenderNet(nn.Module):
    """A shared trunk, an age head (scaled years) and a gender head (logit of P(female))."""

    def __init__(self, trunk: nn.Module, features: int, dropout: float = 0.0):
        super().__init__()
        self.trunk = trunk
        self.dropout = nn.Dropout(dropout)
        self.age_head = nn.Linear(features, 1)
        self.gender_head = nn.Linear(features, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.dropout(self.trunk(x))
        return self.age_head(f).squeeze(1), self.gender_head(f).squeeze(1)

    @property
    def cam_layers(self) -> dict[str, nn.Module]:
        """Layers Grad-CAM can target, by name: the last block of layer4 by default."""
        t = self.trunk
        return {"layer4": t.layer4[-1], "layer3": t.layer3[-1]}


def create_model(arch: str, pretrained: bool = False, dropout: float = 0.0) -> AgeGenderNet:
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
    return AgeGenderNet(trunk, spec.features, dropout)


def decode_age(raw: torch.Tensor, offset: float, scale: float) -> torch.Tensor:
    """Model output (scaled) -> years, never negative."""
    return (raw.float() * scale + offset).clamp(min=0)
