"""The bias report's sections, each built from a prepared predictions table and written as JSON and as one
self-contained HTML: groups with intervals and disparities (build), age interval coverage, the gender
threshold, the label audit's what-if (label_audit), the set at the training mix (shift_section), age-threshold errors
(fairness.thresholds). What each
part means, and the command that runs them all (python -m agegender.report): agegender.report.command."""

from __future__ import annotations

import html
import time

import numpy as np
import pandas as pd

from ..fairness import genderband, slices
from ..fairness import shift as dataset_shift
from ..fairness import thresholds as age_thresholds_
from ..fairness.coverage import coverage_by_group
from ..fairness.groups import (
    MIN_COUNT,
    N_BOOT,
    RATIO_NOTE,
    SEED,
    GroupReport,
    detectable_text,
    grouping_columns,
    groupings_for,
    headline_age_metric,
    parse_grouping,
    prepared,
)
from ..fairness.measures import METRICS, MISSED_RATE
from ..fairness.slices import SliceSearch, find_slices
from ..fairness.tables import MISSING
from ..labels import AGE_BUCKET_EDGES
from ..review import audit as label_audit_
from ..review import verdicts as reviews
from . import charts

MISSED_COLUMNS = ("n_images", "n_missed", "missed_rate", "missed_rate_lo", "missed_rate_hi")


def build(df: pd.DataFrame, groupings: list[str] | None = None, n_boot: int = N_BOOT, seed: int = SEED,
          min_count: int = MIN_COUNT, edges: tuple[int, ...] = AGE_BUCKET_EDGES) -> dict[str, GroupReport]:
    """One report per grouping (default: the table's own, groupings_for), all sharing the overall row.
    Raises ValueError, naming what the table can be grouped by, for a grouping it cannot. ``df``: prepared
    (fairness.prepare with ``edges``) or not; a prepared one is used as it is."""
    df = prepared(df, edges)
    groupings = groupings or groupings_for(df)
    for g in groupings:  # every grouping checked before any bootstrap runs
        parse_grouping(g, grouping_columns(df))
    reports, overall = {}, None
    for g in groupings:
        reports[g] = GroupReport(df, g, n_boot=n_boot, seed=seed, min_count=min_count, overall=overall)
        overall = reports[g].overall
    return reports


def interval_coverage(df: pd.DataFrame, groupings) -> dict[str, pd.DataFrame]:
    """The age intervals' coverage overall ("overall") and per grouping, each a coverage_by_group table; empty
    when the table has no interval on an exact age (an uncalibrated checkpoint, or age bins only). ``df``: prepared or
    not (coverage_by_group prepares one that is not, with the default age buckets)."""
    overall = coverage_by_group(df)
    if overall.empty:
        return {}
    return {"overall": overall, **{g: coverage_by_group(df, g) for g in groupings}}


def gender_threshold(df: pd.DataFrame, groupings) -> dict[str, dict]:
    """Per single-column grouping but gender (one class per group: no ROC), genderband.summary: per-group ROC
    AUC, calibration, and what the Uncertain band does to each group; empty where no face has a P(female).
    ``df``: prepared or not; a prepared one is used as it is."""
    if not genderband.scored_mask(df).any():
        return {}
    return {g: genderband.summary(df, g) for g in groupings if ":" not in g and g != "gender"}


