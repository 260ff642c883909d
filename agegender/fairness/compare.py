"""Compare checkpoints on the images both scored: overall and per-group deltas with paired
bootstrap intervals, and where their predictions disagree."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..labels import AGE_BUCKET_EDGES, called_female
from ..predictions import IMAGE_KEYS, LABELS, PREDICTED, complete, found_rows, group_columns, metric_columns, validate
from . import stats
from .groups import (
    LABEL_GROUPS,
    MIN_COUNT,
    N_BOOT,
    SEED,
    group_positions,
    grouping_columns,
    headline_age_metric,
    parse_grouping,
    prepare,
    take,
)
from .measures import METRICS

ERR_NOTHING_SHARED = "the two checkpoints share no scored image: compare predictions of the same split and data"
ERR_ALREADY_SPLIT = "cannot standardise {grouping} groups over {standardise}, which they already split"
ERR_FEW_GROUPS = "fewer than two groups of {grouping} with at least {min_count} images"
STANDARDISE = "age_bucket"  # gaps are also given with each group at the overall mix of this: age drives error most
SIDES = ("a", "b")
# The intervals resample images; they cannot show what retraining would change (docs/experiments.md, runs 19-28).
TRAINING_NOISE = ("The intervals resample images, not training runs: six runs of one recipe that differed only in "
                  "their seed spread over 1.6 points of FairFace-sample gender accuracy and 10 points of ethnicity "
                  "gap (checkpoints/README.md), so a difference inside that says little about two recipes.")
PAIR_NEEDED = ("file", "gender", "pred_age", "p_female")  # plus age or age_bin: what pairs and what is measured
# one side's predictions in a paired table: not groups, though the table's group_columns counts them
SIDE_COLUMNS = frozenset(f"{c}_{s}" for c in PREDICTED for s in SIDES)


# How a change reads, from its paired interval: coloured only when the interval leaves out 0 (BETTER, WORSE)
BETTER, WORSE, NOISE, NO_FIGURE = "better", "worse", "within noise", "no figure"


def verdict(delta: float, lo: float, hi: float, higher_is_better: bool | None, before: float = 0.0) -> str:
    """Whether a change ``delta`` (b - a) with paired 95% interval [lo, hi] is BETTER, WORSE or within NOISE
    for a metric whose direction is ``higher_is_better``; NO_FIGURE where any of the three is not finite.
    An interval that holds 0 is always NOISE. For a signed error (``higher_is_better`` None: nearer zero is
    better) ``before`` is a's figure, and the change is judged on every b the interval allows, before + [lo,
    hi]: BETTER when all are nearer zero than a, WORSE when all are farther, else NOISE (the error moved, but
    not clearly towards or away from zero)."""
    if not np.isfinite([delta, lo, hi, before]).all():
        return NO_FIGURE
    if lo <= 0 <= hi:
        return NOISE
    if higher_is_better is None:
        low, high, size = before + lo, before + hi, abs(before)
        if -size < low and high < size:  # {b : |b| < |a|} is one interval: both ends inside is all inside
            return BETTER
        return WORSE if low > size or high < -size else NOISE
    return BETTER if (lo > 0) == higher_is_better else WORSE


def pair(a: pd.DataFrame, b: pd.DataFrame, edges: tuple[int, ...] = AGE_BUCKET_EDGES) -> pd.DataFrame:
    """The images both scored and both found a face in, with pred_age_a/_b, pred_age_bin_a/_b and
    p_female_a/_b; raises when they share none. Images pair on the image keys both tables have (an old
    table has no age_bin of its own) and the group columns both have (a same-named file of another group
    is another image); a group column only one of them has is kept from that one."""
    keys = [k for k in IMAGE_KEYS if k in a and k in b]
    a, b = (complete(validate(t, PAIR_NEEDED)) for t in (a, b))
    shared = [c for c in group_columns(a) if c in set(group_columns(b))]
    only_b = [c for c in group_columns(b) if c not in shared]
    keys += shared
    left = found_rows(a)[[*LABELS, *group_columns(a), *PREDICTED]]
    right = found_rows(b)[[*keys, *only_b, *PREDICTED]]
    m = left.merge(right, on=keys, suffixes=tuple(f"_{s}" for s in SIDES))
    if m.empty:
        raise ValueError(ERR_NOTHING_SHARED)
    m = m.drop(columns=[f"found_{s}" for s in SIDES]).assign(
        found=True, pred_age=m["pred_age_a"], pred_age_bin=m["pred_age_bin_a"], p_female=m["p_female_a"])
    return prepare(m, edges)


def paired_columns(m: pd.DataFrame) -> list[str]:
    """The columns a paired table can be grouped by: its labels' and groups', not either side's predictions."""
    return [c for c in grouping_columns(m) if c not in SIDE_COLUMNS]


