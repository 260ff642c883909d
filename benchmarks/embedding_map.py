"""The Embedding map page's costs on 21,000 faces (generated: a UTKFace-like predictions table and random features
of the checkpoint's width), after the features were computed once:

- the map's table from the disk cache: the features cache read back (evaluation.embed's .npy and index), the
  frame built and prepared, as the page's first visit after a restart does;
- the map drawn: the colour column, the figure (review.mapview.figure) and its JSON, as st.plotly_chart
  serialises it (plotly.tools.return_figure_from_figure_or_data, then plotly.io.to_json without validation),
  coloured by a continuous value and by a group; target 5 s;
- a selection reaching the table: a lasso event's points (customdata) to rows, the kept selection, the selected
  faces' table with 200 thumbnails encoded, and their figures against the rest (bootstrap and slice test); target
  1 s.

Reading the selected faces' chips from the dataset is left out (it depends on the disk and the dataset's format).

    python -m benchmarks.embedding_map [--faces 21000] [--selected 2000] [--runs 5]
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from .common import checkpoint_path, median_s, parser

DRAW_TARGET_S, SELECT_TARGET_S = 5.0, 1.0


def predictions(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    age = rng.integers(1, 90, n).astype(float)
    return pd.DataFrame({
        "file": [f"{int(a)}_{i % 2}_{i % 5}_2017010915{i:07d}.jpg.chip.jpg" for i, a in enumerate(age)],
        "split": "test", "age": age, "gender": np.where(np.arange(n) % 2, "female", "male"),
        "race": rng.choice(["White", "Black", "Asian", "Indian", "Others"], n), "found": True,
        "pred_age": np.round(age + rng.normal(0, 6, n), 2), "p_female": np.round(rng.uniform(0, 1, n), 4)})


def main(argv: list[str] | None = None) -> int:
    from plotly.io import to_json
    from plotly.tools import return_figure_from_figure_or_data

    from agegender.evaluation import embed
    from agegender.fairness.groups import prepare
    from agegender.models.checkpoint import load_checkpoint
    from agegender.review import mapview

    p = parser("embedding_map", __doc__, threads=False)
    p.add_argument("--faces", type=int, default=21_000)
    p.add_argument("--selected", type=int, default=2_000, help="faces in the lasso selection")
    p.add_argument("--width", type=int, default=0, help="features per face (default: the checkpoint's)")
    p.add_argument("--runs", type=int, default=5)
    args = p.parse_args(argv)
    width = args.width or load_checkpoint(checkpoint_path(args.checkpoint)).model.gender_head.in_features
    table_in = predictions(args.faces)
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(args.faces, width)).astype(np.float32)
    measures = {"brightness": rng.uniform(0, 255, args.faces), "grayscale": rng.random(args.faces) < 0.05,
                "sharpness": rng.uniform(1, 200, args.faces)}
    with tempfile.TemporaryDirectory() as tmp:
        stem = embed.cache_stem(Path(tmp), "0" * 64, "bench", True, width)
        embed._write_cache(stem, embed.Features(list(table_in["file"]), vectors, measures))

        def load():
            f = embed._read_cache(stem, list(table_in["file"]), width)
            frame = embed.embedding_frame(table_in, f)
            return prepare(frame.drop(columns=embed.FEATURES))

        load_s = median_s(load, args.runs, warmup=1)
        table = load()

    def draw(colour: str):
        values, continuous = mapview.colour_values(table, colour)
        fig = return_figure_from_figure_or_data(mapview.figure(table, values, continuous, colour), True)
        return to_json(fig, validate=False)

    draws = {c: median_s(lambda c=c: draw(c), args.runs, warmup=1) for c in (mapview.ABS_AGE_ERROR, "race")}
    size_mb = len(draw("race")) / 2**20
    # a lasso around a blob: the points as the browser reports them, in trace order
    picked = np.sort(rng.choice(args.faces, args.selected, replace=False))
    points = [{"curve_number": 0, "point_index": int(i), "x": 0.0, "y": 0.0, "customdata": int(r)}
              for i, r in enumerate(picked)]
    chips = [Image.fromarray(rng.integers(0, 256, (144, 144, 3), dtype=np.uint8)) for _ in range(mapview.SHOWN_ROWS)]
    values, _ = mapview.colour_values(table, mapview.ABS_AGE_ERROR)

    def select():
        rows = mapview.selected_rows(points, len(table))
        kept, _ = mapview.update_selection((), (), tuple(table["file"].iloc[rows]))
        shown = mapview.selected_table(table, kept, values, mapview.ABS_AGE_ERROR)
        urls = [mapview.thumbnail_url(c) for c in chips[:len(shown)]]
        return shown, urls, mapview.selection_figures(table, kept)

    select_s = median_s(select, args.runs, warmup=1)
    print(f"{args.faces:,} faces, {width} features each; medians of {args.runs} runs")
    print(f"  map table from the disk cache:           {load_s:6.2f} s")
    for colour, s in draws.items():
        print(f"  map drawn, coloured by {colour:<18} {s:6.2f} s  (target {DRAW_TARGET_S:g} s; figure JSON "
              f"{size_mb:.1f} MB)")
    print(f"  first draw after a restart (both above): {load_s + max(draws.values()):6.2f} s  (target "
          f"{DRAW_TARGET_S:g} s)")
    print(f"  {args.selected:,}-face selection to table + figures: {select_s:6.2f} s  (target {SELECT_TARGET_S:g} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
