"""The embedding map page's logic: what a face's dot is coloured by, the figure, what a box or lasso selection
picked, and the selection's figures against the rest of the source.

The map's table is an embeddings frame (agegender.evaluation.embed.source_embeddings: one row per face, ``x``,
``y`` and the predictions' columns), prepared (fairness.groups.prepare) once and never mutated. Each dot carries its
row number as plotly ``customdata``, so a selection event names rows whatever traces the colouring split the
dots into. The selection's figures come from the statistics core: per side the metrics with their bootstrap
intervals (fairness.groups.GroupReport, the selection as a two-valued grouping), and the gap of the headline age
metric and the gender error against the rest with the worst-slice test's interval and one-sided p-value
(fairness.slices.find_slices on that column: Welch's, or Newcombe's for rates). Imports no torch.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence

import numpy as np
import pandas as pd

from ..fairness.groups import MIN_COUNT, GroupReport, grouping_columns, headline_age_metric, value_order
from ..fairness.measures import METRICS
from ..fairness.slices import MIN_FLOOR, find_slices
from ..labels import called_female, image_key
from ..predictions import metric_columns
from .audit import suspects
from .verdicts import label_keys

ABS_AGE_ERROR = "absolute age error"
MISGENDERED = "misgendered"
SUSPECT = "label-audit suspect"
LOOK_ALIKE = "look-alike of a training face"
AGE_DIFFERENCE = "|age difference| from {other}"
GENDER_DIFFERS = "gender call differs from {other}"
MEASURED = ("brightness", "sharpness", "face_px", "yaw")  # continuous measures a frame may carry
UNKNOWN = "(unknown)"  # a categorical colour's missing value, drawn grey
SELECTION = "map_selection"  # the two-valued grouping of a selection's figures
SELECTED, REST = "selected", "rest"
# the worst-slice test's metric behind each figure's gap, and the sign that turns its loss into the figure
GAP_OF = {"age_mae": ("age_mae", 1.0), "age_bin_accuracy": ("age_bin_error_rate", -1.0),
          "gender_accuracy": ("gender_error_rate", -1.0)}
CAM_FACES = 32  # faces whose Grad-CAMs a selection's mean map averages at most: a second or two each on a CPU
THUMB_PX = 48
SHOWN_ROWS = 200  # selected faces listed with a thumbnail at most (the CSV holds them all)
TABLE_COLUMNS = ("file", "age", "age_bin", "gender", "pred_age", "p_female")
MARKER = {"size": 4, "opacity": 0.7}
# an embeddings frame's own columns: every column the predictions contract does not know is a group column to it,
# and these are not (grayscale is, two-valued)
NOT_GROUPS = ("x", "y", "features", "brightness", SELECTION)

ERR_UNKNOWN_COLOUR = "unknown colour {name!r}: the map can be coloured by {known}"


def map_groups(table: pd.DataFrame) -> list[str]:
    """The group columns of a map's table (fairness.groups.grouping_columns less the embeddings frame's own)."""
    return [c for c in grouping_columns(table) if c not in NOT_GROUPS]


def colour_options(table: pd.DataFrame, audit: pd.DataFrame | None = None, leak: dict | None = None,
                   other: str | None = None) -> list[str]:
    """What the map can be coloured by: the group columns (the dataset's, gender, age bucket, pose and face size
    of photos), the errors, the label audit's suspects and the look-alikes when given, the measured properties
    the frame carries, and a second checkpoint's disagreement when ``other`` names one."""
    out = [*map_groups(table), ABS_AGE_ERROR, MISGENDERED]
    out += [SUSPECT] if audit is not None else []
    out += [LOOK_ALIKE] if leak is not None else []
    out += [m for m in MEASURED if m in table and pd.to_numeric(table[m], errors="coerce").notna().any()]
    out += [AGE_DIFFERENCE.format(other=other), GENDER_DIFFERS.format(other=other)] if other else []
    return out


def _abs_age_error(table: pd.DataFrame) -> pd.Series:
    c = metric_columns(table)
    err = np.abs(c["err"]) if np.isfinite(c["err"]).any() else np.abs(c["bin_err"])  # years, else bins off
    return pd.Series(err, index=table.index, name=ABS_AGE_ERROR)


