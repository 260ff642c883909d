"""Label audit on planted errors: how many of them the audit puts in its top 5%, and how long it takes once the
predictions exist.

    python -m benchmarks.audit [--checkpoint DIR] [--data UTKFACE] [--runs 3] [--seed 0] [--share 0.03]

UTKFace's test split (agegender.data.utkface.split_of) is copied into a temporary folder, and errors are planted by
renaming files (the labels are in the names: age_gender_race_date.jpg.chip.jpg): the gender flipped on a
``--share`` of the adult faces (age >= 18), the age moved by 20 to 40 years (either way, within 1..100) on a
``--share`` of the others. A renamed file hashes to another split (the split rule hashes the whole name), so
the folder is evaluated with --split all and audited with --split all: the checkpoint's manifest, not the split
rule, says which images it trained on (none of these). Then: the share of flipped genders and of moved ages among the
audit's top 5% (targets 80% and 60%), the audit's time from the predictions (median of --runs, in this process,
and once as a fresh process), and the same on the checkpoint's own val split.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from agegender.data.utkface import scan
from agegender.evaluation import evaluate
from agegender.labels import parse_name
from agegender.review import audit_run as audit

from .common import checkpoint_path, median_s, parser

TOP = 0.05  # the share of the ranking a reviewer reads
TARGETS = {"gender": 0.80, "age": 0.60}


def plant(data: Path, out: Path, share: float, seed: int) -> dict[str, set[str]]:
    """Copy UTKFace's test split into ``out`` with planted errors; {"gender": names, "age": names} planted."""
    rng = np.random.default_rng(seed)
    test = [s for s in scan(data).samples if s.split == "test"]
    adults = [i for i, s in enumerate(test) if s.age >= 18]
    flip = set(rng.choice(adults, round(share * len(adults)), replace=False).tolist())
    rest = [i for i in range(len(test)) if i not in flip]
    move = set(rng.choice(rest, round(share * len(rest)), replace=False).tolist())
    out.mkdir(parents=True)
    planted: dict[str, set[str]] = {"gender": set(), "age": set()}
    for i, s in enumerate(test):
        lab = parse_name(s.name)
        age, gender = lab.age, lab.gender
        if i in flip:
            gender = 1 - gender
        elif i in move:
            shift = int(rng.integers(20, 41))
            ways = [a for a in (age - shift, age + shift) if 1 <= a <= 100]
            age = int(rng.choice(ways)) if ways else age
        name = "_".join([str(age), str(gender), str(lab.race), s.name.split("_", 3)[3]])
        if i in flip or (i in move and age != lab.age):
            planted["gender" if i in flip else "age"].add(name)
        src = data / s.member
        try:
            os.link(src, out / name)
        except OSError:
            shutil.copyfile(src, out / name)
    return planted


def recall_at_top(ranked: pd.DataFrame, planted: dict[str, set[str]]) -> dict[str, tuple[int, int]]:
    """Per kind: (planted files among the top TOP of the ranking, planted files)."""
    top = set(ranked["file"].head(math.ceil(TOP * len(ranked))).map(lambda f: f.rsplit("/", 1)[-1]))
    return {k: (len(v & top), len(v)) for k, v in planted.items()}


def timed_audit(argv: list[str], runs: int) -> float:
    return median_s(lambda: audit.main(argv), runs, warmup=0)


def fresh_process(argv: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "agegender.audit", *argv], check=True, capture_output=True)
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> int:
    p = parser("audit", __doc__)
    p.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "datasets" / "UTKFace"))
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--share", type=float, default=0.03, help="of the faces, planted per kind")
    p.add_argument("--keep", help="keep the planted folder, its predictions and the audit here (a new folder)")
    args = p.parse_args(argv)
    logging.getLogger("agegender").setLevel(logging.ERROR)
    ckpt = checkpoint_path(args.checkpoint)
    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(args.keep or scratch)
        folder = tmp / "UTKFace"
        planted = plant(Path(args.data), folder, args.share, args.seed)
        pred = tmp / "predictions.csv"
        t = time.perf_counter()
        evaluate.main(["--checkpoint", str(ckpt), "--data", str(folder), "--split", "all", "--out", str(pred),
                       "--cache-dir", str(tmp / "cache"), "--threads", str(args.threads)])
        evaluated = time.perf_counter() - t
        js, csv = tmp / "audit.json", tmp / "audit.csv"
        cmd = ["--checkpoint", str(ckpt), "--data", str(folder), "--split", "all", "--predictions", str(pred),
               "--json", str(js), "--csv", str(csv), "--top", "0"]
        planted_s = timed_audit(cmd, args.runs)
        planted_cold = fresh_process(cmd)
        report = json.loads(js.read_text())
        found = recall_at_top(pd.read_csv(csv), planted)
        own = ["--checkpoint", str(ckpt), "--data", str(args.data), "--split", "val", "--json", str(tmp / "val.json")]
        val_s = timed_audit(own, args.runs)
        val_cold = fresh_process(own)
        val = json.loads((tmp / "val.json").read_text())
    k = math.ceil(TOP * report["n"])
    print(f"{ckpt.name}: UTKFace test split, {report['n']} faces ({report['left_out_trained_on']} left out as trained "
          f"on), seed {args.seed}; planted {len(planted['gender'])} gender flips and {len(planted['age'])} moved ages")
    print(f"  evaluation of the folder (predictions with age_label_tail)   {evaluated:6.1f} s")
    for kind, (hit, n) in found.items():
        print(f"  {kind:6} errors in the top 5% ({k} faces): {hit}/{n} = {hit / n:.1%}   (target >= "
              f"{TARGETS[kind]:.0%})")
    print(f"  audit from the predictions, planted folder, median of {args.runs}   {planted_s:6.2f} s "
          f"(a fresh process: {planted_cold:.1f} s)   (goal <= 30)")
    print(f"  audit from the predictions, {val['n']} val faces, median of {args.runs}     {val_s:6.2f} s "
          f"(a fresh process: {val_cold:.1f} s; age from {val['age_source']})   (goal <= 30)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
