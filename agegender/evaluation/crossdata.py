"""The cross-dataset view: each checkpoint's figures on each source (its own val and test, then the registered
evaluation sets: agegender.evaluation.sources), with a bootstrap 95% interval each and the best-to-worst group
gaps with theirs, so the in-distribution figures sit beside the others. Never evaluates: a cell not evaluated yet
stays empty (agegender.evaluation.results evaluates and caches).

Imports no torch.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from ..fairness import stats
from ..fairness.groups import (
    METRICS,
    MIN_COUNT,
    N_BOOT,
    SEED,
    GroupReport,
    found_mask,
    grouping_columns,
    headline_age_metric,
    parse_grouping,
    prepare,
    take,
)
from ..fairness.tables import COUNT, PERCENT, format_value, interval_text, metric_text
from ..predictions import load_predictions, metric_columns
from .results import Result
from .sources import data_fingerprint, names, source

CROSS_DISPLAY = ("checkpoint", "set", "images", "faces found", "gender accuracy", "age MAE", "age bin accuracy",
                 "gender accuracy gap", "age gap", "note")
HEADLINE = ("gender_accuracy", "age_mae", "age_bin_accuracy")  # with a bootstrap interval each
GAP_METRICS = ("gender_accuracy", "age_mae", "age_bin_accuracy")  # best-to-worst group gap, with an interval
# per gap metric, cross_dataset's column suffix -> the disparity table's column (p, q: the test of "all equal")
GAP_FIGURES = {"gap": "gap", "gap_lo": "gap_lo", "gap_hi": "gap_hi", "gap_p": "p_value", "gap_q": "q_value"}
# cross_dataset's columns: figures with _lo / _hi (95% interval); per gap metric its gap, interval and groups
CROSS_COLUMNS = ("checkpoint", "checkpoint_path", "source", "set", "evaluated", "n", "n_found", "found_rate",
                 "age_metric", *(f"{m}{end}" for m in HEADLINE for end in ("", "_lo", "_hi")), "groups",
                 *(f"{m}_{part}" for m in GAP_METRICS for part in (*GAP_FIGURES, "best", "worst")), "note")
NOT_EVALUATED = "not evaluated yet"
NO_GROUPING = "no {grouping} column in this set"
FEW_GROUPS = "fewer than two {grouping} groups with {min_count} or more faces found"


HEADLINE_FIGURES = ("n", "n_found", "gender_accuracy", "age_mae", "age_bin_accuracy")


def headline_row(checkpoint_path: str | os.PathLike, res: Result | None) -> dict:
    """One checkpoint's headline figures on a set (empty, and marked not evaluated, without a result)."""
    m = res.metrics if res is not None else {}
    return {"checkpoint": Path(checkpoint_path).name, **{k: m.get(k) for k in HEADLINE_FIGURES},
            "evaluated": m.get("evaluated_at", NOT_EVALUATED)}



def _headline(cols: dict, hit: np.ndarray, rng: np.random.Generator, n_boot: int) -> dict:
    """The headline metrics over the faces found, with a bootstrap 95% interval (the same draws for each)."""
    out = {}
    c = take(cols, hit)
    sample = stats.resample(c, stats.draws(len(hit), n_boot, rng)) if len(hit) else None
    for name in HEADLINE:
        fn = METRICS[name].fn
        v = float(fn(c)) if len(hit) else np.nan
        lo, hi = stats.interval(fn(sample), min_finite=2) if sample is not None and np.isfinite(v) \
            else (np.nan, np.nan)
        out.update({name: v, f"{name}_lo": lo, f"{name}_hi": hi})
    return out


def _gaps(t: pd.DataFrame, headline: dict, grouping: str, n_boot: int, seed: int, min_count: int) -> dict:
    """Per GAP_METRICS: the bias report's disparity (GroupReport.disparity, groups with ``min_count`` faces
    found or more): the gap between the best and the worst group, its 95% interval (simultaneous over the
    groups, agegender.fairness.stats.gap), the test of "all groups equal" (p, and q over the gap metrics) and the
    two groups' names; with why there is none in ``note``."""
    out: dict = {"groups": 0, "note": ""}
    for name in GAP_METRICS:
        out.update({f"{name}_{part}": np.nan for part in GAP_FIGURES} | {f"{name}_best": "", f"{name}_worst": ""})
    try:
        parse_grouping(grouping, grouping_columns(t))
    except ValueError:
        return {**out, "note": NO_GROUPING.format(grouping=grouping)}
    rep = GroupReport(t, grouping, n_boot=n_boot, seed=seed, min_count=min_count, metrics=list(GAP_METRICS),
                      overall=headline)
    out["groups"] = int((rep.by_group["n"] >= min_count).sum()) if len(rep.by_group) else 0
    if out["groups"] < 2:
        return {**out, "note": FEW_GROUPS.format(grouping=grouping, min_count=min_count)}
    for r in rep.disparity().to_dict("records"):
        name = r["metric"]
        out.update({f"{name}_{part}": r[column] for part, column in GAP_FIGURES.items()}
                   | {f"{name}_best": r["best_group"], f"{name}_worst": r["worst_group"]})
    return out


