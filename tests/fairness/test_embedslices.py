"""Slices nobody labelled (agegender.fairness.embedslices), on generated features: a planted cluster of faces with
worse age errors that are also darker and blurrier is found first and described by darkness and blur; without
it, nothing is flagged."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from agegender.fairness import embedslices as ES
from agegender.fairness.groups import prepare

N, PLANTED, DIMS = 2000, 150, 64


def generated(planted: bool = True, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, set[str]]:
    """(predictions, embeddings, the planted files): eight blobs of ordinary faces and, when ``planted``, a ninth
    of PLANTED faces whose age errors are three times larger and whose pixels are dark and blurred."""
    rng = np.random.default_rng(seed)
    blob = rng.integers(0, 8, N)
    centres = rng.normal(0, 4, (9, DIMS))
    bad = np.zeros(N, bool)
    if planted:
        bad[rng.choice(N, PLANTED, replace=False)] = True
    blob[bad] = 8
    vectors = (centres[blob] + rng.normal(0, 1, (N, DIMS))).astype(np.float32)
    files = [f"face{i:05d}.jpg" for i in range(N)]
    age = rng.integers(1, 90, N).astype(float)
    err = rng.normal(0, 5, N) * np.where(bad, 3.0, 1.0)
    female = rng.random(N) < 0.5
    p = np.where(female, rng.beta(8, 2, N), rng.beta(2, 8, N))
    predictions = pd.DataFrame({"file": files, "age": age, "gender": np.where(female, "female", "male"),
                                "race": rng.choice(["White", "Black", "Asian", "Indian", "Others"], N),
                                "pred_age": age + err, "p_female": p})
    emb = pd.DataFrame({"file": files, "x": vectors[:, 0], "y": vectors[:, 1],
                        "brightness": np.where(bad, rng.normal(45, 10, N), rng.normal(120, 30, N)),
                        "sharpness": np.where(bad, rng.gamma(2, 2, N), rng.gamma(4, 12, N)),
                        "grayscale": rng.random(N) < 0.05, ES.FEATURES: list(vectors)})
    return predictions, emb, {f for f, b in zip(files, bad, strict=True) if b}


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    predictions, emb, bad = generated()
    path = tmp_path_factory.mktemp("emb") / "emb.parquet"
    emb.to_parquet(path, index=False)
    return prepare(predictions), path, bad


def test_the_planted_cluster_ranks_first_and_is_named_by_darkness_and_blur(planted):
    predictions, path, bad = planted
    rows = ES.embedding_slices_for_report(predictions, path)
    assert rows, "nothing flagged"
    first = rows[0]
    assert first["metric"] == "age_mae" and first["q"] < 0.05 and first["gap_lo"] > 0
    inside = set(first["files"])
    assert len(inside & bad) / len(inside) > 0.9 and len(inside & bad) >= 0.5 * len(bad), (len(inside), len(bad))
    assert first["size"] == len(inside)
    assert "darker" in first["description"] and "blurrier" in first["description"], first["description"]
    named = [d["name"] for d in first["differences"][:2]]
    assert set(named) == {"brightness", "sharpness"}
    json.dumps(rows, allow_nan=False)  # the report's JSON takes it as it is
    # every flagged cluster of the age MAE is (mostly) planted faces: the ordinary blobs are no worse
    for r in rows:
        if r["metric"] == "age_mae":
            assert len(set(r["files"]) & bad) / r["size"] > 0.9, r["description"]


def test_without_a_planted_cluster_nothing_is_flagged(tmp_path):
    predictions, emb, _ = generated(planted=False, seed=1)
    emb.to_parquet(tmp_path / "e.parquet", index=False)
    assert ES.embedding_slices_for_report(prepare(predictions), tmp_path / "e.parquet") == []
    every = ES.find_embedding_slices(predictions, emb, show_all=True)
    assert len(every) == 2 * ES.cluster_count(N) and (every["q"] >= 0.05).all()


def test_the_embeddings_file_holds_its_own_predictions(planted):
    predictions, path, bad = planted
    emb = ES.read_embeddings(path).merge(predictions[["file", "age", "gender", "race", "pred_age", "p_female"]])
    found = ES.find_embedding_slices(emb, emb)
    assert len(set(found.iloc[0]["files"]) & bad) / found.iloc[0]["size"] > 0.9


def test_properties_the_predictions_measured_are_kept():
    predictions, emb, _ = generated()
    predictions["sharpness"] = 7.0
    df = ES.with_clusters(predictions, emb)
    assert (df["sharpness"] == 7.0).all() and df["brightness"].notna().all()
    assert df[ES.CLUSTER].notna().all() and df[ES.CLUSTER].nunique() == ES.cluster_count(N)


def test_a_face_without_embedding_has_no_cluster():
    predictions, emb, _ = generated()
    df = ES.with_clusters(predictions, emb.iloc[10:])
    assert df[ES.CLUSTER].iloc[:10].isna().all() and df[ES.CLUSTER].iloc[10:].notna().all()


def test_differences_are_standardised_and_signed():
    table = pd.DataFrame({"brightness": [10.0, 12, 11, 100, 110, 90, 95, 105], "gender": ["female"] * 3 + ["male"] * 5,
                          "grayscale": [True, True, False, False, False, False, False, False]})
    inside = np.array([True] * 3 + [False] * 5)
    d = {x["name"]: x for x in ES.differences(table, inside)}
    assert d["brightness"]["effect"] < -3 and d["brightness"]["text"].startswith("darker")
    assert d["gender=female"]["effect"] == pytest.approx(np.pi)  # 100% against 0%: h = 2 asin 1 - 0
    assert d["grayscale"]["text"].startswith("more grayscale (67% vs 0%)")
    assert ES.description([{"effect": 0.1, "text": "x"}]) == ES.NOTHING_NAMED.format(largest="x")


def test_a_file_that_is_not_embeddings_is_refused(tmp_path):
    pd.DataFrame({"file": ["a"]}).to_parquet(tmp_path / "p.parquet")
    with pytest.raises(ValueError) as e:
        ES.read_embeddings(tmp_path / "p.parquet")
    assert str(e.value) == ES.ERR_COLUMNS.format(path=tmp_path / "p.parquet", missing=ES.FEATURES)
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(ValueError, match="cannot read embeddings"):
        ES.read_embeddings(tmp_path / "bad.parquet")
    predictions, emb, _ = generated()
    with pytest.raises(ValueError) as e:
        ES.find_embedding_slices(predictions, emb.assign(file="other"), where="E")
    assert str(e.value) == ES.ERR_NO_OVERLAP.format(path="E")


def with_babies(seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, set[str], set[str]]:
    """generated() plus a tenth blob of babies (age 1) whose gender calls are often wrong, as babies' are
    everywhere: babies outside that blob (with the same label) are just as wrong. Their gap is larger than the
    planted faces', but their age bucket explains it."""
    predictions, emb, bad = generated(seed=seed)
    rng = np.random.default_rng(seed + 100)
    n = 300
    files = [f"baby{i:05d}.jpg" for i in range(n)]
    female = rng.random(n) < 0.5
    wrong = rng.random(n) < 0.4
    p = np.where(female ^ wrong, 0.9, 0.1)
    in_blob = np.arange(n) < 200  # 100 babies lie among the other faces
    centre = np.random.default_rng(seed + 200).normal(0, 4, DIMS)
    vectors = np.where(in_blob[:, None], centre + rng.normal(0, 1, (n, DIMS)),
                       np.stack(emb[ES.FEATURES].iloc[:n].to_numpy()) + rng.normal(0, 0.1, (n, DIMS)))
    babies = pd.DataFrame({"file": files, "age": 1.0, "gender": np.where(female, "female", "male"),
                           "race": rng.choice(["White", "Black", "Asian"], n), "pred_age": 1 + rng.normal(0, 1, n),
                           "p_female": p})
    baby_emb = pd.DataFrame({"file": files, "x": vectors[:, 0], "y": vectors[:, 1],
                             "brightness": rng.normal(120, 30, n), "sharpness": rng.gamma(4, 12, n),
                             "grayscale": rng.random(n) < 0.05, ES.FEATURES: list(vectors.astype(np.float32))})
    blob = {f for f, b in zip(files, in_blob, strict=True) if b}
    return (pd.concat([predictions, babies], ignore_index=True), pd.concat([emb, baby_emb], ignore_index=True),
            bad, blob)


