"""Plotly figures for the bias report, shared by the dashboard and the HTML export.

Every axis, colour bar and hover writes a figure the way fairness.tables writes it in a table (axis_of): shares
and rates in percent, a difference of rates in percentage points, years and bins with at most one decimal,
scores (AUC, P(female)) as 0.xx, counts whole; plotly places the ticks, so they are round numbers."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go

from ..fairness import tables
from ..fairness.groups import GroupReport, group_names, parse_grouping
from ..fairness.measures import METRICS

SMALL_COLOUR, COLOUR = "#b0b0b0", "#3b6fb6"


@dataclass(frozen=True)
class Axis:
    """How one kind of figure reads in a chart: d3 formats for the axis ticks and for a hover."""

    ticks: str
    hover: str
    suffix: str = ""  # after the number: on the axis (ticksuffix) and in a hover
    scale: float = 1.0  # plotted values are the figures times this (100 for percentage points)
    tick_suffix: str = ""  # after each tick, where the axis title cannot carry the unit (pp)

    def text(self, ref: str) -> str:
        """A hovertemplate's figure, e.g. text("y") == "%{y:.1%}"."""
        return f"%{{{ref}:{self.hover}}}{self.suffix}"


PERCENT = Axis(".1~%", ".1%")
YEARS = Axis(".1~f", ".1f", " y")
SCORE = Axis(".2~f", ".3f")
COUNT = Axis(",.0f", ",.0f")
PLAIN = Axis("", ".3~g")
# By agegender.fairness.tables' kind; a difference (``delta``) is signed, a difference of rates in percentage points.
AXES = {tables.PERCENT.name: PERCENT, tables.YEARS.name: YEARS, tables.SCORE.name: SCORE,
        tables.COUNT.name: COUNT, tables.BINS.name: Axis(".1~f", ".2f", " bins")}
P_FEMALE = SCORE  # a threshold or a mean P(female): as on the page's slider


def axis_of(name: str, delta: bool = False) -> Axis:
    """How a metric or known column (agegender.fairness.tables.kind_of) reads in a chart; unknown names plainly."""
    kind = tables.kind_of(name)
    axis = AXES.get(kind.name, PLAIN) if kind is not None else PLAIN
    if not delta:
        return axis
    if axis is PERCENT:
        return Axis("+.1~f", "+.1f", " pp", 100.0, " pp")
    return Axis("+" + axis.ticks if axis.ticks else "+.3~g", "+" + axis.hover, axis.suffix, axis.scale)


def _axis_layout(axis: Axis) -> dict:
    """The layout keys of an axis (yaxis=..., colorbar=...) that write its ticks like the tables."""
    return {"tickformat": axis.ticks, "ticksuffix": axis.tick_suffix}


def _interval_bars(names: pd.Series, g: pd.DataFrame, value: str, lo: str, hi: str, axis: Axis = PLAIN,
                   **kw) -> go.Bar:
    """Bars of column ``value`` of a per-group table with [lo, hi] error bars (all times axis.scale) and a hover
    with the interval and n; too small in grey."""
    v, low, high = (g[c].to_numpy(np.float64) * axis.scale for c in (value, lo, hi))
    return go.Bar(
        x=names, y=v, error_y={"type": "data", "symmetric": False, "array": high - v, "arrayminus": v - low},
        customdata=np.stack([g["n"].to_numpy(np.float64), low, high], axis=1),
        hovertemplate=f"%{{x}}<br>{axis.text('y')} [{axis.text('customdata[1]')}, {axis.text('customdata[2]')}]"
                      "<br>n=%{customdata[0]:,.0f}<extra></extra>",
        marker_color=[SMALL_COLOUR if s else COLOUR for s in g["too_small"]], **kw)


def group_bars(report: GroupReport, metric: str) -> go.Figure:
    """One bar per group with its 95% interval; groups too small to judge in grey."""
    m, axis = METRICS[metric], axis_of(metric)
    fig = go.Figure(_interval_bars(report.group_names, report.by_group, metric, f"{metric}_lo", f"{metric}_hi", axis))
    fig.add_hline(y=report.overall[metric], line_dash="dot", annotation_text="overall")
    fig.update_layout(title=f"{m.label} by {report.grouping.replace(':', ' × ')} (grey: n < {report.min_count})",
                      yaxis={"title": m.label + (f" ({m.unit})" if m.unit else ""), **_axis_layout(axis)},
                      margin={"t": 50, "b": 10})
    return fig