def _yes_no(mask: np.ndarray, index, yes: str, no: str) -> pd.Series:
    return pd.Series(np.where(mask, yes, no), index=index, dtype=object)


def _other_side(table: pd.DataFrame, other: pd.DataFrame, column: str) -> np.ndarray:
    by_file = other.drop_duplicates("file").set_index("file")[column]
    return pd.to_numeric(table["file"].map(by_file), errors="coerce").to_numpy(np.float64)


def colour_values(table: pd.DataFrame, name: str, audit: pd.DataFrame | None = None, leak: dict | None = None,
                  other: tuple[str, pd.DataFrame] | None = None) -> tuple[pd.Series, bool]:
    """(a value per row of ``table``, whether it is continuous) for colour option ``name`` (colour_options).
    ``other``: (the second checkpoint's name, its predictions of the same source); faces it did not score have no
    value. ValueError (ERR_UNKNOWN_COLOUR) for a name the table does not offer."""
    known = colour_options(table, audit, leak, other[0] if other else None)
    if name not in known:
        raise ValueError(ERR_UNKNOWN_COLOUR.format(name=name, known=", ".join(known)))
    idx = table.index
    if name == ABS_AGE_ERROR:
        return _abs_age_error(table), True
    if name == MISGENDERED:
        correct = metric_columns(table)["correct"]
        return _yes_no(~correct, idx, "misgendered", "correct"), False
    if name == SUSPECT:
        flagged = set(label_keys(audit)[suspects(audit)])
        return _yes_no(label_keys(table).isin(flagged).to_numpy(), idx, "suspect", "not suspect"), False
    if name == LOOK_ALIKE:
        from ..lookalikes import flagged as leak_flagged

        kinds = leak_flagged(leak)
        return table["file"].map(lambda f: kinds.get(image_key(f), "none")).astype(object), False
    if other and name == AGE_DIFFERENCE.format(other=other[0]):
        diff = np.abs(pd.to_numeric(table["pred_age"], errors="coerce").to_numpy(np.float64)
                      - _other_side(table, other[1], "pred_age"))
        return pd.Series(diff, index=idx), True
    if other and name == GENDER_DIFFERS.format(other=other[0]):
        theirs = _other_side(table, other[1], "p_female")
        ours = called_female(pd.to_numeric(table["p_female"], errors="coerce").to_numpy(np.float64))
        text = np.where(np.isnan(theirs), UNKNOWN, np.where(ours != called_female(theirs), "differs", "agrees"))
        return pd.Series(text, index=idx, dtype=object), False
    if name in MEASURED:
        values = pd.to_numeric(table[name], errors="coerce")
        return (values.abs() if name == "yaw" else values), True
    return table[name].astype(object).where(table[name].notna(), UNKNOWN).astype(str), False


def figure(table: pd.DataFrame, values: pd.Series, continuous: bool, title: str = ""):
    """The map: one WebGL scatter trace per category (a legend entry each; missing values grey), or one trace with
    a colour scale, every dot's row number as customdata and its file in the hover; box selection by default."""
    import plotly.graph_objects as go

    rows = np.arange(len(table))
    x, y = table["x"].to_numpy(np.float64), table["y"].to_numpy(np.float64)
    files = table["file"].astype(str).to_numpy()
    hover = "%{text}<extra></extra>"
    fig = go.Figure()
    if continuous:
        v = values.to_numpy(np.float64)
        known = np.isfinite(v)
        if (~known).any():
            fig.add_trace(go.Scattergl(x=x[~known], y=y[~known], mode="markers", name=UNKNOWN, customdata=rows[~known],
                                       text=files[~known], hovertemplate=hover, marker={**MARKER, "color": "#bbb"}))
        fig.add_trace(go.Scattergl(x=x[known], y=y[known], mode="markers", name=values.name or "", showlegend=False,
                                   customdata=rows[known], text=files[known], hovertemplate=hover,
                                   marker={**MARKER, "color": v[known], "colorscale": "Viridis", "showscale": True}))
    else:
        v = values.astype(str).to_numpy()
        levels = [str(lv) for lv in value_order(values.astype(str)) if str(lv) != UNKNOWN]
        for level in [*levels, UNKNOWN]:
            inside = v == level
            if inside.any():
                marker = {**MARKER, "color": "#bbb"} if level == UNKNOWN else MARKER
                fig.add_trace(go.Scattergl(x=x[inside], y=y[inside], mode="markers", name=level,
                                           customdata=rows[inside], text=files[inside], hovertemplate=hover,
                                           marker=marker))
    fig.update_layout(title=title, dragmode="select", xaxis_title="first principal component",
                      yaxis_title="second principal component", legend={"itemsizing": "constant"},
                      margin={"l": 10, "r": 10, "t": 40, "b": 10}, height=600)
    return fig


