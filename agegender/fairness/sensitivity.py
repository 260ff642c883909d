"""How a group's predictions move when the same faces are perturbed: the figures of a counterfactual sweep
(agegender.evaluation.sweep runs the model; this module only counts), and the sweep file's reader.

For each perturbation, each face is predicted at strength 0 (as it is) and at a few strengths in (0, 1] (1 is
the strongest level the sweep applies). Per face, the change of predicted age and of P(female) at each
strength, and its sensitivity: the least-squares slope of that change through the origin (a face unchanged at
strength 0 by definition), i.e. the change per unit of strength, about the change at full strength. Per group:

- the mean change at each strength (the curves), and the share of gender calls that flip (labels.called_female
  on either side of the threshold) at each strength; ``flip_rate`` is the share at the strongest, with its
  Wilson interval;
- the sensitivity: the mean of the faces' slopes, with a bootstrap interval (stats.draws, stats.interval);
- whether it differs from the rest: the group's sensitivity minus the median of the other tested groups'
  (a median, so that one group that moves does not make every other group look different from a mean it
  dragged along; with two groups the other group itself), its standard error from the same resamples
  (each group resampled within itself), a two-sided z test. Groups under ``min_count`` faces are shown but
  neither tested nor part of another's reference.

The p-values of every test in one sweep (perturbations x groupings x groups x the two sensitivities) are
corrected together (Benjamini-Hochberg, fairness.slices.bh): a group with q below ALPHA is flagged. Imports no
torch: the report and the dashboard read sweep files through it.
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as sps

from ..labels import called_female
from ..predictions import OWN_SPLITS
from . import stats
from .groups import MIN_COUNT, N_BOOT, SEED, value_order, wilson
from .slices import ALPHA, bh

SWEEP_FILE = "sweep-{source}.json"  # beside the checkpoint: what the Robustness page reads
METRICS = ("age", "p_female")  # the two sensitivities tested; JSON keys sensitivity_<metric>, ...
METRIC_LABELS = {"age": "predicted age (years)", "p_female": "P(female)", "flip": "share of gender calls flipped"}
FORMAT = "agegender-sweep/1"

ERR_NO_SWEEP = "no sweep file at {path}: make it with {command}"
ERR_NOT_SWEEP = "{path} is not a sweep file of python -m agegender.sweep ({detail}): make it again"
ERR_SHAPES = "{what} has shape {got}; the sweep expects {want} (faces x strengths)"
ERR_STRENGTHS = "strengths must be above 0 and at most 1, mildest first (got {got})"


class SweepError(ValueError):
    """A sweep file that is missing or not one, or arrays that do not fit together."""


def sweep_path(checkpoint: str | os.PathLike, source: str) -> Path:
    """Where a checkpoint's sweep on a source (an own split, or a registered set's name) is kept."""
    return Path(checkpoint) / SWEEP_FILE.format(source=source)


def sweep_command(checkpoint: str | os.PathLike, source: str, data: str | os.PathLike, labels: str | None = None,
                  format: str | None = None) -> str:
    """The command that writes sweep_path(checkpoint, source): an own split's UTKFace chips at ``data``, or a
    registered set's images at ``data`` with its ``labels`` and ``format``."""
    args = ["python", "-m", "agegender.sweep", "--checkpoint", str(checkpoint), "--data", str(data)]
    if source in OWN_SPLITS:
        args += ["--split", source]
    else:
        args += [*(["--labels", str(labels)] if labels else []), *(["--format", format] if format else [])]
    return shlex.join([*args, "--json", str(sweep_path(checkpoint, source))])


def face_slopes(strengths: np.ndarray, change: np.ndarray) -> np.ndarray:
    """Per face (rows of ``change``, faces x strengths) the least-squares slope of its change through the origin."""
    s = np.asarray(strengths, np.float64)
    return np.asarray(change, np.float64) @ s / (s @ s)


def _check(strengths: np.ndarray, base: np.ndarray, moved: np.ndarray, what: str) -> None:
    if moved.shape != (len(base), len(strengths)):
        raise SweepError(ERR_SHAPES.format(what=what, got=moved.shape, want=(len(base), len(strengths))))


def _z_p(diff: float, se: float) -> float:
    """Two-sided p of a difference with a standard error; a difference without spread is certain (or nothing)."""
    if not np.isfinite(diff) or not np.isfinite(se):
        return np.nan
    if se <= 0:
        return 1.0 if abs(diff) <= 1e-12 else 0.0
    return float(2 * sps.norm.sf(abs(diff) / se))


