"""Slices nobody labelled: clusters of a checkpoint's embeddings (python -m agegender.embed) tested as slices, and
each flagged cluster described by the measured properties and group shares that set it apart.

The features (the heads' input) are reduced to their first PCA_DIMS principal components and clustered with
scikit-learn's KMeans (k-means++, N_INIT starts, a fixed seed), about FACES_PER_CLUSTER faces a cluster. KMeans
rather than HDBSCAN: every face lands in a cluster (HDBSCAN calls a share of faces noise, and a failure mode
spread thin is exactly what would end there), its cost grows linearly with the faces (HDBSCAN's neighbour search
in tens of dimensions is near quadratic: minutes for 21,000 faces on 2 cores), and the result is reproducible
from the seed. Its bias, round clusters of similar size, matters little here: a cluster is a slice to test, and
a failure mode split over two clusters is found twice, not missed.

Each cluster is then a value of a slice column for the worst-slice test (agegender.fairness.slices.find_slices,
one column, order 1): the gap of its error against the other clustered faces with its 95% interval (Welch's for
the age MAE, Newcombe's for rates), a one-sided p-value, and Benjamini-Hochberg q over the clusters tried. A
flagged cluster (q below alpha) is described by standardised differences against the rest: Cohen's d for the
measured properties present (brightness, sharpness and face size on a log scale, |yaw|), Cohen's h for shares
(grayscale faces, each value of each group column); the description names the largest, at least MIN_EFFECT.

A cluster can be worse only because of who is in it: one of babies is bad at gender because babies are, which the
labelled slices already show. So each flagged cluster's error is also set against what its mix of labelled groups
predicts (indirect standardisation, as in a standardised mortality ratio): every face in it is expected to do as
well as the faces outside it of its own stratum (age bucket x gender x the dataset's groups; coarser, down to the
age bucket, where that stratum has fewer than MIN_STRATUM faces outside). ``beyond`` is the mean of error minus
expected, with a t interval and a one-sided p-value (the strata's means taken as known: they come from the many
faces outside). Clusters are listed by that p-value first: what no column explains comes before what one does.

Imports no torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..predictions import DERIVED_GROUP, group_columns, metric_columns
from .groups import prepared
from .slices import ALPHA, MIN_SLICE, SLICE_METRICS, find_slices

CLUSTER = "cluster"
FEATURES = "features"  # agegender.evaluation.embed's list column (this module cannot import it: torch)
FACES_PER_CLUSTER = 100  # small enough to be one kind of face, large enough (3x MIN_SLICE) for the test's power
MIN_CLUSTERS, MAX_CLUSTERS = 2, 60
PCA_DIMS = 32  # components clustered: the rest of 256-2048 features is mostly noise to k-means' distances
N_INIT = 4
SEED = 0
MIN_EFFECT = 0.5  # a "medium" standardised difference (Cohen): smaller ones are not named
NAMED = 3  # differences a description names at most
MIN_STRATUM = 10  # faces outside a cluster that a stratum's expected error is taken from, at least
MAX_VALUES = 20  # a group column with more values than this is an identifier, not a group: no shares
EMBEDDING_COLUMNS = ("file", "x", "y", FEATURES, CLUSTER)

ERR_UNREADABLE = "cannot read embeddings {path}: {detail}"
ERR_COLUMNS = "{path} is not an embeddings file of python -m agegender.embed: it lacks {missing}"
ERR_NO_OVERLAP = ("no face of the embeddings {path} is in the predictions: make both from the same faces "
                  "(python -m agegender.embed with the data arguments the predictions were evaluated on)")
NOTHING_NAMED = "no measured property or group share sets it apart (largest: {largest})"


@dataclass(frozen=True)
class Property:
    """A measured property: the column it is read from, how it is compared (a share, or a mean on some scale), and
    the words for a cluster below and above the rest."""

    column: str
    lower: str
    higher: str
    unit: str = ""
    share: bool = False
    log: bool = False
    absolute: bool = False  # compared by magnitude (yaw: turned either way)


PROPERTIES = (
    Property("brightness", "darker", "brighter"),
    Property("sharpness", "blurrier", "sharper", log=True),
    Property("yaw", "more frontal", "more turned", "°", absolute=True),
    Property("face_px", "smaller faces", "larger faces", " px", log=True),
    Property("grayscale", "fewer grayscale", "more grayscale", share=True),
)


def read_embeddings(path) -> pd.DataFrame:
    """The embeddings file; ValueError (ERR_UNREADABLE, ERR_COLUMNS) when it cannot be read or is not one."""
    try:
        emb = pd.read_parquet(path)
    except (OSError, ValueError) as e:
        raise ValueError(ERR_UNREADABLE.format(path=path, detail=e)) from e
    missing = [c for c in ("file", FEATURES) if c not in emb]
    if missing:
        raise ValueError(ERR_COLUMNS.format(path=path, missing=", ".join(missing)))
    return emb


def cluster_count(n: int) -> int:
    return int(np.clip(round(n / FACES_PER_CLUSTER), MIN_CLUSTERS, MAX_CLUSTERS))


def clusters(vectors: np.ndarray, k: int | None = None, seed: int = SEED) -> np.ndarray:
    """A cluster number per row of ``vectors`` (N x F): KMeans on the first PCA_DIMS principal components."""
    from sklearn.cluster import KMeans  # scikit-learn's import is a second: paid only where clusters are made

    x = np.asarray(vectors, np.float64)
    x = x - x.mean(0)
    _, axes = np.linalg.eigh(x.T @ x)  # the F x F covariance: several times faster than the SVD of N x F
    scores = x @ axes[:, ::-1][:, :PCA_DIMS]
    k = min(k or cluster_count(len(x)), len(x))
    return KMeans(n_clusters=k, n_init=N_INIT, random_state=seed).fit_predict(scores)


def _cohen_d(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 2 or len(b) < 2:
        return 0.0
    pooled = np.sqrt(((len(a) - 1) * a.var(ddof=1) + (len(b) - 1) * b.var(ddof=1)) / (len(a) + len(b) - 2))
    return float((a.mean() - b.mean()) / pooled) if pooled > 0 else 0.0


def _cohen_h(p1: float, p0: float) -> float:
    return float(2 * np.arcsin(np.sqrt(p1)) - 2 * np.arcsin(np.sqrt(p0)))


def _property_difference(prop: Property, values: np.ndarray, inside: np.ndarray) -> dict | None:
    v = np.asarray(values, np.float64)
    v = np.abs(v) if prop.absolute else v
    ok = np.isfinite(v)
    a, b = v[ok & inside], v[ok & ~inside]
    if len(a) < 2 or len(b) < 2:
        return None
    if prop.share:
        m1, m0 = a.mean(), b.mean()
        effect, text = _cohen_h(m1, m0), f"{m1:.0%} vs {m0:.0%}"
    else:
        scale = np.log1p if prop.log else (lambda t: t)
        effect = _cohen_d(scale(np.maximum(a, 0) if prop.log else a), scale(np.maximum(b, 0) if prop.log else b))
        m1, m0 = np.median(a), np.median(b)
        text = f"median {prop.column.replace('_', ' ')} {m1:.0f}{prop.unit} vs {m0:.0f}{prop.unit}"
    word = prop.higher if effect > 0 else prop.lower
    return {"kind": "property", "name": prop.column, "effect": effect, "cluster": float(m1), "rest": float(m0),
            "text": f"{word} ({text})"}


def _share_differences(column: str, values: pd.Series, inside: np.ndarray) -> list[dict]:
    known = values.notna().to_numpy() & (values.astype(str).str.strip() != "").to_numpy()
    v = values.astype(str).to_numpy()
    out = []
    levels = pd.unique(v[known])
    if len(levels) < 2 or len(levels) > MAX_VALUES:
        return out
    a, b = v[known & inside], v[known & ~inside]
    if not len(a) or not len(b):
        return out
    for level in levels:
        p1, p0 = float((a == level).mean()), float((b == level).mean())
        out.append({"kind": "share", "name": f"{column}={level}", "effect": _cohen_h(p1, p0), "cluster": p1,
                    "rest": p0, "text": f"{p1:.0%} {level} ({p0:.0%} in the rest)"})
    return out


def differences(table: pd.DataFrame, inside: np.ndarray) -> list[dict]:
    """Every standardised difference of the faces ``inside`` against the other faces of ``table`` (those with a
    cluster), largest magnitude first: the measured properties present, then each group value's share."""
    out = [d for p in PROPERTIES if p.column in table
           for d in [_property_difference(p, table[p.column].to_numpy(np.float64), inside)] if d is not None]
    measured = {p.column for p in PROPERTIES}
    groups = [c for c in ("gender", DERIVED_GROUP, *group_columns(table))
              if c in table and c not in measured and c not in EMBEDDING_COLUMNS]
    for c in dict.fromkeys(groups):
        out += _share_differences(c, table[c], inside)
    return sorted(out, key=lambda d: -abs(d["effect"]))


