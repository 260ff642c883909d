"""Batched prediction on preprocessed pixels, shared by training, evaluation, the CLI and the dashboard.

``predict_checkpoint`` is the one call from pixels to (years, P(female)) for a checkpoint: it reads
the preprocessing and the age head's scaling from the checkpoint itself, so no caller passes them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from .model import AgeGenderNet, AgeScaling
from .preprocess import Preprocess, preprocess, to_batch
from .runtime import autocast

if TYPE_CHECKING:
    from .checkpoint import Checkpoint


@torch.inference_mode()
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
    device = next(model.parameters()).device
    ages, probs = [], []
    for i in range(0, len(pixels), batch_size):
        x = preprocess(to_batch(np.ascontiguousarray(pixels[i : i + batch_size])).to(device), pp)
        views = [x, x.flip(3)] if tta else [x]
        age_raw = torch.zeros(len(x), device=device)
        logit = torch.zeros(len(x), device=device)
        with autocast(device, precision):
            for v in views:
                a, g = model(v)
                age_raw += a.float()
                logit += g.float()
        ages.append(scaling.decode(age_raw / len(views)).cpu())
        probs.append(torch.sigmoid(logit / len(views)).cpu())
    if not ages:
        return np.zeros(0, np.float32), np.zeros(0, np.float32)
    return torch.cat(ages).numpy(), torch.cat(probs).numpy()


def predict_checkpoint(ckpt: Checkpoint, pixels: np.ndarray, tta: bool = True, **kw) -> tuple[np.ndarray, np.ndarray]:
    """Aligned faces (N x S x S x 3 uint8 at the checkpoint's cache size) -> (age in years, P(female)),
    with the checkpoint's own preprocessing, age scaling and age range. ``kw``: batch_size, precision."""
    return predict_pixels(ckpt.model, pixels, ckpt.preprocess, AgeScaling.from_meta(ckpt.meta), tta=tta, **kw)


def model_input(ckpt: Checkpoint, pixels: np.ndarray) -> torch.Tensor:
    """One aligned face (S x S x 3 uint8) as the checkpoint's model takes it: 1 x 3 x H x W, on its device."""
    device = next(ckpt.model.parameters()).device
    return preprocess(to_batch(pixels).to(device), ckpt.preprocess)