def _sensitivities(slopes: np.ndarray, positions: list[np.ndarray], tested: np.ndarray,
                   idx: list[np.ndarray]) -> list[dict]:
    """Per group: the mean slope, its interval, and its difference from the other tested groups' median."""
    points = np.array([slopes[p].mean() for p in positions])
    boots = np.stack([slopes[p][i].mean(1) for p, i in zip(positions, idx, strict=True)])  # groups x n_boot
    out = []
    for g, point in enumerate(points):
        lo, hi = stats.interval(boots[g])
        row = {"": point, "_lo": lo, "_hi": hi, "_difference": np.nan, "_p": np.nan}
        others = np.flatnonzero(tested & (np.arange(len(points)) != g))
        if tested[g] and len(others):
            row["_difference"] = point - np.median(points[others])
            spread = boots[g] - np.median(boots[others], axis=0)
            row["_p"] = _z_p(row["_difference"], float(np.std(spread, ddof=1)))
        out.append(row)
    return out


def group_rows(table: pd.DataFrame, groupings: list[str], strengths, base_age, base_pf, age, p_female,
               min_count: int = MIN_COUNT, n_boot: int = N_BOOT, seed: int = SEED) -> list[dict]:
    """One perturbation's rows, one per group of each grouping (columns of ``table``, a row per face): its
    curves, sensitivities with intervals and tests (p; q comes from with_q over the whole sweep), flip rate.
    ``age``, ``p_female``: faces x strengths predictions; ``base_*`` the faces as they are."""
    s = np.asarray(strengths, np.float64)
    if not len(s) or (s <= 0).any() or (s > 1).any() or (np.diff(s) <= 0).any():
        raise SweepError(ERR_STRENGTHS.format(got=list(s)))
    base_age, base_pf = np.asarray(base_age, np.float64), np.asarray(base_pf, np.float64)
    age, p_female = np.asarray(age, np.float64), np.asarray(p_female, np.float64)
    _check(s, base_age, age, "age")
    _check(s, base_pf, p_female, "p_female")
    change = {"age": age - base_age[:, None], "p_female": p_female - base_pf[:, None]}
    slopes = {m: face_slopes(s, change[m]) for m in METRICS}
    flipped = called_female(p_female) != called_female(base_pf)[:, None]
    rng = np.random.default_rng(seed)
    rows = []
    for column in groupings:
        col = table[column].reset_index(drop=True)
        values = value_order(col)
        positions = [np.flatnonzero((col == v).to_numpy()) for v in values]
        tested = np.array([len(p) >= min_count for p in positions])
        idx = stats.stratified_draws([len(p) for p in positions], n_boot, rng)  # shared by both metrics
        sens = {m: _sensitivities(slopes[m], positions, tested, idx) for m in METRICS}
        for g, (value, pos) in enumerate(zip(values, positions, strict=True)):
            k = int(flipped[pos, -1].sum())
            lo, hi = wilson(k, len(pos))
            row = {"grouping": column, "group": str(value), "n": len(pos), "tested": bool(tested[g]),
                   "change_age": change["age"][pos].mean(0).tolist(),
                   "change_p_female": change["p_female"][pos].mean(0).tolist(),
                   "flip_rates": flipped[pos].mean(0).tolist(),
                   "flip_rate": k / len(pos), "flip_rate_lo": lo, "flip_rate_hi": hi}
            for m in METRICS:
                row.update({f"sensitivity_{m}{key}": v for key, v in sens[m][g].items()})
            rows.append(row)
    return rows


def with_q(perturbations: dict[str, dict], alpha: float = ALPHA) -> dict[str, dict]:
    """The sweep's perturbations with q-values (BH over every test of the sweep) and each row's ``flagged``:
    the metrics whose sensitivity differs from the other groups' at q < alpha. Changes the rows in place."""
    cells = [(row, m) for p in perturbations.values() for row in p["by_group"] for m in METRICS]
    p_values = np.array([row[f"sensitivity_{m}_p"] for row, m in cells], np.float64)
    tested = np.isfinite(p_values)
    q = np.full(len(cells), np.nan)
    if tested.any():
        q[tested] = bh(p_values[tested])
    for (row, m), qv in zip(cells, q, strict=True):
        row[f"sensitivity_{m}_q"] = float(qv)
    for p in perturbations.values():
        for row in p["by_group"]:
            row["flagged"] = [m for m in METRICS if row[f"sensitivity_{m}_q"] < alpha]
    return perturbations


