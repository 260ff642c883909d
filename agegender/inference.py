"""Batched prediction on preprocessed pixels, shared by training, evaluation and the dashboard."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from .model import AgeGenderNet, DistributionAgeHead, age_range, decode_age
from .preprocess import Preprocess, preprocess, to_batch
from .runtime import autocast

if TYPE_CHECKING:
    from .checkpoint import Checkpoint


@torch.inference_mode()
def predict_pixels(
    model: AgeGenderNet,
    pixels: np.ndarray,
    pp: Preprocess,
    age_offset: float,
    age_scale: float,
    tta: bool = True,
    batch_size: int = 256,
    precision: str = "auto",
    limits: tuple[float, float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """N x S x S x 3 uint8 -> (age in years, P(female)); with ``tta`` the mean over the
    image and its mirror. Ages stay inside ``limits``: pass ``age_range(meta)``; None takes the
    range the model's own age head implies (training validates before any meta.json exists)."""
    device = next(model.parameters()).device
    if limits is None:
        head = model.age_head
        limits = age_range({"age_bins": head.fc.out_features} if isinstance(head, DistributionAgeHead) else {})
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
        ages.append(decode_age(age_raw / len(views), age_offset, age_scale, limits).cpu())
        probs.append(torch.sigmoid(logit / len(views)).cpu())
    if not ages:
        return np.zeros(0, np.float32), np.zeros(0, np.float32)
    return torch.cat(ages).numpy(), torch.cat(probs).numpy()


def predict_checkpoint(ckpt: Checkpoint, pixels: np.ndarray, tta: bool = True, **kw) -> tuple[np.ndarray, np.ndarray]:
    """predict_pixels with everything the checkpoint says about itself: preprocessing, age scaling
    and age range, so no caller rebuilds that contract."""
    m = ckpt.meta
    return predict_pixels(ckpt.model, pixels, ckpt.preprocess, m["age_offset"], m["age_scale"], tta=tta,
                          limits=age_range(m), **kw)
