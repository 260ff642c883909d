"""Robustness: what happens to each group's predictions when the same faces are turned, blurred, shrunk,
re-compressed, darkened, greyed or covered (a sweep file of python -m agegender.sweep beside the checkpoint)."""

import streamlit as st

from dashboard import state

st.title("Robustness")

# heavy imports after the title, so the page shows while they load
import plotly.express as px

from agegender.evaluation import sources
from agegender.fairness import sensitivity, tables

ckpt = state.checkpoint_choice(state.selected_checkpoints())
c1, c2, c3, c4 = st.columns(4)
source = state.source_picker(c1, "rob_source")
path = sensitivity.sweep_path(ckpt.path, source)
# an own split's chips where the sidebar points, a registered set's as registered
where = sources.source(ckpt.path, source).data_location(st.session_state.get(state.DATASET) or "UTKFACE")
command = sensitivity.sweep_command(ckpt.path, source, *where)
if not path.is_file():
    st.info(f"No counterfactual sweep of {ckpt.name} on {sources.label(source)} yet. Make it (a few minutes on a "
            "CPU) with:")
    st.code(command, language="bash", wrap_lines=True)
    st.stop()
try:
    sweep = sensitivity.read_sweep(path, command)
except sensitivity.SweepError as e:
    st.error(str(e))
    st.stop()

names = list(sweep["perturbations"])
name = c2.selectbox("Perturbation", names, key="rob_perturbation")
perturbation = sweep["perturbations"][name]
groupings = list(dict.fromkeys(r["grouping"] for r in perturbation["by_group"]))
grouping = c3.selectbox("Grouping", groupings, key="rob_grouping")
metric = c4.selectbox("Change of", ["age", "p_female", "flip"], key="rob_metric",
                      format_func=sensitivity.METRIC_LABELS.get)
st.caption(f"{sweep.get('n_faces')} faces of {sources.label(source)}, each predicted as it is and at "
           f"{len(perturbation['strengths'])} strengths of each perturbation (strength 1: "
           f"{perturbation['parameter']} {perturbation['levels'][-1]:g}); test-time mirror "
           f"{'on' if sweep.get('tta') else 'off'}. Sensitivity: the change per unit of strength (about the change at "
           f"full strength), with a 95% bootstrap interval; a group is flagged when it differs from the median of the "
           f"other groups at q < {sensitivity.ALPHA:g} (Benjamini-Hochberg over every test of the file).")

curve = sensitivity.curves(perturbation, grouping, metric)
curve["group"] = curve["group"].where(~curve["flagged"], curve["group"] + " (flagged)")
fig = px.line(curve, x="strength", y="change", color="group", markers=True, hover_data=["n"],
              title=f"{name}: mean change of {sensitivity.METRIC_LABELS[metric]}, per {grouping}")
fig.for_each_trace(lambda t: t.update(line_width=4 if t.name.endswith("(flagged)") else 2))
fig.update_layout(xaxis_title="strength (0: the face as it is)", yaxis_title=sensitivity.METRIC_LABELS[metric])
st.plotly_chart(fig, width="stretch", key="rob_curves")

st.dataframe(sensitivity.rows_table(perturbation, grouping), hide_index=True, placeholder=tables.MISSING)

st.subheader("Flagged groups, every perturbation")
hits = sensitivity.flagged(sweep)
if hits.empty:
    st.info("No group's sensitivity differs from the other groups' beyond chance in this sweep.")
else:
    st.dataframe(hits, hide_index=True, placeholder=tables.MISSING)
st.caption(f"From `{path}`, written by: `{command}`")