def cell_figures(df: pd.DataFrame, grouping: str = "race", min_count: int = MIN_COUNT, n_boot: int = N_BOOT,
                 seed: int = SEED) -> dict:
    """One predictions table's row of the cross-dataset view: images, faces found, the headline metrics
    with a bootstrap 95% interval and the best-to-worst group gaps with theirs and the test of "all equal"."""
    t = prepare(df)
    found = found_mask(t)
    cols = metric_columns(t)
    rng = np.random.default_rng(seed)  # the headline's draws; the gaps draw from their own (GroupReport's)
    n, n_found = len(t), int(found.sum())
    headline = _headline(cols, np.flatnonzero(found), rng, n_boot)
    return {"n": n, "n_found": n_found, "found_rate": n_found / n if n else np.nan,
            "age_metric": headline_age_metric(t), **headline, **_gaps(t, headline, grouping, n_boot, seed, min_count)}


def cross_dataset(checkpoint_paths: list[str | os.PathLike], set_names: list[str] | None = None,
                  grouping: str = "race", tta: bool = True, min_count: int = MIN_COUNT, n_boot: int = N_BOOT,
                  seed: int = SEED) -> pd.DataFrame:
    """One row per (checkpoint, source) of ``set_names`` (default: sources.names(), the checkpoints' own val and
    test first): cell_figures of its predictions, or ``evaluated`` False with the figures missing where the
    checkpoint has not been evaluated on it (never computed here). Each set is read once, for its
    fingerprint; a set that can no longer be read gives its error in ``note``."""
    from ..data.utkface import DatasetError

    wanted = list(set_names) if set_names is not None else names()
    fingerprints: dict[str, str | Exception | None] = {}
    for s in wanted:
        try:
            fingerprints[s] = data_fingerprint(s)
        except DatasetError as e:
            fingerprints[s] = e
    rows = []
    for ckpt in map(Path, checkpoint_paths):
        for src in (source(ckpt, s, tta) for s in wanted):
            row = {"checkpoint": ckpt.name, "checkpoint_path": str(ckpt), "source": src.name, "set": src.label}
            fingerprint = fingerprints[src.name]
            if isinstance(fingerprint, Exception):
                rows.append({**row, "evaluated": False, "note": str(fingerprint)})
                continue
            path = src.predictions_path(fingerprint)
            if path is None:
                rows.append({**row, "evaluated": False, "note": NOT_EVALUATED})
                continue
            rows.append({**row, "evaluated": True,
                         **cell_figures(load_predictions(path=path), grouping, min_count, n_boot, seed)})
    out = pd.DataFrame(rows)
    return out.reindex(columns=CROSS_COLUMNS) if len(out) else pd.DataFrame(columns=CROSS_COLUMNS)


def _with_interval(r: dict, name: str) -> str:
    v = r.get(name)
    if v is None or not np.isfinite(v):
        return format_value(None)
    return f"{metric_text(name, v)} {interval_text(name, r[f'{name}_lo'], r[f'{name}_hi'])}"


def _gap_text(r: dict, name: str) -> str:
    gap = r.get(f"{name}_gap")
    if not isinstance(name, str) or gap is None or not np.isfinite(gap):
        return format_value(None)
    lo, hi = (metric_text(name, r[f"{name}_gap_{end}"], delta=True, signed=False) for end in ("lo", "hi"))
    q = r.get(f"{name}_gap_q")
    test = "" if q is None or not np.isfinite(q) else \
        f", q = {q:.2g}" + (" (within noise)" if q >= stats.ALPHA else "")
    return (f"{metric_text(name, gap, delta=True, signed=False)} [{lo}, {hi}]{test}: "
            f"worst {r[f'{name}_worst']}, best {r[f'{name}_best']}")


def cross_display(df: pd.DataFrame) -> pd.DataFrame:
    """cross_dataset's table as a reader sees it: rates as percentages and ages in years, each figure with
    its 95% interval, each gap with its interval, its q (the test of "all groups equal"; "within noise" when
    q >= 0.05) and its worst and best group; the age gap is on the set's headline age
    metric (MAE where it has exact ages, bin accuracy where it has bins only)."""
    rows = []
    for r in df.to_dict("records"):
        rows.append({
            "checkpoint": r["checkpoint"], "set": r["set"],
            "images": format_value(r["n"], COUNT), "faces found": format_value(r["found_rate"], PERCENT),
            "gender accuracy": _with_interval(r, "gender_accuracy"), "age MAE": _with_interval(r, "age_mae"),
            "age bin accuracy": _with_interval(r, "age_bin_accuracy"),
            "gender accuracy gap": _gap_text(r, "gender_accuracy"), "age gap": _gap_text(r, r["age_metric"]),
            "note": r["note"] if isinstance(r["note"], str) else "",
        })
    return pd.DataFrame(rows, columns=CROSS_DISPLAY)
