"""Grad-CAM per head with the grad-cam package.

The shared (cached) model never gets a hook: each request runs the trunk up to the target block
under no_grad on the shared model, then a private copy of the rest of the network (target block,
pooling, both heads) that the CAM hooks attach to. Concurrent requests cannot see each other's
activations, and the backward pass stops at the target block. One package call explains every
requested map at once, as a batch of views of the same features. Where the network can be split,
and which blocks are targets, the architecture declares (``Arch.stages`` and ``Arch.cam_layers``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from pytorch_grad_cam import (
    EigenCAM,
    GradCAM,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    ScoreCAM,
    XGradCAM,
)
from pytorch_grad_cam.metrics.road import ROADLeastRelevantFirst, ROADMostRelevantFirst
from pytorch_grad_cam.utils.image import show_cam_on_image
from torch import nn

from ..models.inference import model_input
from ..models.model import AgeGenderNet

if TYPE_CHECKING:
    from ..models.checkpoint import Checkpoint

METHODS = {
    "GradCAM": GradCAM, "GradCAM++": GradCAMPlusPlus, "HiResCAM": HiResCAM, "XGradCAM": XGradCAM,
    "LayerCAM": LayerCAM, "EigenCAM": EigenCAM, "ScoreCAM": ScoreCAM,
}
# map name -> (output column, sign): age is a regression, so "younger" is the negated target
MAPS = {"older": (0, 1.0), "younger": (0, -1.0), "female": (1, 1.0), "male": (1, -1.0)}
HEAD_OF = {"older": "age", "younger": "age", "female": "gender", "male": "gender"}
ERR_NO_LAYERS = "{arch} declares no Grad-CAM layers: add cam_layers and stages to its Arch in agegender/models/model.py"
REMOVED = 80  # ROAD: percentile; 20% of the pixels, most or least relevant first, are imputed
UNFAITHFUL = ("The '{name}' map fails its faithfulness check (ROAD gap {gap:+.2f} {unit}): blurring away the "
              "{share}% of pixels it marks moves the prediction no more than blurring away the {share}% it "
              "leaves out, so it does not show what the model used. Read it as noise; another CAM method or "
              "target layer may do better.")


class HeadTarget:
    """One head's output, signed: a target callable in the grad-cam package's sense."""

    def __init__(self, column: int, sign: float):
        self.column, self.sign = column, sign

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        return self.sign * output[..., self.column]


class _Suffix(nn.Module):
    """A private copy of the network from the target block on; earlier blocks stay shared."""

    def __init__(self, model: AgeGenderNet, layer: str):
        super().__init__()
        blocks = model.blocks()
        target = model.cam_layers[layer]
        k = next(i for i, b in enumerate(blocks) if b is target)  # Arch declares targets among the blocks
        self.prefix = blocks[:k]  # shared modules, run under no_grad: a plain list, not submodules
        self.rest = copy.deepcopy(nn.Sequential(*blocks[k:]))
        self.age_head = copy.deepcopy(model.age_head)
        self.gender_head = copy.deepcopy(model.gender_head)
        self.target_layer = self.rest[0]
        self.cached: tuple[torch.Tensor, torch.Tensor] | None = None  # (input, prefix features)
        self.eval()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if self.cached is not None and x is self.cached[0]:
            return self.cached[1]
        with torch.no_grad():
            for u in self.prefix:
                x = u(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.rest(self.features(x))
        f = torch.flatten(nn.functional.adaptive_avg_pool2d(f, 1), 1)
        return torch.stack([self.age_head(f).squeeze(1), self.gender_head(f).squeeze(1)], dim=1)


@dataclass
class CamMap:
    name: str  # older | younger | female | male
    head: str  # age | gender
    heat: np.ndarray  # H x W in [0, 1], the model input's size
    road_most: float | None = None  # target change when the most relevant 20% are imputed
    road_least: float | None = None  # ... when the least relevant 20% are imputed

    @property
    def faithfulness(self) -> float | None:
        """How much more removing the relevant pixels hurts than removing the irrelevant ones,
        in the target's units (years for age, logit for gender); near zero for a noise map."""
        if self.road_most is None or self.road_least is None:
            return None
        return self.road_least - self.road_most

    @property
    def unit(self) -> str:
        return "y" if self.head == "age" else "logit"

    def faithfulness_note(self) -> str | None:
        """What a ROAD gap at or below zero means, in words; None when the map passed (or was not checked)."""
        gap = self.faithfulness
        if gap is None or gap > 0:
            return None
        return UNFAITHFUL.format(name=self.name, gap=gap, unit=self.unit, share=100 - REMOVED)


