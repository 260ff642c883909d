"""Batched prediction on preprocessed pixels, shared by training, evaluation and the dashboard."""

from __future__ import annotations

import numpy as np
import torch

from .model import AgeGenderNet, decode_age
from .preprocess import Preprocess, preprocess, to_batch
from .runtime import autocast


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
) -> tuple[np.ndarray, np.ndarray]:
    """N x S x S x 3 uint8 -> (age in years, P(female)); with ``tta`` the mean over the
    image and its mirror."""
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
        ages.append(decode_age(age_raw / len(views), age_offset, age_scale).cpu())
        probs.append(torch.sigmoid(logit / len(views)).cpu())
    if not ages:
        return np.zeros(0, np.float32), np.zeros(0, np.float32)
    return torch.cat(ages).numpy(), torch.cat(probs).numpy()
