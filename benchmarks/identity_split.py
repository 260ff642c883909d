"""How optimistic the file split's held-out figures are (issue 33 item 4): the same recipe trained on the file
split and on the identity split (train.py --split identity), both scored on the identity split's test faces.

    python -m benchmarks.identity_split --file RUN_A --identity RUN_B [--leakage LEAKAGE.json] [--n-boot 2000]

Each run folder holds its manifest.csv (each image's split) and predictions-all.csv (python -m agegender.evaluate
--checkpoint RUN --data UTKFACE --split all --out RUN/predictions-all.csv). Two sets of faces are compared:

- the identity split's test faces: the identity run has seen neither them nor anyone they resemble (by the
  leakage rule); the file run trained on some of them (the issue's comparison, as asked);
- those of them the file run did not train on either (its own val or test): neither run saw the faces
  themselves. Most are faces with no look-alike anywhere (they keep their file split), the same for both runs;
- with --leakage (python -m agegender.leakage's file for the file split, e.g. a file-split checkpoint's
  leakage.json), those of them that have a look-alike or a copy in the file run's training faces: only the file
  run saw someone like them. This is the fair measure of what look-alikes in training add.

Prints b - a (identity minus file) with paired 95% intervals (agegender.fairness.compare), overall and per race.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from agegender.fairness.compare import pair, paired_deltas
from agegender.fairness.measures import METRICS
from agegender.labels import image_key
from agegender.lookalikes import flagged, read_leakage
from agegender.predictions import load_predictions

from .common import parser

PREDICTIONS = "predictions-all.csv"


def splits(run: Path) -> pd.Series:
    m = pd.read_csv(run / "manifest.csv", dtype=str, keep_default_na=False)
    return m.set_index("file")["split"]


def compare(file_run: Path, identity_run: Path, n_boot: int,
            leakage: Path | None = None) -> list[tuple[str, pd.DataFrame, pd.DataFrame]]:
    """(name, overall, per race) for each set of faces compared; a is the file run, b the identity run."""
    m = pair(load_predictions(path=file_run / PREDICTIONS), load_predictions(path=identity_run / PREDICTIONS))
    file_split, identity_split = splits(file_run), splits(identity_run)
    test = m["file"].map(identity_split).eq("test").to_numpy()
    unseen = test & m["file"].map(file_split).isin(["val", "test"]).to_numpy()
    sets = [("identity test", test), ("identity test, not trained on by either", unseen)]
    if leakage is not None:
        alike = set(flagged(read_leakage(leakage)))
        sets.append(("of those, with a look-alike in the file run's training faces",
                     unseen & m["file"].map(image_key).isin(alike).to_numpy()))
    out = []
    for name, rows in sets:
        sub = m[rows].reset_index(drop=True)
        out.append((name, paired_deltas(sub, n_boot=n_boot), paired_deltas(sub, "race", n_boot=n_boot)))
    return out


def main(argv: list[str] | None = None) -> int:
    p = parser("identity_split", __doc__, checkpoint=False, threads=False)
    p.add_argument("--file", required=True, type=Path, help="the run trained on the file split")
    p.add_argument("--identity", required=True, type=Path, help="the run trained on the identity split")
    p.add_argument("--leakage", type=Path, help="the leakage check of the file split (a file-split checkpoint's "
                                                 "leakage.json)")
    p.add_argument("--n-boot", type=int, default=2000)
    args = p.parse_args(argv)
    for run in (args.file, args.identity):
        if not (run / PREDICTIONS).is_file() or not (run / "manifest.csv").is_file():
            print(f"{run} lacks {PREDICTIONS} or manifest.csv: see this script's docstring", file=sys.stderr)
            return 2
    print("a: file split, b: identity split; b - a with paired 95% intervals")
    for name, overall, races in compare(args.file, args.identity, args.n_boot, args.leakage):
        print(f"\n{name}: {int(overall['n'].iloc[0]):,} faces")
        for table, label in ((overall, "all"), *((races[races["race"] == r], r) for r in races["race"])):
            r = table.iloc[0]
            cells = [f"{METRICS[k].label} {r[f'{k}_a']:.4f} -> {r[f'{k}_b']:.4f} ({r[f'{k}_delta']:+.4f} "
                     f"[{r[f'{k}_delta_lo']:+.4f}, {r[f'{k}_delta_hi']:+.4f}])" for k in ("age_mae", "gender_accuracy")]
            print(f"  {label:>8} n={int(r['n']):>5}: " + "; ".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