def layer_names(models) -> list[str]:
    """The Grad-CAM layers every one of these models declares, in the first one's order (its default first)."""
    first, *rest = [list(m.cam_layers) for m in models]
    return [name for name in first if all(name in r for r in rest)]


def explain(
    model: AgeGenderNet,
    x: torch.Tensor,
    maps: tuple[str, ...] = ("older", "younger", "female"),
    method: str = "GradCAM",
    layer: str | None = None,
    aug_smooth: bool = False,
    eigen_smooth: bool = False,
    faithfulness: bool = False,
    age_scale: float = 1.0,
) -> list[CamMap]:
    """CAMs for one preprocessed face ``x`` (1 x 3 x H x W). Hooks come off when this returns.
    ``layer``: one of ``model.cam_layers``, by default the first. ``age_scale`` turns the age head's
    faithfulness figures into years: explain_checkpoint passes the checkpoint's."""
    if method not in METHODS:
        raise ValueError(f"unknown CAM method {method!r}; known: {', '.join(METHODS)}")
    layers = model.cam_layers
    if not layers:
        raise ValueError(ERR_NO_LAYERS.format(arch=type(model.trunk).__name__))
    layer = next(iter(layers)) if layer is None else layer
    if layer not in layers:
        raise ValueError(f"unknown target layer {layer!r}; known: {', '.join(layers)}")
    unknown = [m for m in maps if m not in MAPS]
    if unknown or not maps:
        raise ValueError(f"unknown map(s) {unknown}; known: {', '.join(MAPS)}")
    if x.ndim != 4 or x.shape[0] != 1:
        raise ValueError(f"explain takes one face (1 x 3 x H x W), got {tuple(x.shape)}")
    suffix = _Suffix(model, layer).to(x.device)
    xs = x.detach().expand(len(maps), -1, -1, -1)
    suffix.cached = (xs, suffix.features(x).expand(len(maps), -1, -1, -1))
    targets = [HeadTarget(*MAPS[m]) for m in maps]
    with torch.enable_grad(), METHODS[method](model=suffix, target_layers=[suffix.target_layer]) as cam:
        heats = cam(input_tensor=xs, targets=targets, aug_smooth=aug_smooth, eigen_smooth=eigen_smooth)
    out = [CamMap(m, HEAD_OF[m], heats[i].astype(np.float32)) for i, m in enumerate(maps)]
    if faithfulness:
        xc = xs.contiguous()
        suffix.cached = (xc, suffix.cached[1])
        most = ROADMostRelevantFirst(percentile=REMOVED)(xc, heats, targets, suffix)
        least = ROADLeastRelevantFirst(percentile=REMOVED)(xc, heats, targets, suffix)
        for i, c in enumerate(out):
            unit = age_scale if c.head == "age" else 1.0
            c.road_most, c.road_least = float(most[i]) * unit, float(least[i]) * unit
    return out


def explain_checkpoint(ckpt: Checkpoint, pixels: np.ndarray, maps: tuple[str, ...] = ("older", "younger", "female"),
                       **kw) -> list[CamMap]:
    """CAMs for one aligned face (S x S x 3 uint8 at the checkpoint's cache size), preprocessed the
    checkpoint's way, with age faithfulness in years by its age scaling. ``kw`` as for explain."""
    return explain(ckpt.model, model_input(ckpt, pixels), maps=maps, age_scale=ckpt.scaling.scale, **kw)


def overlay(face_rgb: np.ndarray, heat: np.ndarray, opacity: float = 0.5) -> np.ndarray:
    """The heat map over the face (uint8 H x W x 3; the heat map is resized to fit)."""
    import cv2

    h, w = face_rgb.shape[:2]
    if heat.shape != (h, w):
        heat = cv2.resize(heat, (w, h), interpolation=cv2.INTER_LINEAR)
    return show_cam_on_image(face_rgb.astype(np.float32) / 255, heat, use_rgb=True, image_weight=1 - opacity)
