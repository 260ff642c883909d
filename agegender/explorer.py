"""Error explorer: the worst age errors and the misgendered faces of a split, their chips from
the dataset, and Grad-CAMs averaged over the faces of each group."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
from PIL import Image

from .catalog import DATA_ENV
from .checkpoint import Checkpoint
from .data import Scan, iter_bytes
from .explain import explain
from .predict import model_input
from .preprocess import resize_image

ERR_NO_DATA = (f"the error explorer needs the UTKFace images: set the dataset path in the sidebar, "
               f"or the environment variable {DATA_ENV}")


def worst_age_errors(df: pd.DataFrame, n: int = 24) -> pd.DataFrame:
    d = df.assign(error=df["pred_age"] - df["age"])
    return d.reindex(d["error"].abs().sort_values(ascending=False).index).head(n)


def misgendered(df: pd.DataFrame, n: int = 24) -> pd.DataFrame:
    """Wrong gender calls, the most confident first."""
    female = df["gender"] == "female"
    wrong = df[(df["p_female"] >= 0.5) != female]
    return wrong.reindex((wrong["p_female"] - 0.5).abs().sort_values(ascending=False).index).head(n)


def read_chips(scan: Scan, members: list[str]) -> dict[str, Image.Image]:
    """The listed images from the dataset, by member path; missing or unreadable ones are left out."""
    wanted = {s.member: s for s in scan.samples}
    samples = [wanted[m] for m in members if m in wanted]
    out = {}
    for s, raw in iter_bytes(scan, samples):
        if raw is None:
            continue
        try:
            with Image.open(io.BytesIO(raw)) as im:
                out[s.member] = im.convert("RGB")
        except OSError:
            continue
    return out


def mean_cams(ckpt: Checkpoint, chips: list[Image.Image], maps: tuple[str, ...] = ("older", "female"),
              method: str = "GradCAM") -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The mean face (uint8, the model's cache size) and each map averaged over the chips: where a
    head looks for a whole group."""
    sums: dict[str, np.ndarray] = {}
    faces = [resize_image(chip, ckpt.preprocess.cache_size) for chip in chips]
    for pixels in faces:
        for c in explain(ckpt.model, model_input(ckpt, pixels), maps=maps, method=method):
            sums[c.name] = sums.get(c.name, 0) + c.heat
    mean_face = np.mean(faces, axis=0).astype(np.uint8) if faces else None
    return mean_face, {k: v / max(1, len(chips)) for k, v in sums.items()}
