"""Slices nobody labelled, on real chips (issue 34 item 2's target): UTKFace's held-out chips, about 150 of them
made dark and blurred, through the shipped checkpoint's evaluation, embeddings and the report's cluster test.
Prints where the cluster holding the planted chips ranks, how many of them it holds, and its description.

    python -m benchmarks.embedding_slices [--data ../shared/datasets/UTKFace] [--planted 150]

The held-out copy goes to a temporary folder under /tmp (never the repository) and is removed afterwards.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
from PIL import Image, ImageEnhance, ImageFilter

from agegender.data.utkface import evenly_spaced, scan

from .common import checkpoint_path, parser

DARKER = 0.2  # brightness factor of a planted chip (0.35 with blur 2.5 hurt neither head: MAE 4.59 vs 4.35)
BLUR = 5.0  # Gaussian radius in pixels, on a 200 px chip


def planted_copy(data: Path, out: Path, n: int, darker: float = DARKER, blur: float = BLUR) -> set[str]:
    """The file-split test chips of ``data`` copied to ``out``, ``n`` of them (evenly spread) dark and blurred."""
    held = [s for s in scan(data).samples if s.split == "test"]
    chosen = {s.member for s in evenly_spaced(held, n)}
    out.mkdir(parents=True)
    for s in held:
        im = Image.open(data / s.member).convert("RGB")
        if s.member in chosen:
            im = ImageEnhance.Brightness(im.filter(ImageFilter.GaussianBlur(blur))).enhance(darker)
        im.save(out / s.name, quality=95)
    return {Path(m).name for m in chosen}


def run(*args: str) -> None:
    subprocess.run([sys.executable, "-m", *args], check=True, stdout=subprocess.DEVNULL)


def main(argv: list[str] | None = None) -> int:
    p = parser("embedding_slices", __doc__, threads=False)
    p.add_argument("--data", default="../shared/datasets/UTKFace")
    p.add_argument("--planted", type=int, default=150)
    p.add_argument("--darker", type=float, default=DARKER, help="brightness factor of a planted chip")
    p.add_argument("--blur", type=float, default=BLUR, help="Gaussian blur radius, px of a 200 px chip")
    p.add_argument("--keep", help="a folder to keep the predictions, embeddings and report in")
    args = p.parse_args(argv)
    ckpt = checkpoint_path(args.checkpoint)
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        tmp = Path(tmp)
        planted = planted_copy(Path(args.data), tmp / "held", args.planted, args.darker, args.blur)
        t = time.perf_counter()
        preds, emb, report = tmp / "p.csv", tmp / "e.parquet", tmp / "r.json"
        run("agegender.evaluate", "--checkpoint", str(ckpt), "--data", str(tmp / "held"), "--split", "all",
            "--out", str(preds), "--cache-dir", str(tmp / "cache"))
        run("agegender.embed", "--checkpoint", str(ckpt), "--data", str(tmp / "held"), "--split", "all",
            "--predictions", str(preds), "--out", str(emb), "--cache-dir", str(tmp / "cache"))
        run("agegender.report", "--predictions", str(preds), "--embeddings", str(emb), "--json", str(report),
            "--no-label-audit")
        seconds = time.perf_counter() - t
        rows = json.loads(report.read_text())["embedding_slices"]
        table = pd.read_csv(preds)
        shutil.rmtree(tmp / "cache", ignore_errors=True)
        if args.keep:
            shutil.copytree(tmp, args.keep, ignore=shutil.ignore_patterns("held"), dirs_exist_ok=True)
    mine = table["file"].map(lambda f: Path(f).name).isin(planted)
    err = (table["pred_age"] - table["age"]).abs()
    wrong = (table["p_female"] >= 0.5) != (table["gender"] == "female")
    print(f"planted chips: age MAE {err[mine].mean():.2f} y against {err[~mine].mean():.2f}, gender error "
          f"{wrong[mine].mean():.1%} against {wrong[~mine].mean():.1%}")
    print(f"{len(planted)} planted (brightness x{args.darker}, blur {args.blur} px) among the held-out chips; "
          f"{len(rows)} cluster slice(s) flagged; evaluate + embed + report {seconds:.0f} s")
    for rank, r in enumerate(rows[:5], 1):
        mine = len(planted & {Path(f).name for f in r["files"]})
        print(f"  {rank}. {r['label']} gap {r['gap']:+.2f} [{r['gap_lo']:+.2f}, {r['gap_hi']:+.2f}] n={r['size']} "
              f"q={r['q']:.2g}: {mine} planted ({mine / max(r['size'], 1):.0%} of it): {r['description']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
