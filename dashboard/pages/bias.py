"""Bias report: for whom does the model fail, by how much, with what certainty."""

import streamlit as st

from dashboard import caches, state


# cache_resource: shared and never mutated (the audit is read, leave_out filters a copy)
@st.cache_resource(max_entries=8, show_spinner="Auditing the labels (from the predictions)…")
def audit_cached(ckpt_path: str, source: str, stamp: tuple, review_stamp: tuple):
    from agegender.report.bias import audit_for

    return audit_for(caches.predictions_cached(ckpt_path, source, stamp), ckpt_path, source, None, None)[0]


@st.cache_resource(max_entries=8)
def leakage_cached(ckpt_path: str, source: str, leak_stamp: tuple):
    from agegender import lookalikes

    return lookalikes.read_if_any(sources.source(ckpt_path, source).leakage_path())


def source_table(ckpt_path: str, source: str, stamp: tuple, leave: tuple | None):
    """The predictions; with ``leave`` (a label-audit leave-out mode, the review file's stamp, the leakage file's
    stamp or None) without what that mode leaves out, and without the look-alikes of training faces."""
    from agegender import lookalikes

    df = caches.predictions_cached(ckpt_path, source, stamp)
    if leave is None:
        return df
    if leave[0] != ALL_FACES:
        df = leave_out(df, audit_cached(ckpt_path, source, stamp, leave[1]), leave[0])
    if leave[2] is not None:
        df = lookalikes.without(df, leakage_cached(ckpt_path, source, leave[2]))
    return df


def leave_note(ckpt_path: str, source: str, stamp: tuple, leave: tuple) -> str:
    """What ``leave`` left out, in words."""
    from agegender import lookalikes

    parts = [shares_cached(ckpt_path, source, stamp, leave, None)[0]] if leave[0] != ALL_FACES else []
    if leave[2] is not None:
        n = len(source_table(ckpt_path, source, stamp, (leave[0], leave[1], None)))
        parts.append(lookalikes.without_text(n, len(source_table(ckpt_path, source, stamp, leave)),
                                             leakage_cached(ckpt_path, source, leave[2])))
    return " · ".join(parts)


# cache_resource: prepared once per source and leave-out mode, shared by the report, the HTML, the slice search
# and the suspects table (each takes a prepared table as it is), never mutated
@st.cache_resource(max_entries=16, show_spinner="Preparing the predictions…")
def prepared_cached(ckpt_path: str, source: str, stamp: tuple, leave: tuple | None):
    return prepare(source_table(ckpt_path, source, stamp, leave))


# cache_resource: the report holds metric functions (not picklable); it is never mutated
@st.cache_resource(max_entries=32, show_spinner="Computing the report (bootstrap)…")
def report_cached(ckpt_path: str, source: str, stamp: tuple, grouping: str, min_count: int, leave: tuple | None):
    table = prepared_cached(ckpt_path, source, stamp, leave)
    return table, GroupReport(table, grouping, min_count=min_count)


@st.cache_data(max_entries=8, show_spinner="Writing the HTML report…")
def html_cached(ckpt_path: str, source: str, stamp: tuple, min_count: int, leave: tuple | None) -> str:
    from agegender.report.bias import build

    df = prepared_cached(ckpt_path, source, stamp, leave)
    note = f" · {leave_note(ckpt_path, source, stamp, leave)}" if leave is not None else ""
    groupings = groupings_for(source_table(ckpt_path, source, stamp, leave))  # as the page offers them
    return to_html(build(df, groupings, min_count=min_count), df,
                   f"{ckpt_path} ({sources.label(source)}){note}")


@st.cache_data(max_entries=16, show_spinner="Searching the worst slices…")
def slices_cached(ckpt_path: str, source: str, stamp: tuple, leave: tuple | None):
    from agegender.fairness.slices import find_slices

    return find_slices(prepared_cached(ckpt_path, source, stamp, leave))


@st.cache_data(max_entries=32)
def thresholds_cached(ckpt_path: str, source: str, stamp: tuple, leave: tuple | None, grouping: str, threshold: int,
                      buffer: int):
    from agegender.fairness.thresholds import threshold_errors

    return threshold_errors(prepared_cached(ckpt_path, source, stamp, leave), (threshold,), buffer, [grouping])


@st.cache_data(max_entries=16)
def shares_cached(ckpt_path: str, source: str, stamp: tuple, leave: tuple, grouping: str | None):
    """(what the mode left out, in words; per group of ``grouping`` the suspects and what left, or None)."""
    df = caches.predictions_cached(ckpt_path, source, stamp)
    audit = audit_cached(ckpt_path, source, stamp, leave[1])
    text = leave_out_text(audit, leave[0], len(df), len(source_table(ckpt_path, source, stamp, (*leave[:2], None))))
    table = prepared_cached(ckpt_path, source, stamp, None)
    return text, suspect_shares(table, audit, grouping, leave[0]) if grouping else None


