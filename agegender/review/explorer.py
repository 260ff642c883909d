"""Error explorer: the worst age errors, the misgendered faces and the suspected label errors (agegender.review.audit)
of a split, their chips from the dataset, and Grad-CAMs averaged over the faces of each group."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ..data.utkface import evenly_spaced
from ..explain.gradcam import explain_checkpoint
from ..explain.predict import FaceResult, ImageResult
from ..faces.detect import resize_image
from ..fairness.groups import value_order
from ..labels import DECISION, parse_age_bin
from ..models.catalog import DATA_ENV, DATA_FIELD
from ..models.checkpoint import Checkpoint
from ..predictions import complete, metric_columns
from .audit import label_keys, suspects

# What the reviewer can do, in the app, when the UTKFace images are not found (never a command-line flag).
NO_DATA = (f"The error explorer shows UTKFace val / test faces from the UTKFace images, and found none: type their "
           f"folder, .zip or .tar.gz into the sidebar's \"{DATA_FIELD}\" field, or set ${DATA_ENV} before starting "
           f"the app. An evaluation set (the Evaluation set picker) needs no UTKFace.")
NO_DATA_AT = (f"No UTKFace images at {{path}}: type their folder, .zip or .tar.gz into the sidebar's "
              f"\"{DATA_FIELD}\" field, or set ${DATA_ENV} before starting the app.")


def data_problem(path: str) -> str | None:
    """Why the UTKFace images cannot be read from ``path`` (NO_DATA, NO_DATA_AT), or None when it exists."""
    if not path.strip():
        return NO_DATA
    return None if Path(path.strip()).expanduser().exists() else NO_DATA_AT.format(path=path.strip())


def years_outside(pred_age, age_bin) -> np.ndarray:
    """How far each predicted age lies outside its true age bin, in years: 0 inside, negative below, positive
    above (a bin LOW-HIGH holds LOW <= age < HIGH + 1); NaN where the bin is unknown."""
    out = []
    for a, label in zip(np.asarray(pred_age, np.float64), pd.Series(age_bin).fillna("").astype(str), strict=True):
        if not label.strip() or not np.isfinite(a):
            out.append(np.nan)
            continue
        lo, hi = parse_age_bin(label)
        out.append(a - lo if a < lo else (a - (hi + 1) if hi is not None and a >= hi + 1 else 0.0))
    return np.array(out, np.float64)


def worst_age_errors(df: pd.DataFrame, n: int = 24) -> pd.DataFrame:
    """The faces whose age is furthest off, with ``error`` (predicted minus true age, in years). Where ages
    are only bins (FairFace), ranked by bins off (``bin_error``), then by ``error``, the years outside the
    true bin. Photos without a face found have no prediction to show."""
    t = complete(df)
    found = np.flatnonzero(t["found"].to_numpy(bool))
    d = df.iloc[found]
    err = (t["pred_age"] - t["age"]).to_numpy(np.float64)[found]
    if np.isfinite(err).any():  # exact ages: years off (rows with a bin only, if any, come last)
        return d.assign(error=err).iloc[np.argsort(-np.abs(err), kind="stable")].head(n)
    # bins counted on the whole table's bins, as the bias report counts them (see fairness.take)
    bins = metric_columns(t)["bin_err"][found]
    outside = years_outside(t["pred_age"].to_numpy()[found], t["age_bin"].to_numpy()[found])
    order = np.lexsort((-np.abs(outside), -np.abs(bins)))  # the last key sorts first; NaN sorts last
    return d.assign(bin_error=bins, error=outside).iloc[order].head(n)


def misgendered(df: pd.DataFrame, n: int = 24) -> pd.DataFrame:
    """Wrong gender calls, the most confident first (photos without a face found made no call)."""
    t = complete(df)
    wrong = df[t["found"].to_numpy(bool) & ~metric_columns(t)["correct"]]
    return wrong.reindex((wrong["p_female"] - DECISION).abs().sort_values(ascending=False).index).head(n)


def group_values(table: pd.DataFrame, column: str) -> list[str]:
    """The values a group column takes, as the names in_group takes, in the report's order (an age bucket
    or age bin by age, anything else sorted)."""
    return [str(v) for v in value_order(table[column])]


def in_group(table: pd.DataFrame, column: str, value: str) -> pd.DataFrame:
    return table[table[column].astype(str) == value]


def chip_result(ckpt: Checkpoint, name: str, chip: Image.Image, row: pd.Series) -> ImageResult:
    """A dataset chip and its row of the predictions table as the result of predicting it, so the
    dashboard's face view can show it and explain it: the whole chip is the face (it is aligned
    already), with the predictions the table holds rather than new ones."""
    face = FaceResult(box=(0, 0, chip.width, chip.height), confidence=None, predicted=True,
                      pixels=resize_image(chip, ckpt.preprocess.cache_size), age=float(row["pred_age"]),
                      p_female=float(row["p_female"]))
    return ImageResult(name, [face])


def mean_cams(ckpt: Checkpoint, chips: list[Image.Image], maps: tuple[str, ...] = ("older", "female"),
              method: str = "GradCAM") -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The mean face (uint8, the model's cache size) and each map averaged over the chips: where a
    head looks for a whole group."""
    sums: dict[str, np.ndarray] = {}
    faces = [resize_image(chip, ckpt.preprocess.cache_size) for chip in chips]
    for pixels in faces:
        for c in explain_checkpoint(ckpt, pixels, maps=maps, method=method):
            sums[c.name] = sums.get(c.name, 0) + c.heat
    mean_face = np.mean(faces, axis=0).astype(np.uint8) if faces else None
    return mean_face, {k: v / max(1, len(chips)) for k, v in sums.items()}


def group_mean_cams(ckpt: Checkpoint, read: Callable[[list[str]], dict[str, Image.Image]], table: pd.DataFrame,
                    by: str, per_group: int) -> dict[str, tuple[int, np.ndarray, dict[str, np.ndarray]]]:
    """Per value of column ``by`` of a prepared predictions table (agegender.fairness.groups.prepare): how
    many faces ``read`` gave of an evenly spaced ``per_group`` of its rows (faces found), their mean face
    and mean maps (mean_cams). Groups none of whose faces could be read are left out. ``read`` is
    a Source's faces' chips (agegender.evaluation.sources)."""
    out = {}
    found = table[table["found"].astype(bool)] if "found" in table else table
    for value, g in found.groupby(by, observed=True):
        chips = list(read(list(evenly_spaced(g, per_group)["file"])).values())
        if chips:
            out[str(value)] = (len(chips), *mean_cams(ckpt, chips))
    return out


def suspected(audit: pd.DataFrame, df: pd.DataFrame, n: int = 24) -> pd.DataFrame:
    """The suspected label errors (agegender.review.audit.suspects) among the rows of ``df`` (a group, or all), most
    suspect first, with their verdicts when the audit carries them."""
    inside = label_keys(audit).isin(set(label_keys(df))).to_numpy()
    return audit[suspects(audit) & inside].head(n)


def suspect_caption(r: pd.Series, i: int) -> str:
    """A suspect's thumbnail caption: kind and score, label against prediction, and the verdict if any."""
    label = f"{r['age']:.0f}" if r["age"] == r["age"] else str(r["age_bin"])
    verdict = f" · {r['verdict']}" if r.get("verdict") else ""
    return (f"#{i + 1} {r['suspect']} {r['score']:.3f}: label {label} {r['gender']} · pred {r['pred_age']:.0f} "
            f"P(f)={r['p_female']:.2f}{verdict}")
