"""A head turned with depth: aligned face chips as the same face seen after a yaw of some degrees, each pixel
moved by the mean face's depth under it, batched on tensors like the levers of agegender.models.degrade.

``degrade.yaw_warp`` turns a plane: the nose and the far cheek keep their places relative to each other. A
head is not flat: turned by theta about a vertical axis, a point at (x, depth d) goes to
x' = x cos(theta) + d sin(theta), so the nose (d large) slides towards the far side further than the cheeks,
the near cheek widens, and where the surface turns away (dx'/dx < 0) it hides what lies behind it. The depth
is MediaPipe's canonical face mesh placed on the 5-point template (face_depth.json, derived by
``python -m benchmarks.face_depth``, with its licence and provenance), continued smoothly off the mesh over
hair, ears and neck.

How one row is turned. y does not change under a yaw seen orthographically, so every image row is a 1-D
warp. With the camera on the -x side of the turned surface (a positive turn), a point is hidden exactly when
a point to its left lands at or right of it: x' below the running maximum of x' along the row. The running
maximum (cummax) is therefore the visible surface, non-decreasing, and each output column's source is found
by searchsorted in it: a backward warp with the occlusion test built in, one grid_sample in the end. A
negative turn is the positive one of the mirrored image, mirrored back (the depth is symmetric).

Background. Towards the chip's left and right edges the turn fades out (RAMP): the borders stay put, and the
strip between them and the turned head is stretched from the pixels there (hair, ears, background), which is
how the uncovered side is filled; rows never leave holes.

``realign``: the turned face aligned again by its five landmarks, as every photo is before the model sees it
(agegender.faces.detect.align_face): the similarity from the template's landmarks to where the turn takes them, so
the face zooms in as its eyes close up, as FairFace's turned faces do.
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F

from .degrade import similarity_fit

DEPTH_FILE = Path(__file__).with_name("face_depth.json")
# The turn fades out between these |x| (half chip widths) so the chip's borders stay where they are: the
# mesh is 1.1 half widths wide at the ears, so the face itself (|x| < 0.75) turns fully.
RAMP = (0.75, 1.0)
SUPERSAMPLE = 2  # source positions per output column in the row search: half-pixel steps
# Largest turn the lever draws: beyond ~60 degrees the far eye is hidden and a profile shows the side of the
# head, which no depth warp of a frontal chip has pixels for.
MAX_DEGREES = 60.0


@lru_cache(maxsize=1)
def _load() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(depth 1 x 1 x C x C, template landmarks 5 x 2, their depth 5) from face_depth.json."""
    d = json.loads(DEPTH_FILE.read_text())
    depth = torch.tensor(d["depth"], dtype=torch.float32)[None, None]
    points = torch.tensor(d["template_symmetric"], dtype=torch.float32)
    z = F.grid_sample(depth, points.view(1, 1, 5, 2), align_corners=False).flatten()
    return depth, points, z


def depth_map() -> torch.Tensor:
    """The mean face's depth on the chip, C x C (half chip widths, towards the camera, from the axis)."""
    return _load()[0][0, 0]


def _fade(x: torch.Tensor) -> torch.Tensor:
    """1 on the face, falling smoothly (cosine) to 0 at the chip's left and right borders."""
    lo, hi = RAMP
    t = ((x.abs() - lo) / (hi - lo)).clamp(0, 1)
    return 0.5 * (1 + torch.cos(math.pi * t))