def description(diffs: list[dict]) -> str:
    """The NAMED largest differences of at least MIN_EFFECT, joined by ' · '."""
    named = [d["text"] for d in diffs if abs(d["effect"]) >= MIN_EFFECT][:NAMED]
    if named:
        return " · ".join(named)
    return NOTHING_NAMED.format(largest=diffs[0]["text"] if diffs else "none measured")


def strata(table: pd.DataFrame) -> list[list[str]]:
    """The labelled columns that define a face's stratum, finest first, down to the age bucket alone."""
    groups = [c for c in group_columns(table) if c not in EMBEDDING_COLUMNS and c not in {p.column for p in PROPERTIES}
              and table[c].nunique(dropna=True) <= MAX_VALUES]
    full = [c for c in (DERIVED_GROUP, "gender", *groups) if c in table]
    return [full[:i] for i in range(len(full), 0, -1)]


def expected_loss(table: pd.DataFrame, loss: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """Per face of ``table``: the mean ``loss`` of the faces outside ``inside`` in its stratum (the finest of
    strata() with MIN_STRATUM such faces, else the mean of all of them); NaN where its own loss is not finite."""
    out = np.full(len(table), np.nan)
    todo = inside & np.isfinite(loss)
    rest = ~inside & np.isfinite(loss)
    for cols in strata(table):
        if not todo.any():
            break
        key = pd.Series(list(zip(*(table[c].astype(str).to_numpy() for c in cols), strict=True)), index=table.index)
        stats = pd.DataFrame({"key": key[rest], "loss": loss[rest]}).groupby("key")["loss"].agg(["mean", "size"])
        stats = stats[stats["size"] >= MIN_STRATUM]["mean"]
        found = key.map(stats).to_numpy(np.float64)
        hit = todo & np.isfinite(found)
        out[hit] = found[hit]
        todo &= ~hit
    out[todo] = loss[rest].mean() if rest.any() else np.nan
    return out


def beyond_groups(table: pd.DataFrame, metric: str, inside: np.ndarray, alpha: float = ALPHA) -> dict:
    """How much worse the faces ``inside`` do at ``metric`` than their labelled groups predict (expected_loss):
    expected (their mean expected error), beyond (observed minus expected), its 1 - alpha t interval and the
    one-sided p-value that it is above zero."""
    from scipy import stats

    loss = SLICE_METRICS[metric].loss(metric_columns(table))
    d = (loss - expected_loss(table, loss, inside))[inside]
    d = d[np.isfinite(d)]
    if len(d) < 2:
        return {"expected": float("nan"), "beyond": float("nan"), "beyond_lo": float("nan"),
                "beyond_hi": float("nan"), "p_beyond": float("nan")}
    mean, se = float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d)))
    half = stats.t.ppf(1 - alpha / 2, len(d) - 1) * se
    observed = loss[inside]
    p = float(stats.t.sf(mean / se, len(d) - 1)) if se > 0 else (0.0 if mean > 0 else 1.0)
    return {"expected": float(np.nanmean(observed) - mean), "beyond": mean, "beyond_lo": mean - half,
            "beyond_hi": mean + half, "p_beyond": p}