def delta_bars(groups: pd.DataFrame, metric: str, grouping: str, a: str, b: str) -> go.Figure:
    """Per group, b's figure minus a's with its paired 95% interval (agegender.fairness.compare.paired_deltas);
    groups too small to judge in grey. A difference of rates is drawn in percentage points."""
    names = group_names(groups, parse_grouping(grouping))
    axis = axis_of(metric, delta=True)
    fig = go.Figure(_interval_bars(names, groups, f"{metric}_delta", f"{metric}_delta_lo", f"{metric}_delta_hi",
                                   axis))
    fig.add_hline(y=0, line_color="black")
    m = METRICS[metric]
    unit = "pp" if axis.scale != 1 else m.unit
    fig.update_layout(title=f"{m.label}: {b} − {a} by {grouping} (grey: too small)",
                      yaxis={"title": f"{b} − {a}" + (f" ({unit})" if unit else ""), **_axis_layout(axis)})
    return fig


def intersection_heatmap(report: GroupReport, metric: str) -> go.Figure:
    """Two-column grouping as a grid, the value (written as the tables write it) and count in each cell."""
    m, axis = METRICS[metric], axis_of(metric)
    a, b = report.columns
    g = report.by_group
    values = g.pivot(index=a, columns=b, values=metric)
    counts = g.pivot(index=a, columns=b, values="n").reindex_like(values)
    if a == "age_bucket":
        order = [x for x in sorted(values.index, key=lambda s: int(s.split("-")[0].rstrip("+")))]
        values, counts = values.loc[order], counts.loc[order]
    text = [[("" if np.isnan(v) else tables.metric_text(metric, v)) + ("" if np.isnan(c) else f"<br>n={int(c):,}")
             for v, c in zip(vr, cr, strict=True)] for vr, cr in zip(values.to_numpy(), counts.to_numpy(), strict=True)]
    scale = "RdYlGn" if m.higher_is_better else "RdYlGn_r"
    fig = go.Figure(go.Heatmap(z=values.to_numpy(), x=list(values.columns), y=list(values.index), text=text,
                               texttemplate="%{text}", colorscale=scale,
                               hovertemplate=f"%{{y}} × %{{x}}<br>{m.label} %{{text}}<extra></extra>",
                               colorbar={"title": m.label, **_axis_layout(axis)}))
    fig.update_layout(title=f"{m.label}: {a} × {b}", margin={"t": 50})
    return fig


def predicted_vs_true(df: pd.DataFrame, max_points: int = 5000) -> go.Figure:
    d = df.sample(max_points, random_state=0) if len(df) > max_points else df
    fig = px.scatter(d, x="age", y="pred_age", color="race", opacity=0.5, hover_data=["file"] if "file" in d else None,
                     labels={"age": "true age", "pred_age": "predicted age"})
    who = "%{customdata[0]}<br>" if "file" in d else ""
    fig.update_traces(hovertemplate=f"{who}true age {YEARS.text('x')}<br>predicted {YEARS.text('y')}")
    top = float(max(df["age"].max(), df["pred_age"].max()))
    fig.add_trace(go.Scatter(x=[0, top], y=[0, top], mode="lines", name="identity", line={"color": "black"},
                             hoverinfo="skip"))
    fig.update_layout(title="Predicted against true age", margin={"t": 50},
                      xaxis=_axis_layout(YEARS), yaxis=_axis_layout(YEARS))
    return fig


def residual_by_age(df: pd.DataFrame) -> go.Figure:
    d = df.assign(residual=df["pred_age"] - df["age"])
    stats = d.groupby("age")["residual"].agg(["mean", "count"]).reset_index()
    signed = axis_of("age", delta=True)
    fig = px.scatter(d.sample(min(len(d), 5000), random_state=0), x="age", y="residual", opacity=0.25,
                     labels={"age": "true age", "residual": "predicted − true (years)"})
    fig.update_traces(hovertemplate=f"true age {YEARS.text('x')}<br>predicted − true {signed.text('y')}"
                                    "<extra></extra>")
    fig.add_trace(go.Scatter(x=stats["age"], y=stats["mean"].rolling(5, center=True, min_periods=1).mean(),
                             mode="lines", name="mean (5-year window)", line={"color": "crimson"},
                             hovertemplate=f"true age {YEARS.text('x')}<br>mean {signed.text('y')}<extra></extra>"))
    fig.add_hline(y=0, line_color="black")
    fig.update_layout(title="Residual by true age: above 0 is over-estimation", margin={"t": 50},
                      xaxis=_axis_layout(YEARS), yaxis=_axis_layout(signed))
    return fig


