"""Gender threshold: ROC and reliability of P(female) per group, what the Uncertain band does to each, and each
group's error rates against the threshold."""

import streamlit as st

from dashboard import caches, state

THRESHOLD, BAND = "gender_threshold", "gender_band"
SHOWN = "gender_threshold_shown"  # the threshold of the last run: where the band moves from
MOVED = "gender_moved"  # what a slider's callback moved in the other, said once in a caption


@st.cache_data(max_entries=16, show_spinner="Reading predictions…")
def prepared_cached(ckpt_path: str, source: str, stamp: tuple):
    return prepare(caches.predictions_cached(ckpt_path, source, stamp))


@st.cache_data(max_entries=32, show_spinner="Computing ROC curves and reliability…")
def curves_cached(ckpt_path: str, source: str, stamp: tuple, grouping: str):
    table = prepared_cached(ckpt_path, source, stamp)
    return genderband.roc_by_group(table, grouping), genderband.reliability_by_group(table, grouping)


@st.cache_data(max_entries=64, show_spinner=False)
def what_if_cached(ckpt_path: str, source: str, stamp: tuple, grouping: str, threshold: float,
                   band: tuple[float, float]):
    return genderband.band_what_if(prepared_cached(ckpt_path, source, stamp), grouping, threshold, band)


@st.cache_data(max_entries=64, show_spinner=False)
def sweep_cached(ckpt_path: str, source: str, stamp: tuple, grouping: str, threshold: float,
                 band: tuple[float, float]):
    return genderband.threshold_sweep(prepared_cached(ckpt_path, source, stamp), grouping, threshold, band)


# A widget's value cannot change once it is drawn in a run: one slider moves the other in its callback, which runs
# before the next run draws them, so every run has a band that holds the threshold.
def threshold_moved():
    session = st.session_state
    was = tuple(session[BAND])
    band = genderband.band_following(session[THRESHOLD], was, session.get(SHOWN), decimals=2)
    if band != was:
        session[BAND] = band
        session[MOVED] = genderband.BAND_MOVED.format(lo=band[0], hi=band[1], was_lo=was[0], was_hi=was[1])


def band_moved():
    session = st.session_state
    was = session[THRESHOLD]
    threshold = genderband.threshold_within(was, session[BAND])
    if threshold != was:
        session[THRESHOLD] = threshold
        session[MOVED] = genderband.THRESHOLD_MOVED.format(threshold=threshold, was=was)


st.title("Gender threshold")

# heavy imports after the title, so the page shows while they load
from agegender.fairness import genderband, tables
from agegender.fairness.groups import grouping_columns, prepare
from agegender.labels import DECISION, DEFAULT_BAND
from agegender.predictions import group_columns
from agegender.report import charts

ckpt = state.checkpoint_choice(state.selected_checkpoints())
c1, c2, c3, c4 = st.columns(4)
source = state.source_picker(c1, "gender_split")
if caches.predictions(ckpt, source) is None:
    st.stop()
stamp = caches.predictions_stamp(ckpt.path, source)
table = prepared_cached(str(ckpt.path), source, stamp)
n_scored = int(genderband.scored_mask(table).sum())
if n_scored == 0:
    st.info(genderband.NO_SCORES)
    st.stop()
columns = grouping_columns(table)
first = next(iter(group_columns(table)), columns[0])  # the dataset's own groups (race) first
grouping = c2.selectbox("Group by", columns, index=columns.index(first), key="gender_grouping")
# the values live in session state, never as the widgets' defaults: the callbacks may then set them
st.session_state.setdefault(THRESHOLD, DECISION)
st.session_state.setdefault(BAND, DEFAULT_BAND)
threshold = c3.slider("Called female at P(female) ≥", 0.0, 1.0, step=0.01, key=THRESHOLD, on_change=threshold_moved,
                      help="The Uncertain band moves with the threshold, keeping its place around it.")
shown_band = tuple(map(float, c4.slider("Uncertain band", 0.0, 1.0, step=0.01, key=BAND, on_change=band_moved,
                                        help="P(female) inside the band reads Uncertain: those faces are not "
                                             "decided. A band moved off the threshold takes the threshold along.")))
