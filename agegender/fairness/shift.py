"""Why a model scores worse on another set than on its own data: the set's accuracy recomputed as if its faces
had the training data's mix, one factor at a time (direct standardisation).

    python -m agegender.shift --checkpoint DIR --predictions SET.csv [--json OUT.json] [--n-boot 1000]

SET.csv is an evaluation set's predictions (python -m agegender.evaluate --data ... --out SET.csv); the reference
is the checkpoint's own held-out UTKFace predictions (predictions-val.csv and -test.csv), cut to the age bins the
set labels. Two factors are standardised, each a question a reviewer asks of a drop:

- age x gender: FairFace-sample holds as many women of 60 as of 25; UTKFace's adults are mostly under 40, and
  older women are the faces the model misgenders most. Each (gender, age bin) cell of the set is weighted by its
  share of the reference.
- pose: photos show turned heads that chips rarely do. Each pose group (agegender.faces.quality.pose_group) is weighted
  by its share of UTKFace's chips (quality.UTKFACE_POSE_MIX, measured with MTCNN on every chip: the checkpoint's
  predictions of chips carry no pose).

Both at once weights each (pose, gender, age bin) cell by the product of the two shares: pose independent of age
and gender in the reference, which the chips' measurement cannot check. A cell the set lacks is left out and the
others reweighted; ``coverage`` is the share of the reference weight the set's cells hold. Intervals: the set's
faces resampled (bootstrap percentiles); the reference's own figures carry Wilson intervals.

What is left after both is neither age mix nor pose: image quality, the photos' framing, the labels (FairFace's
are annotators' guesses from the photo) and faces the model has simply not learnt.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from ..faces import quality
from ..labels import bin_label, called_female, nearest_bin
from ..predictions import FEMALE, OWN_SPLITS, bin_scale, found_rows, load_predictions, pred_bins
from . import stats
from .groups import wilson

N_BOOT, SEED = 1000, 0
AGE_GENDER, POSE, BOTH = "age x gender", "pose", "age x gender and pose"
METRICS = {"gender_accuracy": "gender accuracy", "age_bin_accuracy": "age-bin accuracy"}
REFERENCE_SPLITS = OWN_SPLITS  # the checkpoint's own held-out predictions are the reference

ERR_NO_FACES = "the set's predictions have no face found with a label: nothing to measure"
ERR_NO_OVERLAP = "the reference has no face in the age bins the set labels ({bins}): nothing to standardise to"
NOTE_NO_POSE = ("the set's predictions carry no yaw (chips, or written before pose was measured): pose is not "
                "standardised")


def _scored(df: pd.DataFrame) -> pd.DataFrame:
    """Found faces with a gender label and an age bin."""
    d = found_rows(df)
    ok = d["gender"].astype(str).str.len().gt(0) & d["age_bin"].astype(str).str.len().gt(0)
    return d[ok & np.isfinite(d["p_female"].to_numpy(np.float64))]


def _correct(d: pd.DataFrame) -> dict[str, np.ndarray]:
    female = d["gender"].astype(str).eq(FEMALE).to_numpy()
    return {"gender_accuracy": called_female(d["p_female"].to_numpy(np.float64)) == female,
            "age_bin_accuracy": d["pred_age_bin"].astype(str).to_numpy() == d["age_bin"].astype(str).to_numpy()}


def rebin(reference: pd.DataFrame, labels: pd.Series) -> pd.DataFrame:
    """The reference's faces with exact ages, binned on the set's scale (agegender.predictions.bin_scale) and
    kept only in the bins the set labels, so both count age-bin hits the same way."""
    scale = bin_scale(labels)
    r = reference[np.isfinite(reference["age"].to_numpy(np.float64))].copy()
    r["age_bin"] = [bin_label(scale[nearest_bin(a, scale)]) for a in r["age"].to_numpy(np.float64)]
    r["pred_age_bin"] = pred_bins(r["pred_age"], scale)
    return r[r["age_bin"].isin(set(labels.astype(str)))]


def _cells(d: pd.DataFrame, pose: bool, age_gender: bool) -> pd.Series:
    parts = []
    if age_gender:
        parts.append(d["gender"].astype(str) + " / " + d["age_bin"].astype(str))
    if pose:
        parts.append(pd.Series(quality.pose_group(d["yaw"]), index=d.index))
    out = parts[0]
    for p in parts[1:]:
        out = out + " / " + p
    return out


def _mix(reference: pd.DataFrame, pose_mix: dict[str, float], pose: bool, age_gender: bool) -> pd.Series:
    """Each cell's share of the reference (age x gender from its faces, pose from pose_mix, products for both)."""
    ag = (reference["gender"].astype(str) + " / " + reference["age_bin"].astype(str)).value_counts(normalize=True)
    pm = pd.Series(pose_mix, dtype=np.float64)
    pm = pm / pm.sum()
    if age_gender and pose:
        return pd.Series({f"{a} / {p}": wa * wp for a, wa in ag.items() for p, wp in pm.items()})
    return ag if age_gender else pm


