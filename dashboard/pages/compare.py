"""Compare checkpoints: overall and per-group deltas on the same images, agreement, and one photo
through each checkpoint with the Grad-CAMs side by side."""

import streamlit as st

from dashboard import caches, faceview, state

st.title("Compare checkpoints")

# heavy imports after the title, so the page shows while they load
import plotly.express as px

from agegender.fairness import tables
from agegender.fairness.compare import TRAINING_NOISE, agreement, gaps, pair, paired_deltas
from agegender.fairness.groups import METRICS, MIN_COUNT, groupings_for
from agegender.report import charts

ckpts = state.selected_checkpoints()
if len(ckpts) < 2:
    st.info("Pick two or more checkpoints in the sidebar to compare them.")
    state.offer_pair(st)
    st.stop()


# below the pair's block at the top, which is another change's to edit
from agegender.fairness.compare import BETTER, NO_FIGURE, NOISE, WORSE, verdict

# a change is coloured only when its paired 95% interval leaves out 0 (agegender.fairness.compare.verdict)
COLOURS = {BETTER: "green", WORSE: "red", NOISE: "gray", NO_FIGURE: "gray"}


def card_metrics(exact: bool) -> tuple[str, ...]:
    """The five headline deltas: age in years where ages are exact, in bins where only bins are known."""
    age = ("age_mae", "age_bias") if exact else ("age_bin_accuracy", "age_bin_error")
    return (*age, "gender_accuracy", "female_as_male", "male_as_female")


@st.cache_data(max_entries=16, show_spinner="Paired bootstrap…")
def deltas_cached(a: str, b: str, source: str, stamps: tuple, grouping: str):
    m = pair(caches.predictions_cached(a, source, stamps[0]), caches.predictions_cached(b, source, stamps[1]))
    metrics = card_metrics(m["age"].notna().any())
    return m, paired_deltas(m, None, metrics), paired_deltas(m, grouping, metrics), gaps(m, grouping)


c1, c2, c3 = st.columns(3)
source = state.source_picker(c1, "cmp_split")
base_name = c2.selectbox("Baseline", [c.name for c in ckpts], key="cmp_base")
base = next(c for c in ckpts if c.name == base_name)
frames = [caches.predictions(c, source) for c in ckpts]
if any(f is None for f in frames):
    st.stop()
grouping = c3.selectbox("Grouping", groupings_for(frames[0]), key="cmp_grouping",
                        format_func=lambda g: g.replace(":", " × "))
exact = frames[0]["age"].notna().any()

for other in [c for c in ckpts if c is not base]:
    st.header(f"{other.name} against {base.name}")
    stamps = (caches.predictions_stamp(base.path, source), caches.predictions_stamp(other.path, source))
    try:
        m, overall, groups, gap_tables = deltas_cached(str(base.path), str(other.path), source, stamps, grouping)
    except ValueError as e:
        st.error(str(e))
        continue
    o = overall.iloc[0]
    st.caption(f"{int(o['n'])} images scored by both; deltas are {other.name} − {base.name} "
               f"with paired bootstrap 95% intervals. {TRAINING_NOISE}")
    cols = st.columns(5)
    for col, name in zip(cols, card_metrics(exact), strict=True):
        delta, lo, hi = (o[f"{name}_delta{end}"] for end in ("", "_lo", "_hi"))
        said = verdict(delta, lo, hi, METRICS[name].higher_is_better, o[f"{name}_a"])
        col.metric(METRICS[name].label, tables.metric_text(name, o[name + '_b']),
                   tables.metric_text(name, delta, delta=True), delta_color=COLOURS[said],
                   delta_description=f"95% {tables.interval_text(name, lo, hi, delta=True)}: {said}",
                   help=f"{base.name}: {tables.metric_text(name, o[name + '_a'])}; delta interval "
                        + tables.interval_text(name, lo, hi, delta=True))
    for std, table in gap_tables.items():
        mix = " with each group given the overall age mix" if std else ""
        if isinstance(table, str):
            if not std:
                st.caption(f"No best-to-worst gap to compare: {table}.")
            continue
        cols = st.columns(len(table))
        for col, (_, r) in zip(cols, table.iterrows(), strict=True):
            gap_a, gap_b = (tables.metric_text(r["metric"], r[k], delta=True, signed=False) for k in ("gap_a", "gap_b"))
            gap_in = {s: tables.interval_text(r["metric"], r[f"gap_lo_{s}"], r[f"gap_hi_{s}"], delta=True)
                      for s in ("a", "b")}
            said = verdict(r["change"], r["change_lo"], r["change_hi"], False)  # a smaller gap is better
            interval = f"[{r['change_lo']:+.0%}, {r['change_hi']:+.0%}]"
            col.metric(f"Gap in {r['label']} between {grouping.replace(':', ' × ')} groups{mix}",
                       gap_b, f"{r['change']:+.0%}", delta_color=COLOURS[said],
                       delta_description=f"95% {interval}: {said}",
                       help=f"best against worst group of at least {MIN_COUNT} images; {other.name}: {gap_b} "
                            f"{gap_in['b']} (q = {r['q_b']:.2g}), {base.name}: {gap_a} {gap_in['a']} (q = "
                            f"{r['q_a']:.2g}): gap intervals hold every group at once, q tests that all groups are "
                            f"equal; change interval {interval} (paired bootstrap)"
                            + ("; age-standardised: a group's figure is its per-age-bucket figures weighted by "
                               "the overall age-bucket mix, so older groups are not judged worse for age alone"
                               if std else ""))
    metric = st.selectbox("Per-group delta of", [card_metrics(exact)[0], "gender_accuracy", card_metrics(exact)[1]],
                          key=f"cmp_m_{other.name}", format_func=lambda k: METRICS[k].label)
    st.plotly_chart(charts.delta_bars(groups, metric, grouping, base.name, other.name), width="stretch")
    st.dataframe(tables.styled(groups), hide_index=True, placeholder=tables.MISSING)
    agree = agreement(m, grouping)
    left, right = st.columns(2)
    left.metric("Gender labels disagree on",
                f"{tables.metric_text('gender_disagreement', agree['gender_disagreement'])} of images")
    left.dataframe(tables.styled(agree["by_group"]), hide_index=True, placeholder=tables.MISSING)
    right.plotly_chart(px.histogram(x=agree["age_diff"], nbins=60, title="Predicted age difference (years)",
                                    labels={"x": f"{other.name} − {base.name}"}), width="stretch")

st.header("One photo through each checkpoint")
up = st.file_uploader("Photo", type=["jpg", "jpeg", "png", "webp", "bmp"], key="cmp_upload")
if up is not None:
    # the predict page's CAM options; a photo with no face found is taken whole (and the view says so)
    data, opt = up.getvalue(), state.kept_options(whole_if_no_face=True)
    results = {c.name: caches.analyse(data, up.name, c.path, opt.cropped, opt.whole_if_no_face, opt.min_confidence)
               for c in ckpts}
    first = results[ckpts[0].name]
    if first.error:
        st.error(first.error)
    else:
        key = faceview.result_key(data, opt)
        for i in range(sum(f.predicted for f in first.faces)):
            st.markdown(f"#### Face {i + 1}")
            for c in ckpts:
                faceview.face_view(c, results[c.name], i, key, opt)