def with_clusters(predictions: pd.DataFrame, emb: pd.DataFrame, k: int | None = None, seed: int = SEED,
                  where: str = "the embeddings") -> pd.DataFrame:
    """The prepared predictions with CLUSTER (None for faces without an embedding) and the measured properties the
    predictions lack taken from ``emb``, matched by file."""
    df = prepared(predictions).copy()
    emb = emb[emb["file"].isin(set(df["file"]))].drop_duplicates("file")
    if emb.empty:
        raise ValueError(ERR_NO_OVERLAP.format(path=where))
    labels = clusters(np.stack(emb[FEATURES].to_numpy()), k, seed)
    by_file = dict(zip(emb["file"], (int(c) for c in labels), strict=True))
    df[CLUSTER] = pd.Series([by_file.get(f) for f in df["file"]], index=df.index, dtype=object)
    for p in PROPERTIES:
        has = p.column in df and np.isfinite(pd.to_numeric(df[p.column], errors="coerce")).any()
        if not has and p.column in emb:
            df[p.column] = df["file"].map(dict(zip(emb["file"], emb[p.column].astype(float), strict=True)))
    return df


def find_embedding_slices(predictions: pd.DataFrame, emb: pd.DataFrame, k: int | None = None, seed: int = SEED,
                          alpha: float = ALPHA, min_count: int = MIN_SLICE, show_all: bool = False,
                          where: str = "the embeddings") -> pd.DataFrame:
    """The clusters flagged by the worst-slice test (every cluster tried with ``show_all``), what no labelled group
    explains first (p_beyond, then q, then the gap relative to the rest's value): a row per cluster and metric with
    cluster, description, metric, label, size, value, rest_value, gap, gap_lo, gap_hi, p, q, expected, beyond,
    beyond_lo, beyond_hi, p_beyond (beyond_groups), files and differences (every standardised difference, largest
    first). ``predictions``: a predictions table of the same faces (the embeddings file holds
    one: pass ``emb`` twice)."""
    df = with_clusters(predictions, emb, k, seed, where)
    search = find_slices(df, max_order=1, min_count=min_count, alpha=alpha, columns=[CLUSTER])
    table = search.table if show_all else search.significant()
    clustered = df[df[CLUSTER].notna()]
    files = clustered.groupby(CLUSTER)["file"].apply(list).to_dict()
    rows = []
    for r in table.to_dict("records"):
        c = r["slice"][CLUSTER]
        inside = (clustered[CLUSTER] == c).to_numpy()
        diffs = differences(clustered, inside)
        mix = beyond_groups(clustered, r["metric"], inside, alpha)
        rows.append({"cluster": int(c), "description": description(diffs), "metric": r["metric"],
                     "label": r["label"], "size": int(r["n"]), "value": r["value"], "rest_value": r["rest_value"],
                     "gap": r["gap"], "gap_lo": r["gap_lo"], "gap_hi": r["gap_hi"], "p": r["p"], "q": r["q"],
                     **mix, "files": files[c], "differences": diffs})
    columns = ["cluster", "description", "metric", "label", "size", "value", "rest_value", "gap", "gap_lo",
               "gap_hi", "p", "q", "expected", "beyond", "beyond_lo", "beyond_hi", "p_beyond", "files",
               "differences"]
    out = pd.DataFrame(rows, columns=columns)
    if out.empty:
        return out
    relative = out["gap"] / out["rest_value"].abs().where(out["rest_value"].abs() > 0, 1.0)
    order = ["p_beyond", "q", "_r"]
    return out.assign(_r=-relative).sort_values(order, kind="stable").drop(columns="_r").reset_index(drop=True)


def _clean(v):
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_clean(x) for x in v]
    if isinstance(v, float | np.floating):
        return float(v) if np.isfinite(v) else None
    return v.item() if hasattr(v, "item") else v


def embedding_slices_for_report(predictions_df: pd.DataFrame, embeddings_path) -> list[dict]:
    """The report JSON's ``embedding_slices``: find_embedding_slices of the report's table and the embeddings file
    at ``embeddings_path``, as JSON-ready dicts (NaN as null). ValueError (a message naming the fix) when the
    file cannot be read, is not an embeddings file, or holds none of the table's faces."""
    emb = read_embeddings(embeddings_path)
    found = find_embedding_slices(predictions_df, emb, where=str(embeddings_path))
    return [_clean(r) for r in found.to_dict("records")]
