"""What photos do to faces, as batched training augmentations: the chips UTKFace gives are sharp, frontal,
well exposed, lightly compressed; faces in the wild are small (upscaled), blurred, re-compressed, noisy,
colour-cast, sometimes grey, and turned.

Each ``random_*`` function takes float images N x 3 x H x W in [0, 1], a share ``p`` and a generator;
it picks each image with probability ``p``, draws a strength per image, changes the images picked in
place (``preprocess`` owns the batch, and a copy of it per lever would cost more than the lever) and
returns the batch. At ``p`` <= 0 it draws nothing, so a run without it keeps its random stream. Strengths
come from a few discrete levels where one call per level is cheaper than one per image (interpolation,
blur). Every choice is drawn from the caller's CPU generator; the noise itself from a generator on the
images' device seeded from it, so a seed gives the same batch every time on one device.

The head turn is a change of geometry: ``yaw_warp`` transforms a sampling grid, and
``agegender.models.preprocess`` composes it into the grid of its random affine, so it costs no extra resampling.
Occlusion (``Augment.erase``) and looser or tighter crops (``Augment.scale``, ``Augment.shift``) are
part of ``agegender.models.preprocess`` already.
"""

from __future__ import annotations

import io
import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, as the colour jitter's saturation uses
# Downscale-then-upscale factors. 1/4 of a 128 px crop is a 32 px face, about the smallest a detector
# keeps in a group photo; 2/3 is a face a little under the chips' size, a mild loss of fine detail.
DOWNSCALE_FACTORS = (1 / 4, 1 / 3, 1 / 2, 2 / 3)
# Gaussian blur sigmas in pixels of the crop: 0.7 px is slight defocus, 2 px on a 128 px face (1.5% of its
# width) wipes out the fine wrinkles that age shows in, about what a 1/4 downscale leaves.
BLUR_SIGMAS = (0.7, 1.0, 1.4, 2.0)
# JPEG quality: sites re-compress uploads at 70-85, which at this size hardly shows; 15-60 covers the
# visibly blocky re-compressions (messengers, thumbnails, screenshots of screenshots), below 15 the 8 x 8
# blocks are all that is left of a small face.
JPEG_QUALITY = (15, 60)
# Noise std, in units of full scale: signal-independent (read) noise of 1-10 grey levels, what phone photos
# in dim light keep after denoising, plus a little signal-dependent (shot-like) noise whose std is
# NOISE_SHOT * sqrt(value), up to 5 grey levels at white. More than that reads as film grain, rare in photos.
NOISE_READ = (0.004, 0.04)
NOISE_SHOT = (0.0, 0.02)
# White balance: gain per channel in 1 +- CAST, rescaled to keep grey levels (brightness is the colour
# jitter's). Auto white balance leaves casts of this order under tungsten, fluorescent or shade light.
CAST = 0.2
# Largest yaw_warp t a model of this is good for: t = 0.5 is a ~40 degree turn (see yaw_warp); beyond it a
# real head hides its far side, which no warp of the frontal image shows.
YAW_MAX = 0.5


def _picked(u: torch.Tensor, p: float) -> torch.Tensor:
    """Indices of the images whose first uniform draw is below p."""
    return (u[:, 0] < p).nonzero().flatten()


def _by_level(x: torch.Tensor, idx: torch.Tensor, level: torch.Tensor, levels, op) -> torch.Tensor:
    """x[i] = op(x[i], levels[level[i]]) for i in idx, one op call per level."""
    for k, value in enumerate(levels):
        sel = idx[level[idx] == k]
        if len(sel):
            sel = sel.to(x.device)
            x[sel] = op(x[sel], value)
    return x


def _level(u: torch.Tensor, n_levels: int) -> torch.Tensor:
    return (u * n_levels).long().clamp_(max=n_levels - 1)