def selected_rows(points: Sequence[dict], n_rows: int) -> np.ndarray:
    """The sorted distinct row numbers of a plotly selection event's points (their customdata), those outside the
    table dropped."""
    rows = []
    for p in points:
        c = p.get("customdata")
        c = c[0] if isinstance(c, list | tuple) and c else c
        if isinstance(c, int | float | np.integer | np.floating) and not isinstance(c, bool):
            rows.append(int(c))
    out = np.unique(np.array(rows, np.int64))
    return out[(out >= 0) & (out < n_rows)]


def update_selection(kept: tuple[str, ...], last_event: tuple[str, ...], event: tuple[str, ...]
                     ) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(the selection to keep, the event to remember) after a rerun whose chart reports ``event`` (the files its
    selection holds). Only a new, non-empty event replaces the kept selection: a chart drawn again (another
    colour, a page switch) reports nothing, and that must not undo a selection; a cluster picked or the clear
    button set ``kept`` themselves."""
    if event and event != last_event:
        return event, event
    return kept, event


def with_selection(table: pd.DataFrame, files: Sequence[str]) -> pd.DataFrame:
    """``table`` with SELECTION: SELECTED for the rows of ``files``, REST for the others."""
    inside = table["file"].isin(set(files)).to_numpy()
    return table.assign(**{SELECTION: np.where(inside, SELECTED, REST)})


def _figure_metrics(table: pd.DataFrame) -> list[str]:
    age = ("age_mae", "age_bias") if headline_age_metric(table) == "age_mae" else ("age_bin_accuracy",)
    return [*age, "gender_accuracy", "female_as_male", "male_as_female"]


def selection_figures(table: pd.DataFrame, files: Sequence[str], seed: int = 0) -> pd.DataFrame:
    """Per metric, the selected faces against the rest: metric, label, selected (n_selected faces) and rest with
    95% bootstrap intervals, and for the headline age metric and gender accuracy the gap (selected minus rest) with
    the worst-slice test's 95% interval and one-sided p (that the selection is worse), where both sides hold at
    least MIN_FLOOR faces. ``table``: prepared; empty frame when nothing is selected or nothing is left."""
    t = with_selection(table, files)
    columns = ["metric", "label", "n_selected", "selected", "selected_lo", "selected_hi", "n_rest", "rest",
               "rest_lo", "rest_hi", "gap", "gap_lo", "gap_hi", "p_worse"]
    sides = set(t[SELECTION])
    if sides != {SELECTED, REST}:
        return pd.DataFrame(columns=columns)
    metrics = _figure_metrics(t)
    rep = GroupReport(t, SELECTION, seed=seed, min_count=1, metrics=metrics, n_perm=0).by_group.set_index(SELECTION)
    gaps = {}
    if min((t[SELECTION] == SELECTED).sum(), (t[SELECTION] == REST).sum()) >= MIN_FLOOR:
        loss = [GAP_OF[m][0] for m in metrics if m in GAP_OF]
        search = find_slices(t, loss, max_order=1, min_count=MIN_FLOOR, columns=[SELECTION]).table
        for r in search.to_dict("records"):
            if r["slice"][SELECTION] == SELECTED:
                gaps[r["metric"]] = r
    rows = []
    for m in metrics:
        s, o = rep.loc[SELECTED], rep.loc[REST]
        row = {"metric": m, "label": METRICS[m].label, "n_selected": int(s["n"]), "selected": s[m],
               "selected_lo": s[f"{m}_lo"], "selected_hi": s[f"{m}_hi"], "n_rest": int(o["n"]), "rest": o[m],
               "rest_lo": o[f"{m}_lo"], "rest_hi": o[f"{m}_hi"], "gap": np.nan, "gap_lo": np.nan, "gap_hi": np.nan,
               "p_worse": np.nan}
        g = gaps.get(GAP_OF.get(m, ("",))[0])
        if g is not None:
            sign = GAP_OF[m][1]
            lo, hi = sorted((sign * g["gap_lo"], sign * g["gap_hi"]))
            row.update(gap=sign * g["gap"], gap_lo=lo, gap_hi=hi, p_worse=g["p"])
        rows.append(row)
    return pd.DataFrame(rows, columns=columns)


def figures_note(n_selected: int) -> str:
    """What the figures table's intervals are, and why a gap may be missing."""
    small = (f" A gap is tested only with at least {MIN_FLOOR} faces on each side." if n_selected < MIN_FLOOR
             else "")
    few = f" Fewer than {MIN_COUNT} selected faces: wide intervals." if n_selected < MIN_COUNT else ""
    return ("Each side's figure with its 95% bootstrap interval; the gap (selected minus rest) with its 95% "
            "interval (Welch's for the age MAE, Newcombe's for rates) and the one-sided p that the selection is "
            f"worse, as the worst-slice search tests a slice, not corrected for having chosen it by eye.{few}{small}")