def label_audit(df: pd.DataFrame, audit: pd.DataFrame, groupings, n_boot: int = N_BOOT, seed: int = SEED,
                min_count: int = MIN_COUNT, edges: tuple[int, ...] = AGE_BUCKET_EDGES,
                reports: dict[str, GroupReport] | None = None, mode: str = label_audit_.ALL_SUSPECTS) -> dict:
    """The label audit's part of the report: counts and thresholds, per group of each single-column grouping
    the suspects and what ``mode`` leaves out (audit.suspect_share_by_group, Wilson 95% intervals), and each of
    those groupings' disparities recomputed on the table without them (audit.leave_out) beside the gaps with
    them: by default (ALL_SUSPECTS) a what-if that leaves out unreviewed suspects too, with CONFIRMED_ERRORS
    only the labels reviewed wrong. The report's own figures keep every face. ``audit``: with its verdicts
    (review.with_reviews); ``reports``: build()'s, reused for the gaps with the suspects. ``df``: prepared with
    ``edges`` or not; a prepared one is used as it is, and so are its rows without the suspects."""
    pdf = prepared(df, edges)
    singles = [g for g in groupings if ":" not in g]
    clean = label_audit_.leave_out(pdf, audit, mode)
    verdicts = audit["verdict"].value_counts().to_dict() if "verdict" in audit else {}
    shares = label_audit_.suspect_share_by_group(pdf, audit, singles, mode=mode)
    out = {"n_audited": len(audit), "age_method": audit.attrs.get("age_method"),
           "age_source": audit.attrs.get("age_source"), "level": audit.attrs.get("level"),
           "gender_thresholds": audit.attrs.get("thresholds"), "suspects": label_audit_.counts(audit),
           "reviewed": {v: int(verdicts.get(v, 0)) for v in (reviews.CONFIRMED, reviews.WRONG)},
           "mode": mode, "what_if": mode == label_audit_.ALL_SUSPECTS,
           "left_out": len(df) - len(clean), "unreviewed_left_out": unreviewed_left_out(audit, mode),
           "share_by_group": {g: shares[shares["column"] == g].drop(columns="column").to_dict("records")
                              for g in singles},
           "disparity": {}}
    without = build(clean, singles, n_boot, seed, min_count, edges) if singles and len(clean) else {}
    for g in singles:
        with_ = (reports or {}).get(g) or GroupReport(pdf, g, n_boot=n_boot, seed=seed, min_count=min_count)
        out["disparity"][g] = gap_change(with_.disparity(), without[g].disparity() if g in without else None)
    return out


def gap_change(with_: pd.DataFrame, without: pd.DataFrame | None) -> list[dict]:
    """Per metric: the gap (its worst and best groups, its interval and the test that all groups are equal) with
    the suspects and without them."""
    keep = ["metric", "label", "worst_group", "best_group", "gap", "gap_lo", "gap_hi", "p_value", "q_value"]
    w = with_[keep]
    if without is None:
        w = w.assign(**{f"{k}_clean": None for k in ("worst_group", "best_group")},
                     **{f"{k}_clean": np.nan for k in keep[4:]})
    else:
        w = w.merge(without[keep[:1] + keep[2:]], on="metric", how="left", suffixes=("", "_clean"))
    w = w.assign(change=w["gap_clean"] - w["gap"])
    return [{k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in r.items()}
            for r in w.to_dict("records")]