def downscale(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Images shrunk by ``factor`` (antialiased, as cameras and resizers do) and enlarged back (bilinear,
    as a viewer or a detector's crop does): the detail a face that small never had is gone."""
    h, w = x.shape[-2:]
    small = F.interpolate(x, size=(max(1, round(h * factor)), max(1, round(w * factor))), mode="bilinear",
                          antialias=True, align_corners=False)
    return F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False).clamp_(0, 1)


def random_downscale(x: torch.Tensor, p: float, g: torch.Generator) -> torch.Tensor:
    """A share ``p`` of the images downscaled by one of DOWNSCALE_FACTORS, drawn per image, and back."""
    if p <= 0:
        return x
    u = torch.rand(x.shape[0], 2, generator=g)
    return _by_level(x, _picked(u, p), _level(u[:, 1], len(DOWNSCALE_FACTORS)), DOWNSCALE_FACTORS, downscale)


def gaussian_kernel(sigma: float) -> torch.Tensor:
    """A normalised 1-D Gaussian, out to 3 sigma."""
    r = max(1, math.ceil(3 * sigma))
    k = torch.exp(-(torch.arange(-r, r + 1, dtype=torch.float64) ** 2) / (2 * sigma**2))
    return (k / k.sum()).float()


def blur_matrix(size: int, sigma: float) -> torch.Tensor:
    """size x size matrix M such that ``row @ M`` is the row blurred with gaussian_kernel(sigma), its edges
    reflected (torch's "reflect" padding: the edge pixel itself is not repeated)."""
    k = gaussian_kernel(sigma)
    r = len(k) // 2
    if r >= size:
        raise ValueError(f"a blur of sigma {sigma} needs images over {r} px, got {size}")
    out = torch.arange(size)
    m = torch.zeros(size, size)
    for d in range(-r, r + 1):
        src = (out + d).abs()  # reflect below 0 ...
        src = torch.where(src >= size, 2 * (size - 1) - src, src)  # ... and past the end
        m.index_put_((src, out), k[d + r].expand(size), accumulate=True)
    return m


def blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of std ``sigma`` pixels, edges reflected (defocus and slight motion look like this at
    this size). Separable, each pass one matrix product with a banded matrix: on a CPU ~10x faster than a
    depthwise convolution of the same kernel, the zeros of the band included."""
    h, w = x.shape[-2:]
    mw = blur_matrix(w, sigma).to(device=x.device, dtype=x.dtype)
    mh = blur_matrix(h, sigma).to(device=x.device, dtype=x.dtype)
    return mh.T @ (x @ mw)


def random_blur(x: torch.Tensor, p: float, g: torch.Generator) -> torch.Tensor:
    """A share ``p`` of the images blurred with one of BLUR_SIGMAS, drawn per image."""
    if p <= 0:
        return x
    u = torch.rand(x.shape[0], 2, generator=g)
    return _by_level(x, _picked(u, p), _level(u[:, 1], len(BLUR_SIGMAS)), BLUR_SIGMAS, blur)


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    return x.mul(255).round_().clamp_(0, 255).to(torch.uint8)


def jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    """Images JPEG-encoded at ``quality`` and decoded: the 8 x 8 blocks, ringing and chroma smear (4:2:0) of
    a re-compressed photo. Works on uint8 on the CPU, so the result is quantised. Pillow's libjpeg-turbo,
    which gives the same bytes as torchvision.io.encode_jpeg / decode_jpeg at the same speed without their
    deprecation (torchvision 0.29 moves image coding to TorchCodec)."""
    u8 = _to_uint8(x).permute(0, 2, 3, 1).cpu().numpy()
    out = []
    for image in u8:
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="JPEG", quality=int(quality))
        with Image.open(buf) as decoded:
            out.append(np.asarray(decoded.convert("RGB")))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).to(device=x.device, dtype=x.dtype).div_(255)


def random_jpeg(x: torch.Tensor, p: float, g: torch.Generator) -> torch.Tensor:
    """A share ``p`` of the images re-compressed at a quality drawn per image from JPEG_QUALITY (whole
    numbers, both ends included); only the images picked go through the codec."""
    if p <= 0:
        return x
    u = torch.rand(x.shape[0], 2, generator=g)
    lo, hi = JPEG_QUALITY
    quality = lo + _level(u[:, 1], hi - lo + 1)
    for i in _picked(u, p).tolist():
        x[i : i + 1] = jpeg(x[i : i + 1], int(quality[i]))
    return x


def _between(u: torch.Tensor, lo_hi: tuple[float, float]) -> torch.Tensor:
    return lo_hi[0] + u * (lo_hi[1] - lo_hi[0])


def random_noise(x: torch.Tensor, p: float, g: torch.Generator) -> torch.Tensor:
    """A share ``p`` of the images with sensor-like noise, independent per pixel and channel: Gaussian of a
    std drawn per image from NOISE_READ plus a shot-like part of std NOISE_SHOT (drawn) * sqrt(value)."""
    if p <= 0:
        return x
    u = torch.rand(x.shape[0], 3, generator=g)
    # the noise itself comes from a generator on x's device seeded from g: one draw from g however many
    # images are picked, and on a GPU no noise tensor to copy over
    seed = int(torch.randint(0, 2**62, (1,), generator=g))
    idx = _picked(u, p)
    if not len(idx):
        return x
    read = _between(u[idx, 1], NOISE_READ).to(x.device).view(-1, 1, 1, 1)
    shot = _between(u[idx, 2], NOISE_SHOT).to(x.device).view(-1, 1, 1, 1)
    idx = idx.to(x.device)
    sub = x[idx]
    std = (read**2 + shot**2 * sub).sqrt_()
    noise = torch.randn(sub.shape, generator=torch.Generator(device=x.device).manual_seed(seed), device=x.device,
                        dtype=x.dtype)
    x[idx] = sub.addcmul_(noise, std).clamp_(0, 1)
    return x


def random_cast(x: torch.Tensor, p: float, g: torch.Generator) -> torch.Tensor:
    """A share ``p`` of the images with a white-balance error: each channel times a gain in 1 +- CAST,
    drawn per image, the three rescaled so that grey keeps its level."""
    if p <= 0:
        return x
    n = x.shape[0]
    u = torch.rand(n, 4, generator=g)
    gains = 1 + (u[:, 1:] * 2 - 1) * CAST
    gains = torch.where((u[:, 0] < p).unsqueeze(1), gains / (gains @ torch.tensor(LUMA)).unsqueeze(1), 1.0)
    # one pass over the batch, gain 1 (exactly no change: x is in [0, 1]) where not picked
    return x.mul_(gains.to(x.device, x.dtype).view(n, 3, 1, 1)).clamp_(0, 1)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """Luma (BT.601) in all three channels."""
    return (LUMA[0] * x[:, 0:1] + LUMA[1] * x[:, 1:2] + LUMA[2] * x[:, 2:3]).expand_as(x)


def random_grayscale(x: torch.Tensor, p: float, g: torch.Generator) -> torch.Tensor:
    """A share ``p`` of the images in grey (black-and-white photos and filters, night-mode and IR
    cameras): the model should not need colour to tell age or gender."""
    if p <= 0:
        return x
    idx = (torch.rand(x.shape[0], generator=g) < p).nonzero().flatten()
    if len(idx):
        idx = idx.to(x.device)
        x[idx] = grayscale(x[idx])
    return x


def yaw_warp(grid: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A sampling grid (N x H x W x 2, x then y in [-1, 1], as F.affine_grid makes) seen through the
    homography of a head turned about the vertical axis, ``t`` per image:

        x' = (x + t) / (t x + 1),   y' = y / (t x + 1)

    (the x' = a x / (t x + 1) of a plane turned about the vertical axis, with a = 1 - t^2 and a shift t
    that keep x = +-1 where they are, so the crop does not slide). The two halves of the image come out
    with widths in the ratio (1 + t) : (1 - t), the side that samples less of the source appearing larger,
    taller too, as the nearer side of a turned face does. A head as a cylinder with the face spanning
    +-60 degrees of it shows that ratio at yaw theta for t = tan(theta) tan(30 degrees): t = 0.2 is ~19
    degrees, 0.3 ~27, 0.5 ~41. t = 0 returns the grid unchanged, exactly."""
    t = t.to(device=grid.device, dtype=grid.dtype).view(-1, 1, 1)
    u, v = grid[..., 0], grid[..., 1]
    d = t * u + 1
    return torch.stack(((u + t) / d, v / d), dim=-1)


def yaw_affine_grid(theta: torch.Tensor, t: torch.Tensor, size: list[int]) -> torch.Tensor:
    """``F.affine_grid(theta, size)`` (align_corners=False) with its output coordinates first put through
    ``yaw_warp``: the head turns in the output's frame, then the affine takes the points into the input.
    The two compose into one homography whose denominator, t x + 1, depends on the column alone, so this
    is one affine_grid and one division (the affine of the warp is ~4x slower on a CPU)."""
    t = t.to(device=theta.device, dtype=theta.dtype)
    a, b = theta[:, :, :2], theta[:, :, 2]
    # theta [A | b] times the homography [[1, 0, t], [0, 1, 0], [t, 0, 1]], its top two rows
    num = torch.stack((a[:, :, 0] + b * t.unsqueeze(1), a[:, :, 1], a[:, :, 0] * t.unsqueeze(1) + b), dim=2)
    w = size[-1]
    u = (torch.arange(w, device=theta.device, dtype=theta.dtype) * 2 + 1) / w - 1  # column centres
    return F.affine_grid(num, size, align_corners=False) / (t.view(-1, 1, 1, 1) * u.view(1, 1, w, 1) + 1)


def unturn_points(points: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Where ``yaw_warp`` shows source points (N x K x 2, or K x 2 for all): its inverse,
    u = (x - t) / (1 - t x), v = y (1 - t^2) / (1 - t x)."""
    t = t.to(points.dtype).view(-1, 1)
    x, y = points[..., 0], points[..., 1]
    d = 1 - t * x
    return torch.stack(((x - t) / d, y * (1 - t * t) / d), dim=-1)


def _template() -> torch.Tensor:
    """The chips' mean landmarks (agegender.faces.detect.load_template) in normalised coordinates (-1..1, pixel
    centres, as F.affine_grid with align_corners=False)."""
    from ..faces.detect import CHIP_SIZE, load_template

    return torch.as_tensor((load_template() + 0.5) / CHIP_SIZE * 2 - 1, dtype=torch.float64)


def realign(t: torch.Tensor) -> torch.Tensor:
    """Per turn t, the N x 2 x 3 similarity (least squares, as faces.similarity_transform) from the template's
    landmarks to the same landmarks turned by ``yaw_warp``: what the 5-point alignment of a photo of a turned
    head does. The eyes close up as the head turns, so it zooms in (scale below 1 here) and slides towards
    the nearer side, as the photos' crops do; the face is then framed like a photo's, not like a chip's."""
    src = _template()
    return similarity_fit(src, unturn_points(src.expand(len(t), -1, -1), t.to(torch.float64)))


def similarity_fit(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """The N x 2 x 3 float32 similarities (least squares, no reflection) taking the K points ``src`` (K x 2) to
    each of the N point sets ``dst`` (N x K x 2): the 2-D Umeyama fit, as one complex ratio."""
    z = torch.complex(src[:, 0], src[:, 1])
    w = torch.complex(dst[..., 0], dst[..., 1])
    zc, wc = z - z.mean(), w - w.mean(-1, keepdim=True)
    a = (zc.conj() * wc).sum(-1) / (zc.abs() ** 2).sum()
    b = w.mean(-1) - a * z.mean()
    m = torch.stack((torch.stack((a.real, -a.imag, b.real), -1), torch.stack((a.imag, a.real, b.imag), -1)), 1)
    return m.to(torch.float32)


def yaw_aligned_grid(theta: torch.Tensor, t: torch.Tensor, size: list[int]) -> torch.Tensor:
    """The sampling grid of a head turned by ``yaw_warp`` and then aligned as a photo is (``realign``), with
    ``theta`` (crop and jitter) acting on the aligned face: output -> theta -> realign -> turn -> input. The
    two affines compose into one, and the turn is an element-wise map of its grid: one resampling still."""
    s = realign(t).to(theta.device, theta.dtype)
    a = s[:, :, :2] @ theta[:, :, :2]
    b = (s[:, :, :2] @ theta[:, :, 2:]).squeeze(-1) + s[:, :, 2]
    grid = F.affine_grid(torch.cat((a, b.unsqueeze(-1)), -1), size, align_corners=False)
    return yaw_warp(grid, t)