def composition_vs_error(report: GroupReport, metric: str) -> go.Figure:
    """Each group's share of the data beside its error: representation versus difficulty."""
    g = report.by_group.assign(group=report.group_names, share=lambda t: t["n"] / t["n"].sum())
    m, axis = METRICS[metric], axis_of(metric)
    fig = go.Figure()
    fig.add_trace(go.Bar(x=g["group"], y=g["share"], name="share of images", yaxis="y", marker_color="#9bb7d4",
                         customdata=g["n"], hovertemplate=f"%{{x}}<br>{PERCENT.text('y')} of images "
                                                          "(n=%{customdata:,.0f})<extra></extra>"))
    fig.add_trace(go.Scatter(x=g["group"], y=g[metric], name=m.label, yaxis="y2", mode="markers+lines",
                             marker={"color": "crimson", "size": 9},
                             hovertemplate=f"%{{x}}<br>{m.label} {axis.text('y')}<extra></extra>"))
    fig.update_layout(title=f"Composition and {m.label}", yaxis={"title": "share", **_axis_layout(PERCENT)},
                      # an overlaying axis takes the other's gridlines by default (ticks at 88.7%, 89.6%...):
                      # ticks of its own, at round numbers
                      yaxis2={"title": m.label, "overlaying": "y", "side": "right", "tickmode": "auto",
                              "showgrid": False, **_axis_layout(axis)},
                      margin={"t": 50}, legend={"orientation": "h"})
    return fig


# The training page's panels: (title, the metric whose axis_of it takes, the history.csv columns it plots and
# their split). The
# external check's (--external: a development check, report only) sits beside UTKFace validation where the
# metric is the same; its age-bin accuracy (FairFace gives age bins, not years) has a panel of its own, drawn
# only for a history that has it.
EXTERNAL_AGE_BIN = "external age-bin accuracy"
TRAINING_PANELS = (
    ("loss", "loss", {"train_loss": "train"}),
    ("age MAE (years)", "age_mae", {"train_age_mae": "train", "val_age_mae": "validation",
                                    "ext_age_mae": "external"}),
    ("gender accuracy", "gender_accuracy", {"train_gender_acc": "train", "val_gender_acc": "validation",
                                            "ext_gender_acc": "external"}),
    (EXTERNAL_AGE_BIN, "age_bin_accuracy", {"ext_age_bin_acc": "external"}),
)
OPTIONAL_PANELS = (EXTERNAL_AGE_BIN,)
SPLIT_STYLE = {"train": {"color": COLOUR, "dash": "dot"}, "validation": {"color": "crimson", "dash": "solid"},
               "external": {"color": "#2a9d55", "dash": "dash"}}


def training_history(history: pd.DataFrame) -> pd.DataFrame:
    """history.csv (agegender.train.runstate.HISTORY_FIELDS, and EXTERNAL_FIELDS where the run had --external) in
    long form: one row per epoch, panel and split (train, validation or external) with its value, for the
    columns TRAINING_PANELS plots. A column missing (an older history, a run without --external) or a value
    that is not a number (an epoch the external check skipped) is left out, not an error."""
    rows = []
    epochs = pd.to_numeric(history["epoch"], errors="coerce") if "epoch" in history else pd.Series(dtype=float)
    for panel, _, columns in TRAINING_PANELS:
        for column, split in columns.items():
            if column not in history:
                continue
            part = pd.DataFrame({"epoch": epochs, "panel": panel, "split": split,
                                 "value": pd.to_numeric(history[column], errors="coerce")})
            rows.append(part.dropna(subset=["epoch", "value"]))
    if not rows:
        return pd.DataFrame(columns=["epoch", "panel", "split", "value"])
    return pd.concat(rows, ignore_index=True)


def _epoch_step(epochs: pd.Series) -> int:
    """Whole epochs between ticks, about ten ticks at most: no tick at half an epoch."""
    most = float(epochs.max()) if len(epochs) else 1.0
    return next(step for step in (1, 2, 5, 10, 20, 50, 100, 200, 500, 10**9) if most / step <= 10)


