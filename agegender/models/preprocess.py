"""The one preprocessing path shared by training, evaluation, the CLI and the dashboard.

Every image becomes a square uint8 image of ``cache_size`` pixels (the form the
training cache stores), then a batch of those becomes the model input: a crop of
``input_size`` pixels, normalised. Training adds a random affine and colour
jitter (and, if asked, random erasing and the photo degradations of ``agegender.models.degrade``)
on the whole batch in one pass; evaluation takes the centre crop (``centre_crop``, which the
dashboard's display of a face uses too, so a Grad-CAM laid over it lines up with what the model saw).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from . import degrade

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    cache_size: int = 128  # square size every image is resized to first (UTKFace chips are 200 px)
    input_size: int = 112  # the model sees a crop of this size: 112 px is ~1.5x faster than 128 px
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Preprocess:
        return cls(
            cache_size=int(d["cache_size"]),
            input_size=int(d["input_size"]),
            mean=tuple(float(v) for v in d["mean"]),
            std=tuple(float(v) for v in d["std"]),
        )


@dataclass(frozen=True)
class Augment:
    scale: float = 0.12  # random zoom in [1 - scale, 1 + scale]
    rotate: float = 10.0  # degrees, uniform in [-rotate, rotate]
    shift: float = 0.06  # fraction of the image, each axis
    flip: bool = True
    brightness: float = 0.25
    contrast: float = 0.25
    saturation: float = 0.25
    # probability of random erasing (Zhong et al. 2017): one rectangle of 2-33% of the crop, aspect
    # 0.3-3.3, set to the mean colour, so the network cannot lean on any one part of the face
    erase: float = 0.0
    # Photo degradations (agegender.models.degrade, where each range is explained), all off by default: the share
    # of images each applies to, drawn independently per image and lever.
    downscale: float = 0.0  # shrunk to 1/4-2/3 (antialiased) and enlarged back: a small face
    blur: float = 0.0  # Gaussian blur, sigma 0.7-2 px
    jpeg: float = 0.0  # JPEG re-compression at quality 15-60
    noise: float = 0.0  # Gaussian noise (std 1-10 grey levels) plus a little shot-like noise
    cast: float = 0.0  # white-balance error: per-channel gains 0.8-1.2, grey kept
    grayscale: float = 0.0  # a black-and-white photo
    # not a share: the largest head turn, as the t of degrade.yaw_warp drawn in [-yaw, yaw] for every image
    # (t = tan(yaw angle) / sqrt(3): 0.2 is ~19 degrees, 0.3 ~27); composed into the affine, no extra resampling
    yaw: float = 0.0
    # with yaw: align the turned face as a photo's is (degrade.realign): its 5 landmarks onto the template,
    # which zooms in and slides the crop as inference does on turned heads, instead of framing it like a chip
    yaw_realign: bool = False

    PHOTO = ("downscale", "blur", "jpeg", "noise", "cast", "grayscale", "yaw")  # the degradation levers

    def __post_init__(self) -> None:
        if self.yaw_realign and self.yaw <= 0:
            raise ValueError("--aug-yaw-realign aligns turned heads: it needs --aug-yaw above 0")
        for name in self.PHOTO[:-1]:
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"--aug-{name} is a probability, not {getattr(self, name)}")
        if not 0 <= self.yaw <= degrade.YAW_MAX:
            raise ValueError(f"--aug-yaw must be in [0, {degrade.YAW_MAX}], not {self.yaw}")


def centre_crop(pixels: np.ndarray | torch.Tensor, pp: Preprocess) -> np.ndarray | torch.Tensor:
    """The square of ``input_size`` pixels in the middle of images at ``cache_size``: what the model
    sees of them at evaluation. ``pixels`` is channels-last, one image (S x S x 3) or a batch
    (N x S x S x 3); the result is a view."""
    if tuple(pixels.shape[-3:-1]) != (pp.cache_size, pp.cache_size):
        raise ValueError(f"expected {pp.cache_size} px images (resize_image first), got {tuple(pixels.shape)}")
    off = (pp.cache_size - pp.input_size) // 2
    return pixels[..., off : off + pp.input_size, off : off + pp.input_size, :]


def to_batch(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """N x H x W x 3 uint8 (array or tensor) -> N x 3 x H x W uint8 tensor."""
    if isinstance(images, np.ndarray):
        t = torch.from_numpy(images if images.flags.writeable else images.copy())
    else:
        t = images
    if t.ndim == 3:
        t = t.unsqueeze(0)
    if t.ndim != 4 or t.shape[-1] != 3 or t.dtype != torch.uint8:
        raise ValueError(f"expected N x H x W x 3 uint8 images, got {tuple(t.shape)} {t.dtype}")
    return t.permute(0, 3, 1, 2)


def _normalise(x: torch.Tensor, pp: Preprocess) -> torch.Tensor:
    mean = torch.tensor(pp.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(pp.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous(memory_format=torch.channels_last)


def _random_affine(x: torch.Tensor, pp: Preprocess, aug: Augment, g: torch.Generator) -> torch.Tensor:
    n = x.shape[0]

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return torch.rand(n, generator=g) * (hi - lo) + lo

    zoom = uniform(1 - aug.scale, 1 + aug.scale)
    angle = uniform(-aug.rotate, aug.rotate) * (math.pi / 180)
    # theta maps output coordinates to input ones: the base factor is the crop.
    a = (pp.input_size / pp.cache_size) / zoom
    cos, sin = torch.cos(angle) * a, torch.sin(angle) * a
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = cos, -sin
    theta[:, 1, 0], theta[:, 1, 1] = sin, cos
    theta[:, 0, 2] = uniform(-2 * aug.shift, 2 * aug.shift)
    theta[:, 1, 2] = uniform(-2 * aug.shift, 2 * aug.shift)
    if aug.flip:
        mirror = torch.rand(n, generator=g) < 0.5
        theta[mirror, :, 0] *= -1
    theta = theta.to(x.device)
    size = [n, 3, pp.input_size, pp.input_size]
    if aug.yaw > 0:  # drawn only then, so runs without it keep their random stream
        turn = degrade.yaw_aligned_grid if aug.yaw_realign else degrade.yaw_affine_grid
        grid = turn(theta, uniform(-aug.yaw, aug.yaw), size)
    else:
        grid = F.affine_grid(theta, size, align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def _random_erase(x: torch.Tensor, p: float, g: torch.Generator) -> torch.Tensor:
    """Zero (the mean, once normalised) one random rectangle in a share ``p`` of the images."""
    n, _, h, w = x.shape
    u = torch.rand(n, 5, generator=g)  # erase?, area, aspect, centre y, centre x
    area = (0.02 + u[:, 1] * 0.31) * h * w
    aspect = torch.exp((u[:, 2] * 2 - 1) * math.log(1 / 0.3))
    half_h, half_w = (area * aspect).sqrt() / 2, (area / aspect).sqrt() / 2
    ys = torch.arange(h).view(1, h, 1) + 0.5
    xs = torch.arange(w).view(1, 1, w) + 0.5
    inside = (((ys - u[:, 3].view(n, 1, 1) * h).abs() <= half_h.view(n, 1, 1))
              & ((xs - u[:, 4].view(n, 1, 1) * w).abs() <= half_w.view(n, 1, 1))
              & (u[:, 0] < p).view(n, 1, 1))
    return x.masked_fill(inside.unsqueeze(1).to(x.device), 0.0)


def _colour_jitter(x: torch.Tensor, aug: Augment, g: torch.Generator) -> torch.Tensor:
    n = x.shape[0]

    def factor(amount: float) -> torch.Tensor:
        return (1 + (torch.rand(n, generator=g) * 2 - 1) * amount).view(n, 1, 1, 1).to(x.device)

    gray = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
    x = gray + (x - gray) * factor(aug.saturation)
    x = x * factor(aug.brightness)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = mean + (x - mean) * factor(aug.contrast)
    return x.clamp_(0, 1)


def preprocess(
    batch: torch.Tensor,
    pp: Preprocess,
    augment: Augment | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """N x 3 x S x S uint8 (S = pp.cache_size) -> normalised float model input.

    Without ``augment`` this is the centre crop used for evaluation and the
    dashboard; with it, for training: the random affine (with the head turn), then what a camera and
    the web do to resolution (downscale, blur, JPEG), then colour (jitter, cast, grey), then noise,
    normalisation and random erasing. A lever at 0 draws nothing from ``generator``.
    """
    if batch.dtype != torch.uint8 or batch.ndim != 4 or batch.shape[1] != 3:
        raise ValueError(f"expected N x 3 x H x W uint8, got {tuple(batch.shape)} {batch.dtype}")
    if batch.shape[-2:] != (pp.cache_size, pp.cache_size):
        raise ValueError(
            f"expected {pp.cache_size} px images (resize_image first), got {tuple(batch.shape[-2:])}"
        )
    if augment is None:  # the batch is N x 3 x S x S: crop it as the N x S x S x 3 images it came from
        x = centre_crop(batch.permute(0, 2, 3, 1), pp).permute(0, 3, 1, 2).float().div_(255)
    else:
        x = batch.float().div_(255)
        g = generator if generator is not None else torch.default_generator
        x = _random_affine(x, pp, augment, g)
        x = degrade.random_downscale(x, augment.downscale, g)
        x = degrade.random_blur(x, augment.blur, g)
        x = degrade.random_jpeg(x, augment.jpeg, g)
        x = _colour_jitter(x, augment, g)
        x = degrade.random_cast(x, augment.cast, g)
        x = degrade.random_grayscale(x, augment.grayscale, g)
        x = degrade.random_noise(x, augment.noise, g)
        if augment.erase > 0:  # no draw otherwise, so runs without erasing keep their random stream
            return _random_erase(_normalise(x, pp), augment.erase, g)
    return _normalise(x, pp)