st.session_state[SHOWN] = threshold
band = genderband.band_following(threshold, shown_band, decimals=2)  # the callbacks already did; a safety net
if band != shown_band:
    st.session_state[MOVED] = genderband.BAND_MOVED.format(lo=band[0], hi=band[1], was_lo=shown_band[0],
                                                           was_hi=shown_band[1])
if MOVED in st.session_state:
    st.caption(st.session_state.pop(MOVED))
st.caption(f"{tables.metric_text('n', n_scored)} of {tables.metric_text('n', len(table))} images have a face found, "
           "a gender label and a P(female); every figure is over those. Women are the positive class.")

roc, rel = curves_cached(str(ckpt.path), source, stamp, grouping)
left, right = st.columns(2)
left.plotly_chart(charts.roc_curves(roc.curves, roc.by_group, threshold), width="stretch")
left.dataframe(tables.styled(roc.by_group, genderband.FORMATS), hide_index=True, placeholder=tables.MISSING)
left.caption("AUC: the chance a woman gets a higher P(female) than a man (ties count half), with DeLong's 95% "
             "interval.")
right.plotly_chart(charts.reliability_diagram(rel.bins), width="stretch")
right.dataframe(tables.styled(rel.by_group, genderband.FORMATS), hide_index=True, placeholder=tables.MISSING)
right.caption(f"ECE: the mean gap between P(female) and the share of women over {genderband.RELIABILITY_BINS} "
              "equal-width bins, weighted by the faces in each.")

st.subheader("What the Uncertain band does, per group")
what_if = what_if_cached(str(ckpt.path), source, stamp, grouping, float(threshold), band)
gap = what_if.gap
if gap["groups_judged"] >= 2:
    st.caption(f"The band leaves {tables.metric_text('share', gap['highest'])} of {gap['highest_group']}'s faces "
               f"undecided and {tables.metric_text('share', gap['lowest'])} of {gap['lowest_group']}'s: a gap of "
               f"{tables.metric_text('share', gap['gap'], delta=True, signed=False)} "
               f"[{tables.metric_text('share', gap['gap_lo'], delta=True, signed=False)}, "
               f"{tables.metric_text('share', gap['gap_hi'], delta=True, signed=False)}] among the "
               f"{gap['groups_judged']} groups with n ≥ {gap['min_count']} ({gap['reading']}).")
else:
    st.caption(f"Fewer than two groups have n ≥ {gap['min_count']}: no abstention gap to state.")
overall = what_if.by_group[(what_if.by_group["group"] == genderband.OVERALL)
                           & (what_if.by_group["setting"] == genderband.BANDED)]["abstained"]
st.plotly_chart(charts.abstention_bars(genderband.abstention(what_if), float(overall.iloc[0])), width="stretch")
st.caption(f"Settings: **{genderband.PLAIN}** called female at P ≥ {threshold:.2f}, every face decided; "
           f"**{genderband.BANDED}** the same on the faces outside [{band[0]:.2f}, {band[1]:.2f}] only; "
           f"**{genderband.LOWER_EDGE}** and **{genderband.UPPER_EDGE}** each edge used as the threshold. "
           "Rates with Wilson 95% intervals.")
st.dataframe(tables.styled(what_if.by_group, genderband.FORMATS), hide_index=True, placeholder=tables.MISSING)
st.download_button("What-if table (CSV)", tables.csv_download(what_if.by_group),
                   f"gender-threshold-{ckpt.name}-{source}-{grouping}.csv", "text/csv")

st.subheader("Error rates against the threshold, per group")
sweep = sweep_cached(str(ckpt.path), source, stamp, grouping, float(threshold), band)
st.plotly_chart(charts.threshold_rates(sweep, float(threshold)), width="stretch")
st.caption(f"Per group of {grouping}: women called men and men called women, each among the faces the band "
           "decides, and the share abstained (P(female) inside the Uncertain band), as the threshold moves from 0 to "
           f"1. The band moves with the threshold as the sliders move it: from {threshold - band[0]:.2f} below it to "
           f"{band[1] - threshold:.2f} above (shifted back inside [0, 1] at the ends). At the dotted line, the "
           f"threshold now: the **{genderband.BANDED}** rows of the table above.")
st.download_button("Rates against the threshold (CSV)", tables.csv_download(sweep),
                   f"gender-threshold-sweep-{ckpt.name}-{source}-{grouping}.csv", "text/csv")