def default_metrics(m: pd.DataFrame) -> tuple[str, str]:
    """What a comparison measures unless told: the age metric the labels allow (MAE in years, or the bin
    accuracy where ages are bins) and gender accuracy."""
    return headline_age_metric(m), "gender_accuracy"


def default_grouping(m: pd.DataFrame) -> str:
    """What the command groups by unless told: the tables' first group column (UTKFace, FairFace: race)."""
    return next((c for c in paired_columns(m) if c not in LABEL_GROUPS), STANDARDISE)


def _side(m: pd.DataFrame, s: str) -> dict[str, np.ndarray]:
    return metric_columns(m, f"_{s}")


def _groups(m: pd.DataFrame, grouping: str | None) -> tuple[list[str], list[tuple[tuple, np.ndarray]]]:
    cols = parse_grouping(grouping, paired_columns(m)) if grouping else []
    return cols, group_positions(m, cols)


def paired_deltas(m: pd.DataFrame, grouping: str | None = None, metrics: tuple[str, ...] | None = None,
                  n_boot: int = N_BOOT, seed: int = SEED, min_count: int = MIN_COUNT) -> pd.DataFrame:
    """Per group (or overall): each metric (default: default_metrics) for a and b, b - a, and its paired
    95% interval (both resampled with the same indices, so the shared difficulty of the images cancels)."""
    rng = np.random.default_rng(seed)
    metrics = metrics or default_metrics(m)
    cols, groups = _groups(m, grouping)
    side = {s: _side(m, s) for s in SIDES}  # built once for the whole table, sliced per group (see take)
    rows = []
    for key, where in groups:
        ca, cb = take(side["a"], where), take(side["b"], where)
        idx = stats.draws(len(where), n_boot, rng)  # the same rows for a and b: paired
        sa, sb = stats.resample(ca, idx), stats.resample(cb, idx)
        row = {**dict(zip(cols, map(str, key), strict=True)), "n": len(where), "too_small": len(where) < min_count}
        for name in metrics:
            fn = METRICS[name].fn
            va, vb = float(fn(ca)), float(fn(cb))
            lo, hi = stats.interval(fn(sb) - fn(sa))
            row.update({f"{name}_a": va, f"{name}_b": vb, f"{name}_delta": vb - va,
                        f"{name}_delta_lo": lo, f"{name}_delta_hi": hi})
        rows.append(row)
    return pd.DataFrame(rows)


def agreement(m: pd.DataFrame, grouping: str | None = "race") -> dict:
    """How often the gender labels disagree (overall and per group) and how far apart the ages are."""
    fa, fb = called_female(m["p_female_a"]), called_female(m["p_female_b"])
    diff = (m["pred_age_b"] - m["pred_age_a"]).to_numpy()
    out = {"n": len(m), "gender_disagreement": float((fa != fb).mean()), "age_diff": diff,
           "age_diff_mean_abs": float(np.abs(diff).mean()), "age_diff_median": float(np.median(diff))}
    if grouping:
        cols = parse_grouping(grouping, paired_columns(m))
        out["by_group"] = (m.assign(disagree=(fa != fb)).groupby(cols, observed=True)["disagree"]
                           .agg(["size", "mean"]).rename(columns={"size": "n", "mean": "gender_disagreement"})
                           .reset_index())
    return out


def _strata(m: pd.DataFrame, groups: list[np.ndarray], standardise: str | None) -> list[list[tuple[float, np.ndarray]]]:
    """Per group, (weight, row positions) of each stratum: the group whole without standardising, else its
    part in each value of ``standardise`` weighted by that value's share of all images."""
    if not standardise:
        return [[(1.0, where)] for where in groups]
    mix = m[standardise].value_counts(normalize=True)
    return [[(mix[k[0]], where[sub]) for k, sub in group_positions(m.iloc[where], [standardise])] for where in groups]


