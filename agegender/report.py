"""Bias report: per-group metrics with intervals and disparities, as JSON and a self-contained HTML.

    python -m agegender.report (--checkpoint DIR [--split val|test] | --predictions CSV)
        [--by age_bucket,race,race:gender] [--json FILE] [--html FILE]
"""

from __future__ import annotations

import argparse
import html
import json
import sys
import time
from pathlib import Path

import pandas as pd

from . import charts
from .fairness import DEFAULT_GROUPINGS, METRICS, MIN_COUNT, N_BOOT, SEED, GroupReport, parse_grouping, prepare
from .labels import AGE_BUCKET_EDGES
from .meta import CheckpointError
from .predictions import REQUIRED, load_predictions


def build(df: pd.DataFrame, groupings: list[str], n_boot: int = N_BOOT, seed: int = SEED, min_count: int = MIN_COUNT,
          edges: tuple[int, ...] = AGE_BUCKET_EDGES) -> dict[str, GroupReport]:
    df = prepare(df, edges)
    reports, overall = {}, None
    for g in groupings:
        reports[g] = GroupReport(df, g, n_boot=n_boot, seed=seed, min_count=min_count, overall=overall)
        overall = reports[g].overall
    return reports


def to_json(reports: dict[str, GroupReport], source: str) -> dict:
    first = next(iter(reports.values()))
    return {"source": source, "overall": first.to_json()["overall"],
            "groupings": {g: {k: v for k, v in r.to_json().items() if k != "overall"} for g, r in reports.items()}}


def _table_html(df: pd.DataFrame) -> str:
    return df.to_html(index=False, float_format=lambda v: f"{v:.3f}", na_rep="–", border=0, classes="t")


def to_html(reports: dict[str, GroupReport], df: pd.DataFrame, source: str) -> str:
    """One self-contained file: plotly.js is inlined once, no network needed to open it."""
    first = next(iter(reports.values()))
    parts, js = [], "inline"

    def fig(f) -> str:
        nonlocal js
        out = f.to_html(full_html=False, include_plotlyjs=js)
        js = False
        return out

    o = first.overall
    overall = pd.DataFrame([{"metric": m.label, "value": o[m.name],
                             "95% interval": f"[{o[m.name + '_lo']:.3f}, {o[m.name + '_hi']:.3f}]"}
                            for m in METRICS.values()])
    parts.append(f"<h2>Overall (n = {first.overall['n']})</h2>" + _table_html(overall))
    pdf = prepare(df)
    parts.append(fig(charts.predicted_vs_true(pdf)) + fig(charts.residual_by_age(pdf)))
    for g, r in reports.items():
        parts.append(f"<h2>By {html.escape(g.replace(':', ' × '))}</h2>")
        parts.append(f"<h3>Disparity (groups with n ≥ {r.min_count})</h3>" + _table_html(r.disparity()))
        if len(r.columns) == 2:
            parts.append(fig(charts.intersection_heatmap(r, "age_mae")))
            parts.append(fig(charts.intersection_heatmap(r, "gender_accuracy")))
        else:
            parts.append(fig(charts.group_bars(r, "age_mae")) + fig(charts.group_bars(r, "gender_accuracy")))
            parts.append(fig(charts.composition_vs_error(r, "age_mae")))
        cols = [*r.columns, "n", "too_small"] + [c for m in METRICS for c in (m, f"{m}_lo", f"{m}_hi")]
        parts.append("<details><summary>All groups</summary>" + _table_html(r.by_group[cols]) + "</details>")
    style = ("body{font-family:sans-serif;margin:2em;max-width:1200px} table.t{border-collapse:collapse;"
             "font-size:13px} .t td,.t th{padding:3px 8px;border-bottom:1px solid #ddd;text-align:right}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>agegender bias report</title>"
            f"<style>{style}</style></head><body><h1>Bias report</h1><p>{html.escape(source)} · "
            f"{time.strftime('%Y-%m-%d %H:%M')} · bootstrap 95% intervals</p>{''.join(parts)}</body></html>")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m agegender.report", description=__doc__.split("\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint")
    src.add_argument("--predictions", help=f"a predictions CSV with columns {', '.join(REQUIRED)}")
    p.add_argument("--split", default="val", choices=["val", "test"])
    p.add_argument("--by", default=",".join(DEFAULT_GROUPINGS),
                   help="comma-separated groupings; a:b is the intersection (default: %(default)s)")
    p.add_argument("--json", help="write the report as JSON")
    p.add_argument("--html", help="write a self-contained HTML report")
    p.add_argument("--n-boot", type=int, default=N_BOOT)
    p.add_argument("--min-count", type=int, default=MIN_COUNT, help="smaller groups are flagged too small to judge")
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--age-buckets", default=",".join(map(str, AGE_BUCKET_EDGES)), help="lower edges")
    args = p.parse_args(argv)
    try:
        groupings = [g.strip() for g in args.by.split(",") if g.strip()]
        for g in groupings:
            parse_grouping(g)
        edges = tuple(int(v) for v in args.age_buckets.split(","))
        df = load_predictions(args.checkpoint, args.split, args.predictions)
        source = args.predictions or f"{args.checkpoint} ({args.split})"
        t = time.perf_counter()
        reports = build(df, groupings, args.n_boot, args.seed, args.min_count, edges)
        secs = time.perf_counter() - t
    except (ValueError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    first = next(iter(reports.values()))
    o = first.overall
    print(f"{source}: n={o['n']}  age MAE {o['age_mae']:.2f} [{o['age_mae_lo']:.2f}, {o['age_mae_hi']:.2f}]  "
          f"gender acc {o['gender_accuracy']:.3f} [{o['gender_accuracy_lo']:.3f}, {o['gender_accuracy_hi']:.3f}]")
    for g, r in reports.items():
        d = r.disparity()
        print(f"\nby {g}: {len(r.by_group)} groups, {int(r.by_group['too_small'].sum())} too small to judge")
        if not d.empty:
            print(d[["label", "worst_group", "worst", "best_group", "best", "gap"]]
                  .to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"\n{args.n_boot} bootstrap resamples, {len(groupings)} grouping(s): {secs:.2f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(to_json(reports, source), indent=1) + "\n")
    if args.html:
        Path(args.html).write_text(to_html(reports, df, source))
    return 0


if __name__ == "__main__":
    sys.exit(main())