def training_curves(history: pd.DataFrame, best_epoch: int | None = None) -> go.Figure:
    """Train loss beside train and validation age MAE and gender accuracy per epoch, side by side in one
    figure (so that they stay side by side on a narrow screen), the best epoch dotted on each; with the
    external check's curves where the history has them (and its age-bin accuracy in a fourth panel)."""
    from plotly.subplots import make_subplots

    long = training_history(history)
    panels = [p for p in TRAINING_PANELS if p[0] not in OPTIONAL_PANELS or (long["panel"] == p[0]).any()]
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[p[0] for p in panels])
    shown = set()
    for col, (panel, metric, _) in enumerate(panels, start=1):
        axis = axis_of(metric)
        for split, part in long[long["panel"] == panel].groupby("split", sort=False):
            label = panel if panel.startswith(split) else f"{split} {panel}"
            fig.add_trace(go.Scatter(x=part["epoch"], y=part["value"], mode="lines+markers", name=split,
                                     legendgroup=split, showlegend=split not in shown, line=SPLIT_STYLE[split],
                                     hovertemplate=f"{label}<br>epoch %{{x}}: {axis.text('y')}<extra></extra>"),
                          row=1, col=col)
            shown.add(split)
        fig.update_yaxes(**_axis_layout(axis), row=1, col=col)
        fig.update_xaxes(title_text="epoch", dtick=_epoch_step(long["epoch"]), row=1, col=col)
        if best_epoch:
            fig.add_vline(x=best_epoch, line_dash="dot", line_color="grey", row=1, col=col)
    fig.update_layout(height=340, margin={"t": 40, "b": 10}, legend={"orientation": "h", "y": -0.25})
    return fig


# ---- the gender threshold page (agegender.fairness.genderband) -------------------------------------------------------

def _thin(curve: pd.DataFrame, max_points: int) -> pd.DataFrame:
    """At most about max_points rows of a curve, its first and last kept: a 200,000-face ROC stays light."""
    if len(curve) <= max_points:
        return curve
    keep = np.unique(np.linspace(0, len(curve) - 1, max_points).round().astype(int))
    return curve.iloc[keep]


def roc_curves(curves: pd.DataFrame, by_group: pd.DataFrame, threshold: float | None = None,
               max_points: int = 400) -> go.Figure:
    """One ROC line per group (genderband.Roc: women are the positive class), AUC in the legend, the chance
    diagonal dotted; with ``threshold``, each group's operating point there as a marker."""
    auc = dict(zip(by_group["group"], by_group["gender_auc"], strict=True))
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="chance", line={"color": "grey", "dash": "dot"}))
    for i, (name, curve) in enumerate(curves.groupby("group", sort=False)):
        colour = px.colors.qualitative.Plotly[i % len(px.colors.qualitative.Plotly)]
        c = _thin(curve, max_points)
        fig.add_trace(go.Scatter(x=c["fpr"], y=c["tpr"], mode="lines", name=f"{name} (AUC {auc[name]:.3f})",
                                 legendgroup=name, line={"color": colour}, customdata=c["threshold"],
                                 hovertemplate=f"{name}<br>P(female) ≥ {P_FEMALE.text('customdata')}<br>"
                                               f"men called female {PERCENT.text('x')}<br>women called female "
                                               f"{PERCENT.text('y')}<extra></extra>"))
        if threshold is not None:
            at = curve[curve["threshold"] >= threshold].iloc[-1]
            fig.add_trace(go.Scatter(x=[at["fpr"]], y=[at["tpr"]], mode="markers", legendgroup=name,
                                     showlegend=False, marker={"color": colour, "size": 9},
                                     hovertemplate=f"{name} at P(female) ≥ {threshold:.2f}<br>men called female "
                                                   f"{PERCENT.text('x')}<br>women called female "
                                                   f"{PERCENT.text('y')}<extra></extra>"))
    fig.update_layout(title="ROC per group (positive: female)" + (f"; dots at {threshold:.2f}" if threshold else ""),
                      xaxis={"title": "men called female (false-positive rate)", **_axis_layout(PERCENT)},
                      yaxis={"title": "women called female (true-positive rate)", **_axis_layout(PERCENT)},
                      margin={"t": 50})
    return fig


