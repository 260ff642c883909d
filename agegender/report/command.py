"""Bias report: per-group metrics with intervals and disparities, as JSON and a self-contained HTML.

    python -m agegender.report (--checkpoint DIR [--split val|test] | --predictions CSV)
        [--by age_bucket,race,race:gender] [--json FILE] [--html FILE] [--slices-order 3] [--min-slice 30]
        [--[no-]label-audit] [--review FILE] [--leave-out suspects|confirmed]
        [--age-thresholds 13,16,18,21,25] [--age-buffer 0]

Any predictions table: UTKFace's, FairFace's (ages as bins, seven ethnicity groups), or a user's
with its own group columns. Without --by, the table's own default groupings (fairness.groupings_for).
Besides the groupings asked for, the worst slices found by search (agegender.fairness.slices), and where the table has
exact ages and calibrated age intervals, their coverage overall and per group (fairness.coverage): intervals
honest for one group and not for another are a bias too. At each age threshold (--age-thresholds), the share of
true minors called adults and of true adults called minors per group (fairness.thresholds), the call made at the
threshold plus --age-buffer years. And the label audit (agegender.review.audit, from the table
alone): the suspected label errors per group, and each grouping's gaps recomputed without them: by default a
what-if that leaves out every suspect not confirmed, unreviewed ones too (does the gap survive cleaning?), with
--leave-out confirmed only the labels reviewed "label wrong". The report's own figures keep every face.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pandas as pd

from .. import lookalikes
from ..fairness import embedslices, faithful, slices
from ..fairness import shift as dataset_shift
from ..fairness import thresholds as age_thresholds
from ..fairness.groups import MIN_COUNT, N_BOOT, SEED, headline_age_metric, prepare
from ..fairness.measures import METRICS
from ..fairness.slices import MAX_ORDER, MIN_SLICE, find_slices
from ..labels import AGE_BUCKET_EDGES, printable
from ..meta import ERR_OUTPUT, CheckpointError, atomic_write_text, output_problem, write_failure
from ..predictions import REQUIRED, load_predictions
from ..review import audit as label_audit_
from .bias import (
    audit_for,
    build,
    gender_threshold,
    interval_coverage,
    label_audit,
    label_audit_text,
    noise_text,
    shift_section,
    to_html,
    to_json,
)

ERR_REFERENCE = ("--reference goes with --predictions (an evaluation set's table): a checkpoint's own splits "
                 "are the reference")
ERR_LOOK_ALIKES_FILE = "--exclude-look-alikes with --predictions needs the leakage file: --exclude-look-alikes FILE"
LEAVE_OUT_FLAGS = (label_audit_.ALL_SUSPECTS, label_audit_.CONFIRMED_ERRORS)  # the audit section's gaps


def _headline(source: str, o: dict, age: str) -> str:
    """The first line the command prints: n, the age metric the table has, gender accuracy, misses."""
    def v(name: str, spec: str) -> str:
        return f"{o[name]:{spec}} [{o[name + '_lo']:{spec}}, {o[name + '_hi']:{spec}}]"

    missed = f"  no face found {o['n_missed']}/{o['n_images']}" if o["n_missed"] else ""
    return (f"{source}: n={o['n']}  {METRICS[age].label} {v(age, '.2f' if METRICS[age].unit else '.3f')}  "
            f"gender acc {v('gender_accuracy', '.3f')}{missed}")


def _thresholds_text(section: dict) -> str:
    """The whole table's false adults and false minors at each age threshold, a line each."""
    def share(r: dict, name: str, n: str) -> str:
        if r[name] is None:
            return f"no {n[2:]}"
        return f"{r[name]:.1%} [{r[name + '_lo']:.1%}, {r[name + '_hi']:.1%}] of {r[n]} {n[2:]}"

    lines = [f"  {r['threshold']} (called at {r['decision']}): false adult {share(r, 'false_adult_rate', 'n_minors')}"
             f", false minor {share(r, 'false_minor_rate', 'n_adults')}"
             for r in section["rows"] if r["grouping"] == age_thresholds.OVERALL]
    return f"age thresholds, buffer {section['buffer']} years (per group: --json, --html):\n" + "\n".join(lines)


def _faithfulness(args) -> dict | None:
    """The faithfulness section: --faithfulness's report, else the checkpoint's for the split, else None."""
    path = args.faithfulness or (faithful.report_path(args.checkpoint, args.split) if args.checkpoint else None)
    if path is None or (not args.faithfulness and not Path(path).is_file()):
        return None
    return faithful.report_section(faithful.read_file(path))


