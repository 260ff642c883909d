"""Batched prediction on preprocessed pixels, shared by training, evaluation, the CLI and the dashboard.

``predict_checkpoint`` is the one call from pixels to (years, P(female)) for a checkpoint: it reads
the preprocessing and the age head's scaling from the checkpoint itself, so no caller passes them.
``predict_quantiles`` adds the quantiles of each face's age distribution (agegender.evaluation.intervals).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from .model import AgeGenderNet, AgeScaling, DistributionAgeHead
from .preprocess import Preprocess, preprocess, to_batch
from .runtime import autocast

if TYPE_CHECKING:
    from .checkpoint import Checkpoint


def distribution_quantiles(probs: np.ndarray, levels: Sequence[float]) -> np.ndarray:
    """N x bins probabilities over whole years 0..bins-1 -> N x len(levels) years. Year k's mass is spread
    evenly over [k - 0.5, k + 0.5] (which keeps the mean), so a quantile moves smoothly with the probabilities
    instead of jumping a year at a time: p = (0.2, 0.5, 0.3) has its median at 0.5 + 0.3 / 0.5 = 1.1."""
    p = np.asarray(probs, np.float64)
    p = p / p.sum(1, keepdims=True)
    cdf = np.cumsum(p, 1)
    rows = np.arange(len(p))
    out = np.empty((len(p), len(levels)))
    for j, q in enumerate(levels):
        k = np.minimum((cdf < q).sum(1), p.shape[1] - 1)  # the year whose mass the quantile falls in
        below = np.where(k > 0, cdf[rows, k - 1], 0.0)
        mass = p[rows, k]
        out[:, j] = k - 0.5 + np.clip(np.divide(q - below, mass, out=np.full(len(p), 0.5), where=mass > 0), 0, 1)
    return out


def predict_pixels(
    model: AgeGenderNet,
    pixels: np.ndarray,
    pp: Preprocess,
    scaling: AgeScaling,
    tta: bool = True,
    batch_size: int = 256,
    precision: str = "auto",
) -> tuple[np.ndarray, np.ndarray]:
    """N x S x S x 3 uint8 -> (age in years, P(female)); with ``tta`` the mean over the
    image and its mirror, taken on the heads' outputs before decoding."""
    return _predict(model, pixels, pp, scaling, tta, batch_size, precision, False)[:2]


@torch.inference_mode()
def _predict(model: AgeGenderNet, pixels: np.ndarray, pp: Preprocess, scaling: AgeScaling, tta: bool,
             batch_size: int, precision: str, with_distribution: bool
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """predict_pixels, plus (``with_distribution``, for an age head that has one) each face's age distribution
    over whole years, N x bins float64; else None."""
    device = next(model.parameters()).device
    spread = with_distribution and isinstance(model.age_head, DistributionAgeHead)
    ages, probs, dists = [], [], []
    for i in range(0, len(pixels), batch_size):
        x = preprocess(to_batch(np.ascontiguousarray(pixels[i : i + batch_size])).to(device), pp)
        views = [x, x.flip(3)] if tta else [x]
        age_raw = torch.zeros(len(x), device=device)
        logit = torch.zeros(len(x), device=device)
        dist = torch.zeros(len(x), 1, device=device)
        with autocast(device, precision):
            for v in views:
                if spread:  # the same expectation, and the distribution it is taken over
                    a, g, bins = model(v, with_age_logits=True)
                    dist = dist + bins.float().softmax(-1)
                else:
                    a, g = model(v)
                age_raw += a.float()
                logit += g.float()
        ages.append(scaling.decode(age_raw / len(views)).cpu())
        probs.append(torch.sigmoid(logit / len(views)).cpu())
        if spread:  # the mirror's distribution averaged in, like its expectation: the mean of the mixture
            dists.append((dist / len(views)).double().cpu().numpy())
    if not ages:
        empty = np.zeros((0, model.age_head.fc.out_features)) if spread else None
        return np.zeros(0, np.float32), np.zeros(0, np.float32), empty
    return torch.cat(ages).numpy(), torch.cat(probs).numpy(), np.concatenate(dists) if spread else None


def predict_checkpoint(ckpt: Checkpoint, pixels: np.ndarray, tta: bool = True, **kw) -> tuple[np.ndarray, np.ndarray]:
    """Aligned faces (N x S x S x 3 uint8 at the checkpoint's cache size) -> (age in years, P(female)),
    with the checkpoint's own preprocessing, age scaling and age range. ``kw``: batch_size, precision."""
    return predict_pixels(ckpt.model, pixels, ckpt.preprocess, ckpt.scaling, tta=tta, **kw)


def predict_distribution(ckpt: Checkpoint, pixels: np.ndarray, tta: bool = True, batch_size: int = 256,
                         precision: str = "auto") -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """predict_checkpoint, plus each face's age distribution over whole years (N x bins float64), or None for
    an age head without one (regression). With ``tta`` the distribution is the mean of the image's and its
    mirror's, whose expectation is the predicted age. One pass: intervals and the label audit both read it."""
    return _predict(ckpt.model, pixels, ckpt.preprocess, ckpt.scaling, tta, batch_size,
                    precision, True)


def predict_quantiles(ckpt: Checkpoint, pixels: np.ndarray, levels: Sequence[float], tta: bool = True,
                      **kw) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """predict_checkpoint, plus the quantiles at ``levels`` (0.1, 0.9) of each face's age distribution in
    years (N x len(levels), inside the age range; distribution_quantiles), or None for an age head without a
    distribution (regression)."""
    age, pf, dist = predict_distribution(ckpt, pixels, tta, **kw)
    return age, pf, None if dist is None else quantiles_in_range(ckpt, dist, levels)


def quantiles_in_range(ckpt: Checkpoint, dist: np.ndarray, levels: Sequence[float]) -> np.ndarray:
    """distribution_quantiles of ``dist`` (N x bins) clipped to the checkpoint's age range."""
    return np.clip(distribution_quantiles(dist, levels), *ckpt.age_range)


def model_input(ckpt: Checkpoint, pixels: np.ndarray) -> torch.Tensor:
    """One aligned face (S x S x 3 uint8) as the checkpoint's model takes it: 1 x 3 x H x W, on its device."""
    device = next(ckpt.model.parameters()).device
    return preprocess(to_batch(pixels).to(device), ckpt.preprocess)
