"""Plotly figures for the bias report, shared by the dashboard and the HTML export."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go

from .fairness import METRICS, GroupReport, group_names, parse_grouping

SMALL_COLOUR, COLOUR = "#b0b0b0", "#3b6fb6"


def _interval_bars(names: pd.Series, g: pd.DataFrame, value: str, lo: str, hi: str, **kw) -> go.Bar:
    """Bars of column ``value`` of a per-group table with [lo, hi] error bars; too small in grey."""
    return go.Bar(
        x=names, y=g[value],
        error_y={"type": "data", "symmetric": False, "array": g[hi] - g[value], "arrayminus": g[value] - g[lo]},
        marker_color=[SMALL_COLOUR if s else COLOUR for s in g["too_small"]], **kw)


def group_bars(report: GroupReport, metric: str) -> go.Figure:
    """One bar per group with its 95% interval; groups too small to judge in grey."""
    m = METRICS[metric]
    g = report.by_group
    fig = go.Figure(_interval_bars(
        report.group_names, g, metric, f"{metric}_lo", f"{metric}_hi",
        customdata=np.stack([g["n"], g[f"{metric}_lo"], g[f"{metric}_hi"]], axis=1),
        hovertemplate="%{x}<br>%{y:.3f} [%{customdata[1]:.3f}, %{customdata[2]:.3f}]<br>n=%{customdata[0]}"
                      "<extra></extra>",
    ))
    fig.add_hline(y=report.overall[metric], line_dash="dot", annotation_text="overall")
    fig.update_layout(title=f"{m.label} by {report.grouping.replace(':', ' × ')} (grey: n < {report.min_count})",
                      yaxis_title=m.label + (f" ({m.unit})" if m.unit else ""), margin={"t": 50, "b": 10})
    return fig


def delta_bars(groups: pd.DataFrame, metric: str, grouping: str, a: str, b: str) -> go.Figure:
    """Per group, b's figure minus a's with its paired 95% interval (agegender.compare.paired_deltas);
    groups too small to judge in grey."""
    names = group_names(groups, parse_grouping(grouping))
    fig = go.Figure(_interval_bars(names, groups, f"{metric}_delta", f"{metric}_delta_lo", f"{metric}_delta_hi"))
    fig.add_hline(y=0, line_color="black")
    fig.update_layout(title=f"{METRICS[metric].label}: {b} − {a} by {grouping} (grey: too small)")
    return fig


def intersection_heatmap(report: GroupReport, metric: str) -> go.Figure:
    """Two-column grouping as a grid, the value and count in each cell."""
    m = METRICS[metric]
    a, b = report.columns
    g = report.by_group
    values = g.pivot(index=a, columns=b, values=metric)
    counts = g.pivot(index=a, columns=b, values="n").reindex_like(values)
    if a == "age_bucket":
        order = [x for x in sorted(values.index, key=lambda s: int(s.split("-")[0].rstrip("+")))]
        values, counts = values.loc[order], counts.loc[order]
    text = [[("" if np.isnan(v) else f"{v:.2f}") + ("" if np.isnan(c) else f"<br>n={int(c)}")
             for v, c in zip(vr, cr, strict=True)] for vr, cr in zip(values.to_numpy(), counts.to_numpy(), strict=True)]
    scale = "RdYlGn" if m.higher_is_better else "RdYlGn_r"
    fig = go.Figure(go.Heatmap(z=values.to_numpy(), x=list(values.columns), y=list(values.index), text=text,
                               texttemplate="%{text}", colorscale=scale, colorbar={"title": m.label}))
    fig.update_layout(title=f"{m.label}: {a} × {b}", margin={"t": 50})
    return fig


def predicted_vs_true(df: pd.DataFrame, max_points: int = 5000) -> go.Figure:
    d = df.sample(max_points, random_state=0) if len(df) > max_points else df
    fig = px.scatter(d, x="age", y="pred_age", color="race", opacity=0.5, hover_data=["file"] if "file" in d else None,
                     labels={"age": "true age", "pred_age": "predicted age"})
    top = float(max(df["age"].max(), df["pred_age"].max()))
    fig.add_trace(go.Scatter(x=[0, top], y=[0, top], mode="lines", name="identity", line={"color": "black"}))
    fig.update_layout(title="Predicted against true age", margin={"t": 50})
    return fig


def residual_by_age(df: pd.DataFrame) -> go.Figure:
    d = df.assign(residual=df["pred_age"] - df["age"])
    stats = d.groupby("age")["residual"].agg(["mean", "count"]).reset_index()
    fig = px.scatter(d.sample(min(len(d), 5000), random_state=0), x="age", y="residual", opacity=0.25,
                     labels={"age": "true age", "residual": "predicted − true (years)"})
    fig.add_trace(go.Scatter(x=stats["age"], y=stats["mean"].rolling(5, center=True, min_periods=1).mean(),
                             mode="lines", name="mean (5-year window)", line={"color": "crimson"}))
    fig.add_hline(y=0, line_color="black")
    fig.update_layout(title="Residual by true age: above 0 is over-estimation", margin={"t": 50})
    return fig


def composition_vs_error(report: GroupReport, metric: str) -> go.Figure:
    """Each group's share of the data beside its error: representation versus difficulty."""
    g = report.by_group.assign(group=report.group_names, share=lambda t: t["n"] / t["n"].sum())
    m = METRICS[metric]
    fig = go.Figure()
    fig.add_trace(go.Bar(x=g["group"], y=g["share"], name="share of images", yaxis="y", marker_color="#9bb7d4"))
    fig.add_trace(go.Scatter(x=g["group"], y=g[metric], name=m.label, yaxis="y2", mode="markers+lines",
                             marker={"color": "crimson", "size": 9}))
    fig.update_layout(title=f"Composition and {m.label}", yaxis={"title": "share", "tickformat": ".0%"},
                      yaxis2={"title": m.label, "overlaying": "y", "side": "right"}, margin={"t": 50},
                      legend={"orientation": "h"})
    return fig