def reliability_diagram(bins: pd.DataFrame) -> go.Figure:
    """Mean P(female) against the observed share of women per bin, one line per group with Wilson error bars
    (genderband.Reliability.bins); on the diagonal is calibrated, below it over-confident for female."""
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="calibrated", line={"color": "grey",
                                                                                         "dash": "dot"}))
    for name, b in bins.groupby("group", sort=False):
        fig.add_trace(go.Scatter(
            x=b["p_female"], y=b["share_female"], mode="lines+markers", name=str(name), customdata=b["n"],
            error_y={"type": "data", "symmetric": False, "array": b["share_female_hi"] - b["share_female"],
                     "arrayminus": b["share_female"] - b["share_female_lo"], "thickness": 1},
            hovertemplate=f"{name}<br>mean P(female) {P_FEMALE.text('x')}<br>women {PERCENT.text('y')}"
                          "<br>n=%{customdata:,.0f}<extra></extra>"))
    fig.update_layout(title="Reliability of P(female) per group", margin={"t": 50},
                      xaxis={"title": "mean predicted P(female)", "range": [0, 1], **_axis_layout(P_FEMALE)},
                      yaxis={"title": "observed share of women", "range": [0, 1], **_axis_layout(PERCENT)})
    return fig


def abstention_bars(groups: pd.DataFrame, overall: float | None = None) -> go.Figure:
    """The share of each group's faces the Uncertain band does not decide, with its Wilson interval
    (genderband.abstention); groups too small to judge in grey."""
    fig = go.Figure(_interval_bars(groups["group"], groups, "abstained", "abstained_lo", "abstained_hi", PERCENT))
    if overall is not None and np.isfinite(overall):
        fig.add_hline(y=overall, line_dash="dot", annotation_text="overall")
    fig.update_layout(title="Share of faces read as Uncertain (grey: too small to judge)",
                      yaxis={"title": "abstained", **_axis_layout(PERCENT)}, margin={"t": 50, "b": 10})
    return fig


# threshold_sweep's rates as the chart names them, in its order (agegender.fairness.genderband.SWEEP_RATES)
SWEEP_NAMES = {"female_as_male": "women called men", "male_as_female": "men called women",
               "abstained": "abstained (inside the band)"}
SWEEP_COLOURS = {"female_as_male": "crimson", "male_as_female": COLOUR, "abstained": "#7f7f7f"}


def threshold_rates(sweep: pd.DataFrame, threshold: float, columns: int = 3) -> go.Figure:
    """Per group (one panel each, overall first), women called men, men called women and the share abstained
    against the threshold (agegender.fairness.genderband.threshold_sweep), each rate in its own colour, the current
    threshold dotted with a marker on each line."""
    from plotly.subplots import make_subplots

    groups = list(dict.fromkeys(sweep["group"]))
    rows = -(-len(groups) // columns)
    n = sweep.groupby("group", sort=False)["n"].first()
    fig = make_subplots(rows=rows, cols=min(columns, len(groups)), shared_xaxes=True, shared_yaxes=True,
                        subplot_titles=[f"{g} (n={n[g]:,})" for g in groups], vertical_spacing=0.25 / rows)
    for i, group in enumerate(groups):
        row, col = divmod(i, columns)
        part = sweep[sweep["group"] == group]
        here = part.iloc[[int(np.argmin(np.abs(part["threshold"].to_numpy() - threshold)))]]
        for rate, name in SWEEP_NAMES.items():
            style = {"legendgroup": rate, "name": name, "line": {"color": SWEEP_COLOURS[rate]}}
            hover = f"{group}<br>P(female) ≥ {P_FEMALE.text('x')}<br>{name} {PERCENT.text('y')}<extra></extra>"
            fig.add_trace(go.Scatter(x=part["threshold"], y=part[rate], mode="lines", showlegend=i == 0,
                                     hovertemplate=hover, **style), row=row + 1, col=col + 1)
            fig.add_trace(go.Scatter(x=here["threshold"], y=here[rate], mode="markers", showlegend=False,
                                     marker={"color": SWEEP_COLOURS[rate], "size": 8}, hovertemplate=hover,
                                     **{k: v for k, v in style.items() if k != "line"}), row=row + 1, col=col + 1)
    fig.add_vline(x=threshold, line_dash="dot", line_color="grey")
    fig.update_xaxes(range=[0, 1], **_axis_layout(P_FEMALE))
    fig.update_xaxes(title_text="called female at P(female) ≥", row=rows)
    fig.update_yaxes(range=[0, 1], **_axis_layout(PERCENT))
    fig.update_layout(title=f"Error rates and abstention against the threshold (now {threshold:.2f})",
                      height=120 + 240 * rows, margin={"t": 80, "b": 10}, legend={"orientation": "h", "y": -0.15})
    return fig