def gap_change(m: pd.DataFrame, grouping: str = "race", metrics: tuple[str, ...] | None = None,
               n_boot: int = N_BOOT, seed: int = SEED, min_count: int = MIN_COUNT,
               standardise: str | None = None) -> pd.DataFrame:
    """Per metric (default: default_metrics): the gap between the best and the worst group for a and for
    b, and the relative change of the gap with a paired bootstrap 95% interval (images resampled within
    each group, the same draws for both). Groups under ``min_count`` are left out, as in the disparity table.

    ``standardise`` (a column such as ``age_bucket``) compares groups as if each had the overall mix
    of that column: a group's figure is the mean of its per-stratum figures weighted by the strata's
    share of all images (direct standardisation). Without it, a group that holds more of the hard
    strata (older faces, for age) looks worse for that reason alone. Strata a group lacks are left
    out of its mean and the other weights rescaled. Resampling is then within group x stratum."""
    rng = np.random.default_rng(seed)
    metrics = metrics or default_metrics(m)
    cols, positions = _groups(m, grouping)
    if standardise and standardise in cols:
        raise ValueError(ERR_ALREADY_SPLIT.format(grouping=grouping, standardise=standardise))
    groups = [where for _, where in positions if len(where) >= min_count]
    if len(groups) < 2:
        raise ValueError(ERR_FEW_GROUPS.format(grouping=grouping, min_count=min_count))
    strata = _strata(m, groups, standardise)
    draws = [stats.stratified_draws([len(c) for _, c in parts], n_boot, rng) for parts in strata]
    side = {s: _side(m, s) for s in SIDES}
    rows = []
    for name in metrics:
        point, boot, fit = {}, {}, {}
        for s in SIDES:
            v, bv = _group_figures(METRICS[name].fn, side[s], strata, draws)
            point[s], boot[s] = float(stats.spread(v)), stats.spread(bv)
            fit[s] = _gap_fit(METRICS[name], v, bv, side[s], groups, standardise)
        with np.errstate(divide="ignore", invalid="ignore"):  # a gap of zero has no relative change
            rel = boot["b"] / boot["a"] - 1
            change = point["b"] / point["a"] - 1 if point["a"] > 0 else np.nan
        lo, hi = stats.interval(rel)
        rows.append({"metric": name, "label": METRICS[name].label, "groups": len(groups),
                     "gap_a": point["a"], "gap_b": point["b"], "change": change, "change_lo": lo, "change_hi": hi,
                     **{f"{k}_{s}": fit[s][k] for s in SIDES for k in GAP_FIT}})
    out = pd.DataFrame(rows)
    for s in SIDES:  # q over the metrics of one side's gaps, as the bias report's disparity has it
        out[f"q_{s}"] = stats.bh(out[f"p_{s}"].to_numpy(np.float64)) if len(out) else []
    return out


GAP_FIT = ("gap_lo", "gap_hi", "p")  # per side: the gap's 95% interval and the test of "all groups equal"


def _group_figures(fn, cols: dict, strata: list, draws: list) -> tuple[np.ndarray, np.ndarray]:
    """Per group, its figure and its resampled figures (n_boot): the strata's weighted by their shares."""
    v, bv = [], []
    for parts, idx in zip(strata, draws, strict=True):
        w = np.array([share for share, _ in parts]) / sum(share for share, _ in parts)
        sides = [take(cols, c) for _, c in parts]
        v.append(sum(wi * float(fn(c)) for wi, c in zip(w, sides, strict=True)))
        bv.append(sum(wi * fn(stats.resample(c, i)) for wi, c, i in zip(w, sides, idx, strict=True)))
    return np.array(v), np.stack(bv)


def _gap_fit(metric, v: np.ndarray, bv: np.ndarray, cols: dict, groups: list, standardise: str | None) -> dict:
    """gap_lo, gap_hi (stats.gap over the groups' resampled figures) and p: chi-square for a share's plain
    gap, else Cochran's Q on the bootstrap standard errors (a standardised figure has no count to test)."""
    share = metric.among is not None
    fit = stats.gap(v, list(bv), metric.higher_is_better, bounds=(0.0, 1.0) if share else (-np.inf, np.inf))
    if share and not standardise:
        n = np.array([int(metric.among(take(cols, where)).sum()) for where in groups])
        p = stats.shares_p(np.round(v * n), n)
    else:
        p = stats.wald_p(v, np.array([np.nanstd(b, ddof=1) if np.isfinite(b).sum() > 1 else np.nan for b in bv]))
    return {"gap_lo": fit["gap_lo"], "gap_hi": fit["gap_hi"], "p": p}


