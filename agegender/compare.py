"""Compare checkpoints on the images both scored: overall and per-group deltas with paired
bootstrap intervals, and where their predictions disagree."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .fairness import METRICS, MIN_COUNT, N_BOOT, SEED, parse_grouping, prepare
from .labels import AGE_BUCKET_EDGES, called_female
from .predictions import IMAGE_KEYS, PREDICTED, metric_columns, validate

ERR_NOTHING_SHARED = "the two checkpoints share no scored image: compare predictions of the same split and data"
STANDARDISE = "age_bucket"  # gaps are also given with each group at the overall mix of this: age drives error most


def pair(a: pd.DataFrame, b: pd.DataFrame, edges: tuple[int, ...] = AGE_BUCKET_EDGES) -> pd.DataFrame:
    """Rows scored by both, with pred_age_a/_b and p_female_a/_b; raises when they share none."""
    cols, keys = [*IMAGE_KEYS, *PREDICTED], list(IMAGE_KEYS)
    m = validate(a, cols)[cols].merge(validate(b, cols)[cols], on=keys, suffixes=("_a", "_b"))
    if m.empty:
        raise ValueError(ERR_NOTHING_SHARED)
    return prepare(m.assign(pred_age=m["pred_age_a"], p_female=m["p_female_a"]), edges)


def _side(m: pd.DataFrame, s: str) -> dict[str, np.ndarray]:
    return metric_columns(m, f"_{s}")


def paired_deltas(m: pd.DataFrame, grouping: str | None = None,
                  metrics: tuple[str, ...] = ("age_mae", "gender_accuracy"),
                  n_boot: int = N_BOOT, seed: int = SEED, min_count: int = MIN_COUNT) -> pd.DataFrame:
    """Per group (or overall): each metric for a and b, b - a, and its paired 95% interval
    (both resampled with the same indices, so the shared difficulty of the images cancels)."""
    rng = np.random.default_rng(seed)
    cols = parse_grouping(grouping) if grouping else []
    parts = m.groupby(cols, observed=True) if cols else [((), m)]
    rows = []
    for key, g in parts:
        key = key if isinstance(key, tuple) else (key,)
        ca, cb = _side(g, "a"), _side(g, "b")
        idx = rng.integers(0, len(g), size=(n_boot, len(g)))
        row = {**dict(zip(cols, map(str, key), strict=True)), "n": len(g), "too_small": len(g) < min_count}
        for name in metrics:
            fn = METRICS[name].fn
            va, vb = float(fn(ca)), float(fn(cb))
            boots = fn({k: v[idx] for k, v in cb.items()}) - fn({k: v[idx] for k, v in ca.items()})
            boots = boots[np.isfinite(boots)]
            lo, hi = np.percentile(boots, [2.5, 97.5]) if len(boots) else (np.nan, np.nan)
            row.update({f"{name}_a": va, f"{name}_b": vb, f"{name}_delta": vb - va,
                        f"{name}_delta_lo": float(lo), f"{name}_delta_hi": float(hi)})
        rows.append(row)
    return pd.DataFrame(rows)


def agreement(m: pd.DataFrame, grouping: str | None = "race") -> dict:
    """How often the gender labels disagree (overall and per group) and how far apart the ages are."""
    fa, fb = called_female(m["p_female_a"]), called_female(m["p_female_b"])
    diff = (m["pred_age_b"] - m["pred_age_a"]).to_numpy()
    out = {"n": len(m), "gender_disagreement": float((fa != fb).mean()), "age_diff": diff,
           "age_diff_mean_abs": float(np.abs(diff).mean()), "age_diff_median": float(np.median(diff))}
    if grouping:
        cols = parse_grouping(grouping)
        out["by_group"] = (m.assign(disagree=(fa != fb)).groupby(cols, observed=True)["disagree"]
                           .agg(["size", "mean"]).rename(columns={"size": "n", "mean": "gender_disagreement"})
                           .reset_index())
    return out


def gap_change(m: pd.DataFrame, grouping: str = "race", metrics: tuple[str, ...] = ("age_mae", "gender_accuracy"),
               n_boot: int = N_BOOT, seed: int = SEED, min_count: int = MIN_COUNT,
               standardise: str | None = None) -> pd.DataFrame:
    """Per metric: the gap between the best and the worst group for a and for b, and the relative
    change of the gap with a paired bootstrap 95% interval (images resampled within each group, the
    same draws for both). Groups under ``min_count`` are left out, as in the disparity table.

    ``standardise`` (a column such as ``age_bucket``) compares groups as if each had the overall mix
    of that column: a group's figure is the mean of its per-stratum figures weighted by the strata's
    share of all images (direct standardisation). Without it, a group that holds more of the hard
    strata (older faces, for age) looks worse for that reason alone. Strata a group lacks are left
    out of its mean and the other weights rescaled. Resampling is then within group x stratum."""
    rng = np.random.default_rng(seed)
    cols = parse_grouping(grouping)
    if standardise and standardise in cols:
        raise ValueError(f"cannot standardise {grouping} groups over {standardise}, which they already split")
    groups = [g for _, g in m.groupby(cols, observed=True) if len(g) >= min_count]
    if len(groups) < 2:
        raise ValueError(f"fewer than two groups of {grouping} with at least {min_count} images")
    if standardise:
        mix = m[standardise].value_counts(normalize=True)
        strata = [[(mix[k], c) for k, c in g.groupby(standardise, observed=True)] for g in groups]
    else:
        strata = [[(1.0, g)] for g in groups]
    draws = [[rng.integers(0, len(c), size=(n_boot, len(c))) for _, c in parts] for parts in strata]
    rows = []
    for name in metrics:
        fn = METRICS[name].fn
        point, boot = {}, {}
        for s in ("a", "b"):
            v, bv = [], []
            for parts, idx in zip(strata, draws, strict=True):
                w = np.array([share for share, _ in parts]) / sum(share for share, _ in parts)
                sides = [_side(c, s) for _, c in parts]
                v.append(sum(wi * float(fn(c)) for wi, c in zip(w, sides, strict=True)))
                bv.append(sum(wi * fn({k: x[i] for k, x in c.items()}) for wi, c, i in zip(w, sides, idx, strict=True)))
            v, bv = np.array(v), np.stack(bv)
            point[s], boot[s] = v.max() - v.min(), np.nanmax(bv, 0) - np.nanmin(bv, 0)
        with np.errstate(divide="ignore", invalid="ignore"):  # a gap of zero has no relative change
            rel = boot["b"] / boot["a"] - 1
            change = point["b"] / point["a"] - 1 if point["a"] > 0 else np.nan
        rel = rel[np.isfinite(rel)]
        lo, hi = np.percentile(rel, [2.5, 97.5]) if len(rel) else (np.nan, np.nan)
        rows.append({"metric": name, "label": METRICS[name].label, "groups": len(groups),
                     "gap_a": point["a"], "gap_b": point["b"], "change": change,
                     "change_lo": float(lo), "change_hi": float(hi)})
    return pd.DataFrame(rows)


def gaps(m: pd.DataFrame, grouping: str, metrics: tuple[str, ...] = ("age_mae", "gender_accuracy"),
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

    from .meta import CheckpointError
    from .predictions import load_predictions

    p = argparse.ArgumentParser(prog="python -m agegender.compare",
                                description="Compare checkpoint B with A on the images both scored.")
    p.add_argument("a", help="checkpoint folder A (the reference)")
    p.add_argument("b", help="checkpoint folder B")
    p.add_argument("--split", default="test", choices=["val", "test"])
    p.add_argument("--by", default="race", help="grouping for the gaps and per-group deltas (e.g. race, race:gender)")
    p.add_argument("--n-boot", type=int, default=N_BOOT)
    p.add_argument("--min-count", type=int, default=MIN_COUNT, help="smaller groups are not judged for the gap")
    p.add_argument("--standardise", default=STANDARDISE,
                   help="also give the gap with every group given the overall mix of this column ('' for none)")
    args = p.parse_args(argv)
    try:
        m = pair(load_predictions(args.a, args.split), load_predictions(args.b, args.split))
        overall = paired_deltas(m, n_boot=args.n_boot).iloc[0]
        groups = paired_deltas(m, args.by, n_boot=args.n_boot, min_count=args.min_count)
    except (OSError, ValueError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        gaps = gap_change(m, args.by, n_boot=args.n_boot, min_count=args.min_count)
    except ValueError as e:
        gaps = pd.DataFrame()
        print(f"note: no gap to judge: {e}")
    print(f"{args.split} split, {len(m)} images scored by both; B - A with paired 95% intervals")
    for name in ("age_mae", "gender_accuracy"):
        r = overall
        print(f"  {METRICS[name].label}: A {r[f'{name}_a']:.4f}  B {r[f'{name}_b']:.4f}  delta "
              f"{r[f'{name}_delta']:+.4f} [{r[f'{name}_delta_lo']:+.4f}, {r[f'{name}_delta_hi']:+.4f}]")
    print(f"best-to-worst gap over {args.by}:")
    for _, r in gaps.iterrows():
        print(f"  {r['label']}: A {r['gap_a']:.4f}  B {r['gap_b']:.4f}  change {r['change']:+.1%} "
              f"[{r['change_lo']:+.1%}, {r['change_hi']:+.1%}]")
    if args.standardise:
        try:
            std = gap_change(m, args.by, n_boot=args.n_boot, min_count=args.min_count, standardise=args.standardise)
        except ValueError as e:
            std = pd.DataFrame()
            print(f"note: no standardised gap: {e}")
        if len(std):
            print(f"best-to-worst gap over {args.by}, each group given the overall {args.standardise} mix:")
        for _, r in std.iterrows():
            print(f"  {r['label']}: A {r['gap_a']:.4f}  B {r['gap_b']:.4f}  change {r['change']:+.1%} "
                  f"[{r['change_lo']:+.1%}, {r['change_hi']:+.1%}]")
    print(f"per group ({args.by}):")
    print(groups.drop(columns=[c for c in groups if c.endswith(("_lo", "_hi"))]).to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