def standardised(correct: np.ndarray, cells: np.ndarray, mix: pd.Series, n_boot: int = N_BOOT,
                 seed: int = SEED) -> dict[str, float]:
    """The accuracy of ``correct`` with each cell weighted by its share in ``mix`` (cells the faces lack, or that
    ``mix`` lacks, left out and the rest reweighted), its bootstrap 95% interval over the faces, and the share of
    ``mix`` the faces' cells cover."""
    names = list(mix.index)
    code = pd.Index(names).get_indexer(np.asarray(cells))  # -1: a cell the mix lacks
    keep = code >= 0
    c, code = np.asarray(correct, np.float64)[keep], code[keep]
    w = mix.to_numpy(np.float64)
    k = len(names)

    def value(idx: np.ndarray) -> np.ndarray:  # idx: B x n rows of the faces -> B standardised accuracies
        flat = (np.arange(len(idx))[:, None] * k + code[idx]).ravel()
        n = np.bincount(flat, minlength=len(idx) * k).reshape(len(idx), k)
        hit = np.bincount(flat, weights=c[idx].ravel(), minlength=len(idx) * k).reshape(len(idx), k)
        ww = np.where(n > 0, w, 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            return (ww * np.where(n > 0, hit / np.maximum(n, 1), 0.0)).sum(1) / ww.sum(1)

    if len(c) == 0:
        return {"value": np.nan, "lo": np.nan, "hi": np.nan, "coverage": 0.0, "n": 0}
    point = float(value(np.arange(len(c))[None])[0])
    lo, hi = stats.interval(value(stats.draws(len(c), n_boot, np.random.default_rng(seed))))
    present = np.bincount(code, minlength=k) > 0
    return {"value": point, "lo": float(lo), "hi": float(hi), "coverage": float(w[present].sum() / w.sum()),
            "n": int(len(c))}


def explain(found_set: pd.DataFrame, reference: pd.DataFrame, pose_mix: dict[str, float] | None = None,
            n_boot: int = N_BOOT, seed: int = SEED) -> tuple[pd.DataFrame, list[str]]:
    """One row per figure (the reference's, the set as measured, the set standardised to each factor and to
    both) with each metric's value and interval, the faces counted and the reference share covered; and
    notes. ``found_set`` and ``reference`` are predictions tables (agegender.predictions.complete)."""
    pose_mix = quality.UTKFACE_POSE_MIX if pose_mix is None else pose_mix
    s = _scored(found_set)
    if s.empty:
        raise ValueError(ERR_NO_FACES)
    ref = rebin(_scored(reference), s["age_bin"])
    if ref.empty:
        raise ValueError(ERR_NO_OVERLAP.format(bins=", ".join(sorted(set(s["age_bin"].astype(str))))))
    has_pose = "yaw" in s and np.isfinite(s["yaw"].to_numpy(np.float64)).any()
    notes = [] if has_pose else [NOTE_NO_POSE]
    rows = []
    ref_correct = _correct(ref)
    row = {"figure": "reference", "n": len(ref), "coverage": 1.0}
    for m, hit in ref_correct.items():
        lo, hi = wilson(int(hit.sum()), len(hit))
        row.update({m: float(hit.mean()), f"{m}_lo": lo, f"{m}_hi": hi})
    rows.append(row)
    correct = _correct(s)
    plans = [("as measured", False, False), (AGE_GENDER, False, True)]
    if has_pose:
        plans += [(POSE, True, False), (BOTH, True, True)]
    for name, pose, age_gender in plans:
        row = {"figure": name}
        if not (pose or age_gender):
            cells, mix = np.zeros(len(s), dtype=object), pd.Series({0: 1.0})
        else:
            cells, mix = _cells(s, pose, age_gender).to_numpy(), _mix(ref, pose_mix, pose, age_gender)
        for m, hit in correct.items():
            r = standardised(hit, cells, mix, n_boot, seed)
            row.update({m: r["value"], f"{m}_lo": r["lo"], f"{m}_hi": r["hi"], "n": r["n"],
                        "coverage": r["coverage"]})
        rows.append(row)
    return pd.DataFrame(rows), notes


def closed(table: pd.DataFrame, metric: str = "gender_accuracy") -> pd.Series:
    """Per figure, the share of the drop (reference - as measured) that standardising closes."""
    t = table.set_index("figure")[metric]
    drop = t["reference"] - t["as measured"]
    return (t - t["as measured"]) / drop if drop else t * np.nan


EXPLAINED = ("The set's accuracy recomputed as if its faces had the mix of the checkpoint's own held-out UTKFace "
             "faces in the same age bins (age x gender) and of UTKFace's chips (pose), one factor at a time and "
             "both. What standardising closes is explained by the mix; what is left is quality, framing, labels "
             "or faces the model has not learnt. 95% intervals.")
FIGURE_LABELS = {"reference": "UTKFace held out, same age bins", "as measured": "this set, as measured"}


def display(table: pd.DataFrame) -> pd.DataFrame:
    """The table as a page shows it: one row per figure, each metric as "83.5% [80.4, 86.5]", the share of
    the gender drop each standardisation closes, and the faces counted."""
    share = closed(table)
    rows = []
    for _, r in table.iterrows():
        row = {"figure": FIGURE_LABELS.get(r["figure"], f"this set at UTKFace's {r['figure']} mix")}
        for m, label in METRICS.items():
            row[label] = f"{r[m]:.1%} [{r[f'{m}_lo']:.1%}, {r[f'{m}_hi']:.1%}]"
        fixed = r["figure"] in FIGURE_LABELS
        row["closes of the gender drop"] = "" if fixed or not np.isfinite(share[r["figure"]]) else \
            f"{share[r['figure']]:.0%}"
        row["faces"] = int(r["n"])
        rows.append(row)
    return pd.DataFrame(rows)


def reference_predictions(checkpoint: str | Path, splits=REFERENCE_SPLITS) -> pd.DataFrame:
    """The checkpoint's held-out predictions of the splits it has written (at least one)."""
    tables, errors = [], []
    for split in splits:
        try:
            tables.append(load_predictions(checkpoint, split))
        except ValueError as e:
            errors.append(str(e))
    if not tables:
        raise ValueError(errors[0])
    return pd.concat(tables, ignore_index=True)


def main(argv: list[str] | None = None) -> int:
    from ..meta import CheckpointError

    p = argparse.ArgumentParser(prog="python -m agegender.shift", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="checkpoint folder: its predictions-val/-test.csv are the "
                                                       "reference")
    p.add_argument("--predictions", required=True, help="the set's predictions CSV (evaluation.evaluate --out)")
    p.add_argument("--json", help="write the table here as JSON")
    p.add_argument("--n-boot", type=int, default=N_BOOT)
    args = p.parse_args(argv)
    try:
        table, notes = explain(load_predictions(path=args.predictions), reference_predictions(args.checkpoint),
                               n_boot=args.n_boot)
    except (OSError, ValueError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    share = closed(table)
    print(f"{Path(args.predictions).name} against {Path(args.checkpoint).name}'s UTKFace val/test in the same age "
          f"bins; the set standardised to the reference's mix (95% intervals)")
    for _, r in table.iterrows():
        what = {"reference": "reference (UTKFace held out)", "as measured": "set, as measured"}.get(
            r["figure"], f"set at the reference's {r['figure']} mix")
        figs = "   ".join(f"{METRICS[m]} {r[m]:.1%} [{r[f'{m}_lo']:.1%}, {r[f'{m}_hi']:.1%}]" for m in METRICS)
        extra = "" if r["figure"] in ("reference", "as measured") else \
            f"   closes {share[r['figure']]:.0%} of the gender drop; cells cover {r['coverage']:.0%}"
        print(f"  {what:50} n={int(r['n']):5}   {figs}{extra}")
    for n in notes:
        print(f"note: {n}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": table.to_dict("records"), "notes": notes}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