def gaps(m: pd.DataFrame, grouping: str, metrics: tuple[str, ...] | None = None,
         standardise: tuple[str | None, ...] = (None, STANDARDISE), **kw) -> dict[str | None, pd.DataFrame | str]:
    """gap_change without and with each standardisation; where there is no gap to judge (fewer than
    two groups big enough, or groups that already split the standardising column), why not instead."""
    out: dict[str | None, pd.DataFrame | str] = {}
    for std in standardise:
        try:
            out[std] = gap_change(m, grouping, metrics, standardise=std, **kw)
        except ValueError as e:
            out[std] = str(e)
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys
    from pathlib import Path

    from ..meta import CheckpointError
    from ..predictions import load_predictions

    p = argparse.ArgumentParser(prog="python -m agegender.compare",
                                description="Compare checkpoint B with A on the images both scored.")
    p.add_argument("a", help="checkpoint folder A (the reference), or A's predictions CSV (an evaluation set's, "
                             "from python -m agegender.evaluate --labels ... --out)")
    p.add_argument("b", help="checkpoint folder B, or B's predictions CSV of the same images")
    p.add_argument("--split", default="test", choices=["val", "test"])
    p.add_argument("--by", help="grouping for the gaps and per-group deltas: a column of the tables (age_bucket, "
                                "gender, age_bin or a group column such as race) or two joined by ':' (default: "
                                "the first group column, else age_bucket)")
    p.add_argument("--n-boot", type=int, default=N_BOOT)
    p.add_argument("--min-count", type=int, default=MIN_COUNT, help="smaller groups are not judged for the gap")
    p.add_argument("--standardise", default=STANDARDISE,
                   help="also give the gap with every group given the overall mix of this column ('' for none)")
    args = p.parse_args(argv)
    try:
        def read(where: str):
            return load_predictions(path=where) if Path(where).is_file() else load_predictions(where, args.split)

        m = pair(read(args.a), read(args.b))
        by = args.by or default_grouping(m)
        overall = paired_deltas(m, n_boot=args.n_boot).iloc[0]
        groups = paired_deltas(m, by, n_boot=args.n_boot, min_count=args.min_count)
    except (OSError, ValueError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        gaps = gap_change(m, by, n_boot=args.n_boot, min_count=args.min_count)
    except ValueError as e:
        gaps = pd.DataFrame()
        print(f"note: no gap to judge: {e}")
    source = "predictions files" if Path(args.a).is_file() else f"{args.split} split"
    print(f"{source}, {len(m)} images scored by both; B - A with paired 95% intervals")
    for name in default_metrics(m):
        r = overall
        print(f"  {METRICS[name].label}: A {r[f'{name}_a']:.4f}  B {r[f'{name}_b']:.4f}  delta "
              f"{r[f'{name}_delta']:+.4f} [{r[f'{name}_delta_lo']:+.4f}, {r[f'{name}_delta_hi']:+.4f}]")
    print(f"best-to-worst gap over {by}:")
    for _, r in gaps.iterrows():
        print(f"  {r['label']}: A {r['gap_a']:.4f}  B {r['gap_b']:.4f}  change {r['change']:+.1%} "
              f"[{r['change_lo']:+.1%}, {r['change_hi']:+.1%}]")
    if args.standardise:
        try:
            std = gap_change(m, by, n_boot=args.n_boot, min_count=args.min_count, standardise=args.standardise)
        except ValueError as e:
            std = pd.DataFrame()
            print(f"note: no standardised gap: {e}")
        if len(std):
            print(f"best-to-worst gap over {by}, each group given the overall {args.standardise} mix:")
        for _, r in std.iterrows():
            print(f"  {r['label']}: A {r['gap_a']:.4f}  B {r['gap_b']:.4f}  change {r['change']:+.1%} "
                  f"[{r['change_lo']:+.1%}, {r['change_hi']:+.1%}]")
    print(f"per group ({by}):")
    print(groups.drop(columns=[c for c in groups if c.endswith(("_lo", "_hi"))]).to_string(index=False))
    print(f"note: {TRAINING_NOISE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