def _moved(x: torch.Tensor, depth: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Where a turn of theta (radians, >= 0, broadcast against x) shows the point at x of that depth."""
    return x + _fade(x) * (x * (torch.cos(theta) - 1) + depth * torch.sin(theta))


def turned_landmarks(degrees: torch.Tensor) -> torch.Tensor:
    """The template's five landmarks (N x 5 x 2, half chip widths) after a turn of ``degrees`` (N; positive
    moves the nose to the image's right), as a detector would find them on the turned chip."""
    _, points, z = _load()
    deg = torch.as_tensor(degrees, dtype=torch.float32).flatten()
    theta = deg.abs().deg2rad().view(-1, 1)
    sign = torch.where(deg < 0, -1.0, 1.0).view(-1, 1)
    mirrored = points[[1, 0, 2, 4, 3]]  # the template is symmetric: point k mirrored is point k's mirror
    x = torch.where(sign < 0, -mirrored[:, 0], points[:, 0]).expand(len(deg), 5)
    zz = torch.where(sign < 0, z[[1, 0, 2, 4, 3]], z).expand(len(deg), 5)
    xs = sign * _moved(x, zz, theta)
    ys = torch.where(sign < 0, mirrored[:, 1], points[:, 1]).expand(len(deg), 5)
    out = torch.stack((xs, ys), -1)
    return torch.where((sign < 0).view(-1, 1, 1), out[:, [1, 0, 2, 4, 3]], out)


def realign(degrees: torch.Tensor) -> torch.Tensor:
    """Per turn, the N x 2 x 3 similarity (least squares, no reflection, as the 5-point alignment of a photo)
    from the template's landmarks to the turned ones: output point q of the aligned chip lies at A q + b in
    the turned image. Identity at 0 degrees."""
    return similarity_fit(_load()[1].double(), turned_landmarks(degrees).double())


def _centres(n: int, device, dtype) -> torch.Tensor:
    return (torch.arange(n, device=device, dtype=dtype) * 2 + 1) / n - 1


def source_columns(theta: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """For a turn of theta (N radians, >= 0), the source x (N x H x W, half widths) each output pixel of the
    turned image shows; its row is its own (a yaw keeps y). Hidden points are never a source: see the
    module's note on cummax."""
    device, dtype = theta.device, torch.float32
    n, k = len(theta), w * SUPERSAMPLE
    xs = _centres(k, device, dtype)
    rows = _centres(h, device, dtype)
    grid = torch.stack(torch.broadcast_tensors(xs.view(1, k), rows.view(h, 1)), -1)  # H x K x 2
    depth = F.grid_sample(_load()[0].to(device), grid[None], align_corners=False, padding_mode="border")[0, 0]
    seen = _moved(xs, depth, theta.view(n, 1, 1))  # N x H x K: where each source point lands
    front = torch.cummax(seen, dim=-1).values  # the visible surface, non-decreasing along the row
    u = _centres(w, device, dtype).expand(n, h, w).contiguous()
    idx = torch.searchsorted(front, u).clamp_(1, k - 1)
    m0, m1 = front.gather(-1, idx - 1), front.gather(-1, idx)
    f = ((u - m0) / (m1 - m0).clamp_min(1e-12)).clamp_(0, 1)
    return xs[idx - 1] + f * (xs[idx] - xs[idx - 1])


def turn_grid(degrees: torch.Tensor, h: int, w: int, realign_: bool = False) -> torch.Tensor:
    """The sampling grid (N x H x W x 2, for F.grid_sample with align_corners=False) of ``turn`` for
    non-negative ``degrees``."""
    theta = torch.as_tensor(degrees, dtype=torch.float32).flatten().deg2rad()
    xsrc = source_columns(theta, h, w)
    rows = _centres(h, theta.device, torch.float32).view(1, h, 1).expand_as(xsrc)
    if not realign_:
        return torch.stack((xsrc, rows), -1)
    # the aligned output's pixels lie at A q + b in the turned image: look the turned image's source map up
    # there (a resampling of the map, not of the pixels: still one resampling of the image)
    where = F.affine_grid(realign(degrees).to(theta.device), [len(theta), 1, h, w], align_corners=False)
    x = F.grid_sample(xsrc.unsqueeze(1), where, align_corners=False, padding_mode="border")[:, 0]
    return torch.stack((x, where[..., 1]), -1)


def turn(x: torch.Tensor, degrees, realign_: bool = False) -> torch.Tensor:
    """Images N x C x H x W (float) with each head turned by ``degrees`` (a number, or N of them; positive
    moves the nose to the image's right, negative to its left). 0 returns the images (within the rounding
    of one bilinear resampling at the pixels' own centres). ``realign_``: then aligned again by the five
    landmarks, as a photo of that head would be."""
    n, _, h, w = x.shape
    deg = torch.as_tensor(degrees, dtype=torch.float32).flatten().expand(n).to(x.device)
    left = (deg < 0).view(-1, 1, 1, 1)
    src = torch.where(left, x.flip(3), x) if bool(left.any()) else x
    grid = turn_grid(deg.abs(), h, w, realign_).to(x.dtype)
    out = F.grid_sample(src, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return torch.where(left, out.flip(3), out) if bool(left.any()) else out


def random_turn(x: torch.Tensor, p: float, g: torch.Generator, max_degrees: float = MAX_DEGREES,
                realign_: bool = True) -> torch.Tensor:
    """A share ``p`` of the images turned by an angle drawn uniformly in [-max_degrees, max_degrees]; in
    place, like degrade's levers. Realigned by default: the faces the model meets in photos are aligned by
    their landmarks. At ``p`` <= 0 it draws nothing."""
    if p <= 0:
        return x
    if not 0 < max_degrees <= MAX_DEGREES:
        raise ValueError(f"a turn of at most {MAX_DEGREES} degrees, not {max_degrees}")
    u = torch.rand(x.shape[0], 2, generator=g)
    idx = (u[:, 0] < p).nonzero().flatten()
    if len(idx):
        deg = (u[idx, 1] * 2 - 1) * max_degrees
        idx = idx.to(x.device)
        x[idx] = turn(x[idx], deg, realign_).clamp_(0, 1)
    return x