def test_a_cluster_its_labelled_groups_explain_comes_after_one_they_do_not():
    predictions, emb, bad, blob = with_babies()
    found = ES.find_embedding_slices(predictions, emb)
    babies = found[found["files"].map(lambda f: len(set(f) & blob) / len(f) > 0.9)]
    planted = found[found["files"].map(lambda f: len(set(f) & bad) / len(f) > 0.9)]
    assert len(babies) and len(planted), found[["cluster", "metric", "gap", "q"]]
    b = babies[babies["metric"] == "gender_error_rate"].iloc[0]
    # flagged on its own, its gap the largest relative to the rest, but babies outside it are as wrong: nothing is
    # left beyond what its age bucket predicts
    assert b["q"] < 0.05 and b["gap"] / b["rest_value"] > (planted["gap"] / planted["rest_value"]).max()
    assert b["beyond_lo"] < 0 < b["beyond_hi"] and b["expected"] == pytest.approx(b["value"], abs=0.15)
    first = found.iloc[0]
    assert first["cluster"] in set(planted["cluster"]) and first["beyond_lo"] > 0
    assert found.index[found["cluster"] == b["cluster"]].min() > found.index[found["cluster"] == first["cluster"]].max()


def test_expected_loss_takes_each_face_from_its_own_stratum_then_coarser():
    # 12 outside faces of (0-2, female) with loss 1, 12 of (20-29, male) with loss 0, 12 more 20-29 females at 0.5
    rows = ([("0-2", "female", 1.0)] * 12 + [("20-29", "male", 0.0)] * 12 + [("20-29", "female", 0.5)] * 12
            + [("0-2", "female", 0.0), ("20-29", "male", 1.0), ("0-2", "male", 0.0)])
    table = pd.DataFrame(rows, columns=["age_bucket", "gender", "loss"])
    inside = np.arange(len(table)) >= 36
    expected = ES.expected_loss(table, table["loss"].to_numpy(), inside)
    assert np.isnan(expected[:36]).all()
    # its own stratum; its own; no (0-2, male) outside, so the 0-2 bucket's mean
    assert expected[36:].tolist() == [1.0, 0.0, 1.0]