TABLE_COLUMNS = ("group", "n", "tested", *(f"sensitivity_{m}{k}" for m in METRICS for k in ("", "_lo", "_hi", "_q")),
                 "flip_rate", "flip_rate_lo", "flip_rate_hi", "flagged")


def rows_table(perturbation: dict, grouping: str) -> pd.DataFrame:
    """A perturbation's rows of one grouping as a table (TABLE_COLUMNS; flagged as the metrics' names)."""
    rows = [{k: r[k] for k in TABLE_COLUMNS} for r in perturbation["by_group"] if r["grouping"] == grouping]
    table = pd.DataFrame(rows, columns=list(TABLE_COLUMNS))
    table["flagged"] = table["flagged"].map(", ".join)
    return table


def flagged(sweep: dict) -> pd.DataFrame:
    """Every flagged group of a sweep: perturbation, grouping, group, metric, sensitivity, its interval, the
    difference from the other groups and q; most certain first."""
    out = []
    for name, p in sweep["perturbations"].items():
        for row in p["by_group"]:
            for m in row.get("flagged", []):
                out.append({"perturbation": name, "grouping": row["grouping"], "group": row["group"],
                            "metric": m, "n": row["n"], "sensitivity": row[f"sensitivity_{m}"],
                            "sensitivity_lo": row[f"sensitivity_{m}_lo"], "sensitivity_hi": row[f"sensitivity_{m}_hi"],
                            "difference": row[f"sensitivity_{m}_difference"], "q": row[f"sensitivity_{m}_q"]})
    columns = ["perturbation", "grouping", "group", "metric", "n", "sensitivity", "sensitivity_lo",
               "sensitivity_hi", "difference", "q"]
    return pd.DataFrame(out, columns=columns).sort_values("q", kind="stable").reset_index(drop=True)


def curves(perturbation: dict, grouping: str, metric: str) -> pd.DataFrame:
    """Long table for a plot: per group of ``grouping``, the mean change of ``metric`` (age, p_female, or flip:
    the share flipped) at strength 0 (none) and at each strength, and whether the group is flagged (for flip:
    its P(female) sensitivity, which the calls follow)."""
    key = {"age": "change_age", "p_female": "change_p_female", "flip": "flip_rates"}[metric]
    s = [0.0, *perturbation["strengths"]]
    out = []
    for row in perturbation["by_group"]:
        if row["grouping"] != grouping:
            continue
        hit = ("p_female" if metric == "flip" else metric) in row.get("flagged", [])  # calls follow P(female)
        for strength, value in zip(s, [0.0, *row[key]], strict=True):
            out.append({"group": row["group"], "n": row["n"], "strength": strength, "change": value, "flagged": hit})
    return pd.DataFrame(out, columns=["group", "n", "strength", "change", "flagged"])


def _nan_to_none(x):
    if isinstance(x, float) and not np.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _nan_to_none(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_nan_to_none(v) for v in x]
    if isinstance(x, np.generic):
        return _nan_to_none(x.item())
    return x


def to_json(sweep: dict) -> str:
    """The sweep as JSON: NaN (a figure without one) as null, never the non-standard NaN token."""
    return json.dumps(_nan_to_none({"format": FORMAT, **sweep}), indent=1, allow_nan=False) + "\n"


def _none_to_nan(row: dict) -> dict:
    return {k: np.nan if v is None else v for k, v in row.items()}


def read_sweep(path: str | os.PathLike, command: str = "python -m agegender.sweep") -> dict:
    """A sweep file as written by to_json, its nulls back to NaN. SweepError (ERR_NO_SWEEP naming ``command``)
    where there is none, ERR_NOT_SWEEP where the file is not one."""
    path = Path(path)
    if not path.is_file():
        raise SweepError(ERR_NO_SWEEP.format(path=path, command=command))
    try:
        sweep = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SweepError(ERR_NOT_SWEEP.format(path=path, detail=type(e).__name__)) from None
    if not isinstance(sweep, dict) or sweep.get("format") != FORMAT or not isinstance(sweep.get("perturbations"), dict):
        raise SweepError(ERR_NOT_SWEEP.format(path=path, detail=f"no {FORMAT} perturbations"))
    for name, p in sweep["perturbations"].items():
        if not (isinstance(p, dict) and isinstance(p.get("strengths"), list) and isinstance(p.get("by_group"), list)):
            raise SweepError(ERR_NOT_SWEEP.format(path=path, detail=f"{name!r} lacks strengths or by_group"))
        p["by_group"] = [_none_to_nan(r) for r in p["by_group"]]
    return sweep
