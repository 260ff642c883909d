"""Pictures and tables for results: boxes on photos, result rows, PNG and zip bytes."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont

OK_COLOUR, SKIPPED_COLOUR = (0, 200, 120), (230, 160, 0)


def draw_faces(photo: Image.Image, faces) -> Image.Image:
    """Numbered boxes with detection confidence; faces below the threshold in amber."""
    out = photo.copy()
    d = ImageDraw.Draw(out)
    width = max(2, round(min(photo.size) / 200))
    font = ImageFont.load_default(size=max(12, round(min(photo.size) / 25)))
    for i, f in enumerate(faces):
        colour = OK_COLOUR if f.predicted else SKIPPED_COLOUR
        d.rectangle(f.box, outline=colour, width=width)
        text = f"{i + 1}" + ("" if f.confidence is None else f" {f.confidence:.2f}")
        x, y = f.box[0], max(0, f.box[1] - font.size - 2 * width)
        tb = d.textbbox((x, y), text, font=font)
        d.rectangle(tb, fill=colour)
        d.text((x, y), text, fill=(0, 0, 0), font=font)
    return out


def results_frame(results: dict[str, list], band: tuple[float, float]) -> pd.DataFrame:
    """One row per image x face x checkpoint; ``results`` maps checkpoint name -> ImageResults. ``band`` is the
    request's Uncertain band: pass the one results_json gets, so the table, its CSV and the JSON agree."""
    rows = []
    for ckpt, image_results in results.items():
        for r in image_results:
            if r.error and not r.faces:
                rows.append({"image": r.image, "checkpoint": ckpt, "face": None, "error": r.error})
            for i, f in enumerate(r.faces):
                rows.append({
                    "image": r.image, "checkpoint": ckpt, "face": i + 1,
                    "box": [round(v, 1) for v in f.box],
                    "confidence": None if f.confidence is None else round(f.confidence, 4),
                    "predicted": f.predicted,
                    "age": None if f.age is None else round(f.age, 1),
                    "p_female": None if f.p_female is None else round(f.p_female, 4),
                    "label": f.gender_call(band),
                    "error": None,
                })
    return pd.DataFrame(rows)


def results_json(results: dict[str, list], band: tuple[float, float]) -> str:
    """The JSON download of ``results`` (checkpoint name -> ImageResults), labelled with the request's ``band``."""
    return json.dumps({k: [r.to_json(band) for r in v] for k, v in results.items()}, indent=2)


def png_bytes(image: np.ndarray | Image.Image) -> bytes:
    img = image if isinstance(image, Image.Image) else Image.fromarray(image)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def zip_bytes(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            z.writestr(name, data)
    return buf.getvalue()