def selected_table(table: pd.DataFrame, files: Sequence[str], colour: pd.Series | None = None,
                   colour_name: str = "") -> pd.DataFrame:
    """The selected faces in the map's order: the file, labels, predictions, group columns, the absolute age error
    and the colour shown (when given)."""
    inside = table["file"].isin(set(files)).to_numpy()
    groups = [c for c in map_groups(table) if c not in TABLE_COLUMNS]
    keep = [c for c in (*TABLE_COLUMNS, *groups) if c in table]
    out = table.loc[inside, keep].copy()
    if "age" in out and out["age"].isna().all():
        out = out.drop(columns="age")
    if "age_bin" in out and ("age" in out or out["age_bin"].isna().all()):
        out = out.drop(columns="age_bin")
    out[ABS_AGE_ERROR] = _abs_age_error(table)[inside]
    out = out.round({"pred_age": 1, "p_female": 3, ABS_AGE_ERROR: 1})  # as the other pages show them
    if colour is not None and colour_name not in out:
        out[colour_name] = colour[inside]
    return out.reset_index(drop=True)


def thumbnail_url(image, px: int = THUMB_PX) -> str:
    """A face (PIL image) as a small JPEG data URL, for a table's image column."""
    im = image.convert("RGB")
    im.thumbnail((px, px))
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def cam_sample(files: Sequence[str], cap: int = CAM_FACES) -> list[str]:
    """At most ``cap`` of ``files``, evenly spread over them (the same faces on every run)."""
    files = list(files)
    if len(files) <= cap:
        return files
    return [files[i] for i in np.linspace(0, len(files) - 1, cap).round().astype(int)]


def cluster_choices(found: pd.DataFrame) -> dict[int, str]:
    """Cluster number -> a label (its size, what it is worse at and what its mix of labelled groups predicts, its
    description), in the order of the rows (what no labelled group explains first), one entry per
    cluster of agegender.fairness.embedslices.find_embedding_slices' rows."""
    worse: dict[int, list[str]] = {}
    first: dict[int, dict] = {}
    for r in found.to_dict("records"):
        c = int(r["cluster"])
        first.setdefault(c, r)
        mix = (f", {r['expected']:.3g} its labelled groups predict" if np.isfinite(r.get("expected", np.nan))
               else "")
        worse.setdefault(c, []).append(f"{r['label']} {r['value']:.3g} vs {r['rest_value']:.3g}{mix} (q={r['q']:.2g})")
    return {c: f"cluster {c}, {r['size']} faces: {'; '.join(worse[c])} · {r['description']}" for c, r in first.items()}


def cluster_files(found: pd.DataFrame, cluster: int) -> tuple[str, ...]:
    rows = found[found["cluster"] == cluster]
    return tuple(rows.iloc[0]["files"]) if len(rows) else ()