# The training page's panels: (title, y-axis format, the history.csv columns it plots and their split). The
# external check's (--external: a development check, report only) sits beside UTKFace validation where the
# metric is the same; its age-bin accuracy (FairFace gives age bins, not years) has a panel of its own, drawn
# only for a history that has it.
EXTERNAL_AGE_BIN = "external age-bin accuracy"
TRAINING_PANELS = (
    ("loss", "", {"train_loss": "train"}),
    ("age MAE (years)", "", {"train_age_mae": "train", "val_age_mae": "validation", "ext_age_mae": "external"}),
    ("gender accuracy", ".0%", {"train_gender_acc": "train", "val_gender_acc": "validation",
                                "ext_gender_acc": "external"}),
    (EXTERNAL_AGE_BIN, ".0%", {"ext_age_bin_acc": "external"}),
)
OPTIONAL_PANELS = (EXTERNAL_AGE_BIN,)
SPLIT_STYLE = {"train": {"color": COLOUR, "dash": "dot"}, "validation": {"color": "crimson", "dash": "solid"},
               "external": {"color": "#2a9d55", "dash": "dash"}}


def training_history(history: pd.DataFrame) -> pd.DataFrame:
    """history.csv (agegender.runstate.HISTORY_FIELDS, and EXTERNAL_FIELDS where the run had --external) in
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


def training_curves(history: pd.DataFrame, best_epoch: int | None = None) -> go.Figure:
    """Train loss beside train and validation age MAE and gender accuracy per epoch, side by side in one
    figure (so that they stay side by side on a narrow screen), the best epoch dotted on each; with the
    external check's curves where the history has them (and its age-bin accuracy in a fourth panel)."""
    from plotly.subplots import make_subplots

    long = training_history(history)
    panels = [p for p in TRAINING_PANELS if p[0] not in OPTIONAL_PANELS or (long["panel"] == p[0]).any()]
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[p[0] for p in panels])
    shown = set()
    for col, (panel, tickformat, _) in enumerate(panels, start=1):
        for split, part in long[long["panel"] == panel].groupby("split", sort=False):
            label = panel if panel.startswith(split) else f"{split} {panel}"
            fig.add_trace(go.Scatter(x=part["epoch"], y=part["value"], mode="lines+markers", name=split,
                                     legendgroup=split, showlegend=split not in shown, line=SPLIT_STYLE[split],
                                     hovertemplate=f"{label}<br>epoch %{{x}}: %{{y:.3~f}}<extra></extra>"),
                          row=1, col=col)
            shown.add(split)
        if tickformat:
            fig.update_yaxes(tickformat=tickformat, row=1, col=col)
        fig.update_xaxes(title_text="epoch", row=1, col=col)
        if best_epoch:
            fig.add_vline(x=best_epoch, line_dash="dot", line_color="grey", row=1, col=col)
    fig.update_layout(height=340, margin={"t": 40, "b": 10}, legend={"orientation": "h", "y": -0.25})
    return fig


# ---- the gender threshold page (agegender.genderband) -------------------------------------------------------

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
                                 hovertemplate=f"{name}<br>P(female) ≥ %{{customdata:.3f}}<br>"
                                               "men called female %{x:.1%}<br>women called female %{y:.1%}"
                                               "<extra></extra>"))
        if threshold is not None:
            at = curve[curve["threshold"] >= threshold].iloc[-1]
            fig.add_trace(go.Scatter(x=[at["fpr"]], y=[at["tpr"]], mode="markers", legendgroup=name,
                                     showlegend=False, marker={"color": colour, "size": 9},
                                     hovertemplate=f"{name} at {threshold:.2f}<extra></extra>"))
    fig.update_layout(title="ROC per group (positive: female)" + (f"; dots at {threshold:.2f}" if threshold else ""),
                      xaxis={"title": "men called female (false-positive rate)", "tickformat": ".0%"},
                      yaxis={"title": "women called female (true-positive rate)", "tickformat": ".0%"},
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
            hovertemplate=f"{name}<br>mean P(female) %{{x:.3f}}<br>women %{{y:.1%}}<br>n=%{{customdata}}"
                          "<extra></extra>"))
    fig.update_layout(title="Reliability of P(female) per group", margin={"t": 50},
                      xaxis={"title": "mean predicted P(female)", "range": [0, 1]},
                      yaxis={"title": "observed share of women", "tickformat": ".0%", "range": [0, 1]})
    return fig


def abstention_bars(groups: pd.DataFrame, overall: float | None = None) -> go.Figure:
    """The share of each group's faces the Uncertain band does not decide, with its Wilson interval
    (genderband.abstention); groups too small to judge in grey."""
    fig = go.Figure(_interval_bars(groups["group"], groups, "abstained", "abstained_lo", "abstained_hi",
                                   customdata=groups["n"],
                                   hovertemplate="%{x}<br>%{y:.1%} abstained<br>n=%{customdata}<extra></extra>"))
    if overall is not None and np.isfinite(overall):
        fig.add_hline(y=overall, line_dash="dot", annotation_text="overall")
    fig.update_layout(title="Share of faces read as Uncertain (grey: too small to judge)",
                      yaxis={"title": "abstained", "tickformat": ".0%"}, margin={"t": 50, "b": 10})
    return fig