st.title("Bias report")

# heavy imports after the title, so the page shows while they load. Every table passes placeholder=MISSING:
# st.dataframe draws a null cell as "None" whatever the Styler says, beside the Styler's "–" elsewhere
from agegender import lookalikes
from agegender.evaluation import sources
from agegender.fairness import slices, tables
from agegender.fairness.groups import (
    METRICS,
    MIN_COUNT,
    RATIO_NOTE,
    GroupReport,
    grouping_columns,
    groupings_for,
    prepare,
)
from agegender.fairness.thresholds import DEFAULT_BUFFER, DEFAULT_THRESHOLDS, SHARE_COLUMNS
from agegender.report import charts
from agegender.report.bias import GAP_NOTE, THRESHOLDS_NOTE, leave_out_text, noise_text, suspect_shares, to_html
from agegender.review.audit import ALL_FACES, LEAVE_OUT, MODE_LABELS, audit_needs_model, leave_out
from agegender.review.verdicts import review_path

ckpt = state.checkpoint_choice(state.selected_checkpoints())
c1, c2, c3, c4 = st.columns(4)
source = state.source_picker(c1, "bias_split")
df = caches.predictions(ckpt, source)
if df is None:
    st.stop()
# the table's own groupings: FairFace's seven groups, a user's extra columns, pose and face size of photos
groupings = groupings_for(df) + [g for g in ("age_bucket:gender",) if g not in groupings_for(df)]
grouping = c2.selectbox("Grouping", groupings, key="bias_grouping", format_func=lambda g: g.replace(":", " × "))
exact = df["age"].notna().any()  # exact ages (UTKFace), or only bins (FairFace): the age metrics it has
offered = [m for m in METRICS if exact or not m.startswith("age_") or m.startswith("age_bin")]
metric = c3.selectbox("Metric", offered, key="bias_metric", format_func=lambda m: METRICS[m].label)
min_count = c4.number_input("Too small below n =", 1, 10_000, MIN_COUNT, key="bias_min")
stamp = caches.predictions_stamp(ckpt.path, source)
needs_model = audit_needs_model(df, ckpt.path)
mode = st.radio("Faces in the figures", LEAVE_OUT, key="bias_leave_out", format_func=MODE_LABELS.get,
                horizontal=True, disabled=bool(needs_model),
                help=needs_model or "Suspected label errors (review.audit) are faces the model disagrees with; "
                "a reviewer's verdicts are recorded on the Error explorer. Without confirmed label errors: only the "
                "faces reviewed 'label wrong' leave. Without all suspects: a what-if that leaves out unreviewed "
                "suspects too (often faces the model gets wrong): does the gap survive cleaning?")
audit_on = not needs_model and mode != ALL_FACES
leak_stamp = caches.stamp(sources.source(ckpt.path, source).leakage_path())
try:
    leak = leakage_cached(str(ckpt.path), source, leak_stamp)
except lookalikes.LeakageError as e:
    st.warning(str(e))
    leak = None
drop_look = leak is not None and st.toggle(
    f"Without look-alikes of training faces ({len(df) - len(lookalikes.without(df, leak))} of {len(df)} here)",
    key="bias_no_look_alikes",
    help="Faces whose look-alike or copy is in the checkpoint's training data (python -m agegender.leakage): "
         "their figures are optimistic. Off: every face; on: every figure on this page recomputed without them.")
if leak is None:
    st.caption("No look-alike check for this source: `python -m agegender.leakage --data DATA --checkpoint "
               f"{ckpt.path}` writes it, and a toggle here then recomputes every figure without those faces.")
leave = None if not (audit_on or drop_look) else (
    mode if audit_on else ALL_FACES, caches.stamp(review_path(ckpt.path, source)) if audit_on else None,
    leak_stamp if drop_look else None)
if drop_look:
    st.caption(leave_note(str(ckpt.path), source, stamp, (ALL_FACES, None, leak_stamp)))
if audit_on:
    text, shares = shares_cached(str(ckpt.path), source, stamp, leave, grouping)
    st.caption(text)
    with st.expander("Suspected label errors per group", expanded=True):
        st.dataframe(tables.styled(shares), hide_index=True, placeholder=tables.MISSING)
table, rep = report_cached(str(ckpt.path), source, stamp, grouping, int(min_count), leave)

o = rep.overall
headline = ("age_mae", "age_bias") if exact else ("age_bin_accuracy", "age_bin_within1")
if o.get("n_missed"):
    st.caption(f"A face was found in {tables.metric_text('n', o['n'])} of {tables.metric_text('n', o['n_images'])} "
               f"images; every figure is over those, and the miss rate per group is in the table below.")