def _without_look_alikes(df: pd.DataFrame, args) -> tuple[pd.DataFrame, dict]:
    """The table without the faces the leakage file flags, and what left (LeakageError, a ValueError, when the
    file is missing or not one)."""
    if args.exclude_look_alikes:
        path = Path(args.exclude_look_alikes)
    elif args.checkpoint:
        path = lookalikes.leakage_path(args.checkpoint)
    else:
        raise lookalikes.LeakageError(ERR_LOOK_ALIKES_FILE)
    if not path.exists():
        raise lookalikes.LeakageError(lookalikes.ERR_NONE.format(what="these faces", path=path,
                                                                 checkpoint=args.checkpoint or "DIR"))
    leak = lookalikes.read_leakage(path)
    kept = lookalikes.without(df, leak)
    return kept, {"file": str(path), "n_before": len(df), "n_excluded": len(df) - len(kept),
                  "text": lookalikes.without_text(len(df), len(kept), leak)}


def _signed(v: float | None) -> str:
    return "n/a" if v is None else f"{v:+.3f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m agegender.report", description=__doc__.split("\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint")
    src.add_argument("--predictions", help=f"a predictions CSV with columns {', '.join(REQUIRED)} and age or age_bin")
    p.add_argument("--split", default="val", choices=["val", "test"])
    p.add_argument("--by", help="comma-separated groupings, each a column of the table (age_bucket, gender, age_bin "
                                "or one of its group columns such as race); a:b is the intersection (default: "
                                "age_bucket, gender, each group column alone and by gender, age_bucket by the first)")
    p.add_argument("--json", help="write the report as JSON")
    p.add_argument("--html", help="write a self-contained HTML report")
    p.add_argument("--n-boot", type=int, default=N_BOOT)
    p.add_argument("--min-count", type=int, default=MIN_COUNT, help="smaller groups are flagged too small to judge")
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--age-buckets", default=",".join(map(str, AGE_BUCKET_EDGES)), help="lower edges")
    p.add_argument("--slices-order", type=int, default=MAX_ORDER,
                   help="slices intersect up to this many group columns (worst-slice search)")
    p.add_argument("--min-slice", type=int, default=MIN_SLICE, help="faces a slice needs, in it and outside it")
    p.add_argument("--label-audit", action=argparse.BooleanOptionalAction, default=None,
                   help="suspected label errors per group and the gaps without them (default: on when the table "
                        "has what the audit needs: age_label_tail, or a regression checkpoint)")
    p.add_argument("--review", help="the label review file whose verdicts count (default: the checkpoint's)")
    p.add_argument("--leave-out", choices=LEAVE_OUT_FLAGS, default=label_audit_.ALL_SUSPECTS,
                   help="what the label audit's gaps leave out: suspects (default), a what-if without every suspect "
                        "not confirmed, unreviewed ones too; confirmed, only the labels reviewed 'label wrong'")
    p.add_argument("--age-thresholds", default=",".join(map(str, age_thresholds.DEFAULT_THRESHOLDS)),
                   help="ages (whole years) at which false adults and false minors are counted per group")
    p.add_argument("--age-buffer", type=int, default=age_thresholds.DEFAULT_BUFFER,
                   help="years over each age threshold a prediction must reach to be called adult (7: predict "
                        "25+ to pass 18)")
    p.add_argument("--embeddings", help="an embeddings file of python -m agegender.embed for the same faces: its "
                                        "clusters tested as slices (embedding_slices in the JSON)")
    p.add_argument("--faithfulness", help="a report of python -m agegender.faithfulness: whether each Grad-CAM method "
                                          "beats a random map, per head and group (default: the checkpoint's "
                                          "faithfulness-SPLIT.json, when there is one)")
    p.add_argument("--exclude-look-alikes", nargs="?", const="", default=None, metavar="LEAKAGE_JSON",
                   help="every figure without the faces whose look-alike or copy is in the training data, as "
                        "python -m agegender.leakage flagged them (default file: the checkpoint's leakage.json)")
    p.add_argument("--reference", help="with --predictions: the checkpoint whose own UTKFace val/test predictions "
                                       "the set is standardised to (age x gender and pose mix, fairness.shift)")
    args = p.parse_args(argv)
    if args.reference and not args.predictions:
        p.error(ERR_REFERENCE)
    for path in (args.json, args.html):  # said before the bootstrap runs
        problem = path and output_problem(path)
        if problem:
            print(f"error: {ERR_OUTPUT.format(path=printable(path), detail=problem)}", file=sys.stderr)
            return 2
    try:
        groupings = [g.strip() for g in (args.by or "").split(",") if g.strip()] or None
        edges = tuple(int(v) for v in args.age_buckets.split(","))
        ages_at = age_thresholds.parse_thresholds(args.age_thresholds)
        age_thresholds.check(ages_at, args.age_buffer)  # refused before any bootstrap runs
        df = prepare(load_predictions(args.checkpoint, args.split, args.predictions), edges)  # once, for every part
        source = args.predictions or f"{args.checkpoint} ({args.split})"
        look = None
        if args.exclude_look_alikes is not None:
            df, look = _without_look_alikes(df, args)
            source += f", {look['text']}"
        t = time.perf_counter()
        reports = build(df, groupings, args.n_boot, args.seed, args.min_count, edges)
        secs = time.perf_counter() - t
        searched = find_slices(df, max_order=args.slices_order, min_count=args.min_slice)
        embedded = embedslices.embedding_slices_for_report(df, args.embeddings) if args.embeddings else None
        faith = _faithfulness(args)
        coverage = interval_coverage(df, [g for g in reports if ":" not in g])
        ages = age_thresholds.section(df, ages_at, args.age_buffer, [g for g in reports if ":" not in g])
        audit, note = audit_for(df, args.checkpoint, args.split, args.review, args.label_audit)
        section = None if audit is None else label_audit(df, audit, list(reports), args.n_boot, args.seed,
                                                         args.min_count, edges, reports, args.leave_out)
    except (ValueError, CheckpointError, label_audit_.AuditError, faithful.FaithfulnessError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(_headline(source, next(iter(reports.values())).overall, headline_age_metric(df)))
    for g, r in reports.items():
        d = r.disparity()
        print(f"\nby {g}: {len(r.by_group)} groups, {int(r.by_group['too_small'].sum())} too small to judge")
        if not d.empty:
            print(d[["label", "worst_group", "worst", "best_group", "best", "gap", "gap_lo", "gap_hi", "q_value"]]
                  .to_string(index=False, float_format=lambda v: f"{v:.3f}"))
            print(noise_text(d))
    print(f"\n{args.n_boot} bootstrap resamples, {len(reports)} grouping(s): {secs:.2f} s; gap intervals hold every "
          f"group at once, q: the test that all groups are equal, corrected for each grouping's metrics")
    worst = slices.shown(searched, top=3)
    print(f"\nworst slices, q < {searched.alpha:g} ({sum(searched.tried.values())} tried, {searched.seconds:.2f} s)"
          + (":\n" + slices.display(worst).to_string(index=False) if len(worst) else ": none"))
    if faith:
        print("\nGrad-CAM against a random map (ROAD): " + "; ".join(
            f"{head} {m} {'beats random' if r['beats_random'] else 'not shown better'}"
            + (f" (not for {len(r['fails_for'])} group(s))" if r["fails_for"] else "")
            for head, methods in faith["heads"].items() for m, r in methods.items()))
    if embedded is not None:
        print(f"\nembedding clusters flagged, q < 0.05: {len(embedded)}" + "".join(
            f"\n  {r['label']} {r['gap']:+.3f} [{r['gap_lo']:+.3f}, {r['gap_hi']:+.3f}] n={r['size']} q={r['q']:.3g}, "
            f"beyond its labelled groups {_signed(r['beyond'])}: {r['description']}" for r in embedded[:5]))
    for g, cov in coverage.items():
        print(f"\nage interval coverage, {g}:\n" + cov.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print("\n" + _thresholds_text(ages))
    if note:
        print(f"\nnote: {note}", file=sys.stderr)
    if section:
        print("\n" + label_audit_text(section))
        for g, rows in section["disparity"].items():
            moved = [r for r in rows if r["gap_clean"] is not None]
            print(f"  by {g}: " + "; ".join(f"{r['label']} gap {r['gap']:.3f} -> {r['gap_clean']:.3f}" for r in moved))
    mix = None
    if args.reference:
        try:
            mix = shift_section(df, args.reference, args.n_boot, args.seed)
        except (ValueError, CheckpointError) as e:  # the rest of the report stands without it
            print(f"\nnote: no comparison with the training mix: {e}", file=sys.stderr)
    if mix:
        print(f"\nthe set at {Path(args.reference).name}'s training mix:\n"
              + dataset_shift.display(pd.DataFrame(mix["rows"])).to_string(index=False))
        for n in mix["notes"]:
            print(f"note: {n}")
    texts = {}
    if args.json:
        threshold = gender_threshold(df, list(reports))
        out = to_json(reports, source, searched, coverage, threshold, section, mix, ages)
        if look:
            out["look_alikes"] = look
        if embedded is not None:
            out["embedding_slices"] = embedded
        if faith:
            out["faithfulness"] = faith
        texts[args.json] = json.dumps(out, indent=1) + "\n"
    if args.html:
        texts[args.html] = to_html(reports, df, source, searched, section, mix, ages)
    for path, text in texts.items():
        try:
            atomic_write_text(path, text)
        except OSError as e:  # a full disk, no permission: one line
            print(f"error: {write_failure(path, e)}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