def label_audit_frame(section: dict, grouping: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(suspect share per group, the gaps with and without the suspects) of one grouping, as tables."""
    return (pd.DataFrame(section["share_by_group"].get(grouping, [])),
            pd.DataFrame(section["disparity"].get(grouping, [])))


def suspect_shares(df: pd.DataFrame, audit: pd.DataFrame, grouping: str,
                   mode: str = label_audit_.ALL_SUSPECTS) -> pd.DataFrame:
    """audit.suspect_share_by_group for one grouping of a prepared table: a column, or an intersection (a:b) as
    one column of its groups' names."""
    cols = parse_grouping(grouping, grouping_columns(df))
    if len(cols) == 1:
        return label_audit_.suspect_share_by_group(df, audit, cols, mode=mode).drop(columns="column")
    joined = df[cols].astype(str).agg(" × ".join, axis=1)
    name = " × ".join(cols)
    return label_audit_.suspect_share_by_group(df.assign(**{name: joined}), audit, [name], mode=mode).drop(
        columns="column")


def unreviewed_left_out(audit: pd.DataFrame, mode: str) -> int:
    """How many suspects nobody has reviewed ``mode`` leaves out (none but in the what-if)."""
    verdict = audit["verdict"] if "verdict" in audit else pd.Series("", index=audit.index)
    return int((label_audit_.left_out(audit, mode) & (verdict == "").to_numpy()).sum())


def leave_out_text(audit: pd.DataFrame, mode: str, n_table: int, n_left: int) -> str:
    """What the audit flagged and what ``mode`` left out of a table of ``n_table`` rows (``n_left`` remain),
    in a sentence or two: the what-if says that it is one and how many unreviewed suspects it left out."""
    c = label_audit_.counts(audit)
    verdict = audit["verdict"] if "verdict" in audit else pd.Series("", index=audit.index)
    flagged = label_audit_.suspects(audit)
    unreviewed = int((flagged & (verdict == "").to_numpy()).sum())
    found = (f"{c['total']} suspected label errors among {len(audit):,} faces ({c['gender']} gender, {c['age']} age; "
             f"age by {audit.attrs.get('age_method')}), {unreviewed} of them not reviewed; "
             f"{int((verdict == reviews.CONFIRMED).sum())} labels reviewed \"{reviews.CONFIRMED}\", "
             f"{int((verdict == reviews.WRONG).sum())} \"{reviews.WRONG}\".")
    gone = n_table - n_left
    if mode == label_audit_.ALL_FACES:
        return f"All faces: every figure keeps the suspects. {found}"
    if mode == label_audit_.CONFIRMED_ERRORS:
        return (f"Without confirmed label errors: {gone:,} of {n_table:,} faces left out, those a reviewer marked "
                f"\"{reviews.WRONG}\"; the {unreviewed} unreviewed suspects stay in. {found}")
    return (f"What-if, not a corrected figure: {gone:,} of {n_table:,} faces left out, every suspect not confirmed "
            f"and every label reviewed wrong, of which {unreviewed_left_out(audit, mode)} unreviewed suspects nobody "
            f"has judged (the model disagrees with their label; the error may be the model's). {found}")


def label_audit_text(section: dict) -> str:
    """A line on what the audit found and left out."""
    c, r = section["suspects"], section["reviewed"]
    reviewed = f"; reviewed: {r[reviews.CONFIRMED]} confirmed, {r[reviews.WRONG]} wrong" if any(r.values()) \
        else ""
    if section["what_if"]:
        gaps = (f"the gaps without them are a what-if, not corrected figures: {section['left_out']} faces left "
                f"out, {section['unreviewed_left_out']} of them unreviewed suspects")
    else:
        gaps = f"the gaps without confirmed label errors leave out {section['left_out']} faces reviewed wrong"
    return (f"label audit ({section['age_method']}, age level {section['level']}): {c['total']} suspects among "
            f"{section['n_audited']} faces ({c['gender']} gender, {c['age']} age){reviewed}; {gaps}")


def to_json(reports: dict[str, GroupReport], source: str, searched: SliceSearch | None = None,
            coverage: dict[str, pd.DataFrame] | None = None, threshold: dict[str, dict] | None = None,
            audit: dict | None = None, shift: dict | None = None, age_thresholds: dict | None = None) -> dict:
    """The report as JSON; with ``searched`` (find_slices), the slices tried, worst first per metric (the first
    slices.SHOW_AT_MOST of each), under "slices", and how many were tried, over what, under "slice_search";
    with ``coverage`` (interval_coverage), the age intervals' coverage under "age_interval_coverage"; with
    ``threshold`` (gender_threshold), per-group ROC, calibration and the band's what-if under "gender_threshold";
    with ``audit`` (label_audit), the label audit under "label_audit"; with ``shift`` (shift_section), the set's
    figures at the reference's mix under "shift"; with ``age_thresholds`` (fairness.thresholds.section), the
    false adults and false minors per group under "age_thresholds"."""
    first = next(iter(reports.values()))
    out = {"source": source, "overall": first.to_json()["overall"],
           "groupings": {g: {k: v for k, v in r.to_json().items() if k != "overall"} for g, r in reports.items()}}
    if searched is not None:
        out["slices"], out["slice_search"] = searched.entries(), searched.to_json()
    if coverage:
        out["age_interval_coverage"] = {g: t.to_dict("records") for g, t in coverage.items()}
    if threshold:
        out["gender_threshold"] = threshold
    if audit:
        out["label_audit"] = audit
    if shift:
        out["shift"] = shift
    if age_thresholds:
        out["age_thresholds"] = age_thresholds
    return out


def shift_section(df: pd.DataFrame, reference: str, n_boot: int = N_BOOT, seed: int = SEED) -> dict:
    """fairness.shift's table of the set ``df`` against the checkpoint ``reference``'s own held-out predictions:
    {"reference", "rows", "notes"}."""
    table, notes = dataset_shift.explain(df, dataset_shift.reference_predictions(reference), n_boot=n_boot, seed=seed)
    return {"reference": str(reference), "rows": table.to_dict("records"), "notes": notes}


def _shift_html(section: dict) -> str:
    shown = dataset_shift.display(pd.DataFrame(section["rows"]))
    notes = "".join(f"<p>{html.escape(n)}</p>" for n in section["notes"])
    return (f"<h2>Why lower than on the training data</h2><p>{html.escape(dataset_shift.EXPLAINED)} Reference: "
            f"{html.escape(section['reference'])}.</p>" + _table_html(shown) + notes)


GAP_NOTE = ("gap_lo, gap_hi: the gap's 95% interval, from intervals that hold every group's figure at once; "
            "p_value: the test that all groups are equal (chi-square for a share, else permuting the groups; AUC: "
            "Cochran's Q), q_value: p corrected for the metrics of this table (Benjamini-Hochberg); detectable: the "
            "smallest difference between the two least measured groups found 80% of the time at the 5% level")


def noise_text(disparity: pd.DataFrame) -> str:
    """In words, which gaps of a disparity table are within what noise alone produces (q >= 0.05)."""
    noise = disparity[disparity["within_noise"].fillna(False).astype(bool)]
    if disparity.empty:
        return ""
    if noise.empty:
        return "Every gap here is larger than noise alone makes (q < 0.05)."
    listed = "; ".join(f"{r['label']} (q = {r['q_value']:.2f}; a gap of "
                       f"{detectable_text(r['metric'], r['detectable'])} would be found at 80% power)"
                       for _, r in noise.iterrows())
    return f"Within what noise alone produces, no evidence that the groups differ: {listed}."


def _interval(row: dict, name: str) -> str:
    lo, hi = row[f"{name}_lo"], row[f"{name}_hi"]
    return f"[{lo:.3f}, {hi:.3f}]" if np.isfinite(lo) and np.isfinite(hi) else MISSING


def _table_html(df: pd.DataFrame) -> str:
    return df.to_html(index=False, float_format=lambda v: f"{v:.3f}", na_rep=MISSING, border=0, classes="t")


SLICES_SHOWN = 10  # per metric, in the HTML report: the worst by gap, whatever their q


def _slices_html(searched: SliceSearch) -> str:
    top = slices.shown(searched, show_all=True, top=SLICES_SHOWN)
    table = _table_html(slices.display(top)) if len(top) else ""
    return (f"<h2>Worst slices</h2><p>The {SLICES_SHOWN} slices per metric that are worst compared with the rest "
            f"of the table, with the 95% interval of the gap. {html.escape(searched.summary())}</p>{table}")


def to_html(reports: dict[str, GroupReport], df: pd.DataFrame, source: str, searched: SliceSearch | None = None,
            audit: dict | None = None, shift: dict | None = None, age_thresholds: dict | None = None) -> str:
    """One self-contained file: plotly.js is inlined once, no network needed to open it. ``searched``: the slice
    search to show (default: find_slices of ``df`` with its defaults); ``audit``: the label audit's section
    (label_audit), if any; ``shift``: the set at the training data's mix (shift_section), if any;
    ``age_thresholds``: fairness.thresholds.section (default: its defaults on ``df``). ``df``: prepared
    (fairness.prepare, as main passes it) or not; a prepared one is used as it is."""
    first = next(iter(reports.values()))
    parts, js = [], "inline"

    def fig(f) -> str:
        nonlocal js
        out = f.to_html(full_html=False, include_plotlyjs=js)
        js = False
        return out

    o = first.overall
    shown = [*METRICS.values(), MISSED_RATE]
    overall = pd.DataFrame([{"metric": m.label, "value": o[m.name], "95% interval": _interval(o, m.name)}
                            for m in shown])
    found = f", a face found in {o['n']} of {o['n_images']} images" if first.any_missed else ""
    parts.append(f"<h2>Overall (n = {o['n']}{found})</h2>" + _table_html(overall))
    if shift:
        parts.append(_shift_html(shift))
    pdf = prepared(df)
    age = headline_age_metric(pdf)
    if age == "age_mae" and "race" in pdf:  # the charts of exact ages colour by UTKFace's and FairFace's groups
        pdf = pdf[pdf["found"]]
        parts.append(fig(charts.predicted_vs_true(pdf)) + fig(charts.residual_by_age(pdf)))
    parts.append(_slices_html(searched if searched is not None else find_slices(df)))
    coverage = interval_coverage(df, [g for g in reports if ":" not in g])
    if coverage:
        parts.append("<h2>Age interval coverage</h2><p>How often the calibrated age interval holds the true age, "
                     "with a Wilson 95% interval: the nominal coverage holds on average over faces like the "
                     "calibration set's, not for every group.</p>"
                     + "".join(f"<h3>{html.escape(g)}</h3>" + _table_html(t) for g, t in coverage.items()))
    parts.append(_thresholds_html(age_thresholds or age_thresholds_.section(df)))
    if audit:
        parts.append(_label_audit_html(audit))
    for g, r in reports.items():
        parts.append(f"<h2>By {html.escape(g.replace(':', ' × '))}</h2>")
        d = r.disparity()
        parts.append(f"<h3>Disparity (groups with n ≥ {r.min_count})</h3><p>{html.escape(RATIO_NOTE)}. "
                     f"{html.escape(GAP_NOTE)}</p><p>{html.escape(noise_text(d))}</p>" + _table_html(d))
        if len(r.columns) == 2:
            parts.append(fig(charts.intersection_heatmap(r, age)))
            parts.append(fig(charts.intersection_heatmap(r, "gender_accuracy")))
        else:
            parts.append(fig(charts.group_bars(r, age)) + fig(charts.group_bars(r, "gender_accuracy")))
            parts.append(fig(charts.composition_vs_error(r, age)))
        cols = [*r.columns, "n", "too_small"] + [c for m in METRICS for c in (m, f"{m}_lo", f"{m}_hi")]
        cols += list(MISSED_COLUMNS) if r.any_missed else []
        parts.append("<details><summary>All groups</summary>" + _table_html(r.by_group[cols]) + "</details>")
    style = ("body{font-family:sans-serif;margin:2em;max-width:1200px} table.t{border-collapse:collapse;"
             "font-size:13px} .t td,.t th{padding:3px 8px;border-bottom:1px solid #ddd;text-align:right}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>agegender bias report</title>"
            f"<style>{style}</style></head><body><h1>Bias report</h1><p>{html.escape(source)} · "
            f"{time.strftime('%Y-%m-%d %H:%M')} · bootstrap 95% intervals</p>{''.join(parts)}</body></html>")


THRESHOLDS_NOTE = ("At each age threshold, the share of true minors (true age under it) predicted at or over the "
                   "decision threshold (false adult) and of true adults predicted under it (false minor), with "
                   "Wilson 95% intervals; the decision threshold is the age threshold plus the buffer. A group "
                   "with no minors (or no adults) has no share; n_unknown: faces whose age bin lies on both "
                   "sides of the threshold.")


def _thresholds_html(section: dict) -> str:
    rows = age_thresholds_.frame(section)
    overall = rows[rows["grouping"] == age_thresholds_.OVERALL].drop(columns=["grouping", "group"])
    parts = [f"<h2>Age-threshold errors (buffer {html.escape(str(section['buffer']))} years)</h2>"
             f"<p>{html.escape(THRESHOLDS_NOTE)}</p>" + _table_html(overall)]
    for g in section["groupings"]:
        shown = rows[rows["grouping"] == g].drop(columns="grouping")
        parts.append(f"<details><summary>By {html.escape(g.replace(':', ' × '))}</summary>"
                     + _table_html(shown) + "</details>")
    return "".join(parts)


def _label_audit_html(section: dict) -> str:
    left = ("every suspect not confirmed (a what-if: unreviewed suspects are faces the model disagrees with, "
            "not known errors)" if section["what_if"] else "the labels reviewed wrong")
    parts = [f"<h2>Suspected label errors</h2><p>{html.escape(label_audit_text(section))}. Per group: the "
             f"suspects, the faces left out ({html.escape(left)}) and their share (Wilson 95% interval), and each "
             "gap between the best and worst group recomputed without them: a gap that shrinks may be partly the "
             "labels', one that holds is the model's.</p>"]
    for g in section["share_by_group"]:
        shares, gaps = label_audit_frame(section, g)
        parts.append(f"<h3>{html.escape(g)}</h3>" + _table_html(shares) + _table_html(gaps))
    return "".join(parts)


def audit_for(df: pd.DataFrame, checkpoint: str | None, split: str, review: str | None, wanted: bool | None
              ) -> tuple[pd.DataFrame | None, str | None]:
    """(the label audit of a predictions table with its verdicts, or None; a note when asked for and not
    possible as asked). By default (``wanted`` None) on when the audit needs no model: the table carries its
    label tails, or the checkpoint's head is a regression; forced on (True) a table without tails takes the
    residual fallback."""
    if wanted is False:
        return None, None
    audit = label_audit_.audit_from_predictions(df, checkpoint)
    note = None
    if audit is None and wanted:
        audit = label_audit_.audit_table(df)
        note = ("the predictions carry no age_label_tail: the age audit takes the residual fallback (run python -m "
                "agegender.evaluate again for the model's own age distribution)")
    if audit is None:
        return None, None
    path = review or (reviews.review_path(checkpoint, split) if checkpoint else None)
    return reviews.with_reviews(audit, reviews.read_review(path) if path else pd.DataFrame(
        columns=list(reviews.REVIEW_COLUMNS))), note