cols = st.columns(4)
for col, name in zip(cols, (*headline, "gender_accuracy", "gender_auc"), strict=True):
    col.metric(f"{METRICS[name].label} (n={tables.metric_text('n', o['n'])})", tables.metric_text(name, o[name]),
               help=f"95% interval {tables.interval_text(name, o[name + '_lo'], o[name + '_hi'])}", delta=None)

st.subheader("Disparity")
disp = rep.disparity()
st.caption(f"Worst and best group per metric among groups with n ≥ {int(min_count)}; "
           f"{int(rep.by_group['too_small'].sum())} smaller group(s) are flagged below, not hidden; {RATIO_NOTE}. "
           f"{GAP_NOTE}.")
if disp.empty:
    st.info(f"Fewer than two groups have n ≥ {int(min_count)}: nothing to compare. Lower the threshold to see more.")
else:
    st.dataframe(tables.styled(disp), hide_index=True, placeholder=tables.MISSING)
    st.caption(noise_text(disp))

shown = rep.by_group
with st.expander("Filter groups"):
    for c in rep.columns:
        keep = st.multiselect(c, sorted(shown[c].unique()), key=f"bias_f_{c}")
        if keep:
            shown = shown[shown[c].isin(keep)]
    if st.checkbox("Hide groups too small to judge", key="bias_hide_small"):
        shown = shown[~shown["too_small"]]
view = rep.with_groups(shown)

left, right = st.columns(2)
left.plotly_chart(charts.group_bars(view, metric), width="stretch")
if len(rep.columns) == 2:
    right.plotly_chart(charts.intersection_heatmap(view, metric), width="stretch")
else:
    right.plotly_chart(charts.composition_vs_error(view, metric), width="stretch")
if exact and "race" in table:  # the two scatter charts need exact ages (and colour by race)
    left, right = st.columns(2)
    found = table[table["found"]]
    left.plotly_chart(charts.predicted_vs_true(found), width="stretch")
    right.plotly_chart(charts.residual_by_age(found), width="stretch")

st.subheader("All groups")
st.dataframe(tables.styled(shown).apply(lambda r: ["color: #999" if r["too_small"] else "" for _ in r], axis=1),
             hide_index=True, placeholder=tables.MISSING)
d1, d2 = st.columns(2)
d1.download_button("Groups (CSV)", tables.csv_download(shown), f"bias-{ckpt.name}-{source}-{grouping}.csv", "text/csv")
if d2.button("Prepare the HTML report (all groupings)", key="bias_html"):
    d2.download_button("Download the HTML report", html_cached(str(ckpt.path), source, stamp, int(min_count), leave),
                       f"bias-{ckpt.name}-{source}{f'-without-{mode}' if audit_on else ''}"
                       f"{'-without-look-alikes' if drop_look else ''}.html", "text/html")
cli = sources.source(ckpt.path, source).cli_args()
st.caption(f"Groupings available: {', '.join(grouping_columns(table))} and their pairs. The command line gives the "
           f"same: `python -m agegender.report {cli} --html report.html`")

st.subheader("Worst slices")
searched = slices_cached(str(ckpt.path), source, stamp, leave)
show_all = st.toggle(f"Show every slice tried (the worst {slices.SHOW_AT_MOST} per metric), not only those with "
                     f"q < {searched.alpha:g}", key="bias_slices_all")
worst = slices.shown(searched, show_all)
st.caption(searched.summary())
if worst.empty:
    st.info(slices.empty_text(searched))
else:
    st.dataframe(slices.styled(searched, worst), hide_index=True, placeholder=tables.MISSING)

st.subheader("Age thresholds")
t1, t2 = st.columns(2)
threshold = t1.selectbox("Age threshold", DEFAULT_THRESHOLDS, index=DEFAULT_THRESHOLDS.index(18), key="bias_age_t",
                         help="True minors are under it, true adults at or over it")
buffer = t2.slider("Buffer (years)", 0, 10, DEFAULT_BUFFER, key="bias_age_buffer",
                   help="Called adult only at the threshold plus this many years: 7 asks for 25+ to pass 18")
ages = thresholds_cached(str(ckpt.path), source, stamp, leave, grouping, threshold, buffer)
st.caption(f"By {grouping.replace(':', ' × ')}, called adult at a predicted age of {threshold + buffer} or over: "
           f"{THRESHOLDS_NOTE}")
st.dataframe(tables.styled(ages.drop(columns=["threshold", "decision"]), dict.fromkeys(SHARE_COLUMNS, "share")),
             hide_index=True, placeholder=tables.MISSING)
