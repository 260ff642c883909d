"""The label audit: planted label errors rank first, the confident-learning thresholds and the age tails match a
hand computation, folds hold out what they say, the CLI refuses what is no audit, verdicts round-trip, and the
error explorer shows the suspects and records a verdict."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from agegender.data.datasets import ERR_NOT_FOUND
from agegender.data.utkface import cached_images, fold_of, scan, split_of
from agegender.fairness.groups import GroupReport, prepare, wilson
from agegender.labels import image_key
from agegender.meta import write_meta
from agegender.models import checkpoint
from agegender.models.checkpoint import load_checkpoint
from agegender.models.inference import predict_checkpoint
from agegender.predictions import LABEL_TAIL, label_tails, load_predictions, write_predictions
from agegender.report import command as report
from agegender.review import audit as A
from agegender.review import audit_run as AR
from agegender.review import verdicts as R
from agegender.train import loop as training

from ..conftest import ROOT, make_dataset, tiny_config

RACES = ("White", "Black", "Asian")
FLOAT32 = 1e-5  # a figure recomputed by the model matches the stored one to float32 rounding, not bit for bit


def fake_table(n=600, flips=20, seed=0):
    """Predictions with ``flips`` gender labels flipped on faces the model is sure of; (table, flipped files)."""
    rng = np.random.default_rng(seed)
    female = rng.random(n) < 0.5
    p = np.where(female, rng.beta(9, 2, n), rng.beta(2, 9, n))
    flipped = rng.choice(n, flips, replace=False)
    p[flipped] = np.where(female[flipped], rng.uniform(0.97, 0.999, flips), rng.uniform(0.001, 0.03, flips))
    label = female.copy()
    label[flipped] = ~label[flipped]
    age = rng.integers(1, 90, n).astype(float)
    files = [f"img{i:04d}.jpg" for i in range(n)]
    table = pd.DataFrame({"file": files, "age": age, "gender": np.where(label, "female", "male"),
                          "race": rng.choice(RACES, n), "pred_age": age + rng.normal(0, 3, n), "p_female": p})
    return table, {files[i] for i in flipped}


def gaussians(centres, sd, bins=121):
    k = np.arange(bins)[None, :]
    p = np.exp(-0.5 * ((k - np.asarray(centres, float)[:, None]) / sd) ** 2)
    return p / p.sum(1, keepdims=True)


def test_planted_gender_flips_rank_first_and_thresholds_are_confident_learnings():
    table, flipped = fake_table()
    audit = A.audit_table(table)
    female = (table["gender"] == "female").to_numpy()
    p = table["p_female"].to_numpy()
    t = audit.attrs["thresholds"]
    assert t["female"] == pytest.approx(p[female].mean()) and t["male"] == pytest.approx((1 - p[~female]).mean())
    by_hand = np.where(female, 1 - p >= t["male"], p >= t["female"])
    np.testing.assert_array_equal(A.gender_suspects(female, p, t), by_hand)
    got = audit.set_index("file").loc[table["file"]]
    gender = (got["flagged"] & (got["suspect"] == "gender")).to_numpy()
    assert got["flagged"].to_numpy()[by_hand].all() and not (gender & ~by_hand).any()
    top = set(audit[audit["suspect"] == "gender"].head(len(flipped))["file"])
    assert len(top & flipped) / len(flipped) >= 0.9  # precision at k
    np.testing.assert_allclose(audit["score"], 1 - audit["p_label"])
    assert (np.diff(audit[audit["flagged"]]["p_set"]) >= 0).all()  # most suspect first
    kind = np.where(audit["suspect"] == "gender", audit["p_gender_label"], audit["age_tail"])
    np.testing.assert_allclose(audit["p_label"], kind)
    # p_set: the share of the set's faces whose label of that kind is at most as likely
    for col, k in (("p_gender_label", "gender"), ("age_tail", "age")):
        rows = audit[audit["suspect"] == k]
        expected = [(audit[col] <= v).mean() for v in rows[col]]
        np.testing.assert_allclose(rows["p_set"], expected)


def test_gender_rule_is_confident_learnings_with_its_argmax():
    t = A.gender_thresholds(np.array([True, True, False, False]), np.array([0.9, 0.7, 0.2, 0.4]))
    assert t == {"male": pytest.approx(0.7), "female": pytest.approx(0.8)}
    # labelled male with P(female) 0.85 >= 0.8: a suspect; 0.75 is not; labelled female with P(male) 0.75 >= 0.7
    got = A.gender_suspects(np.array([False, False, True, True]), np.array([0.85, 0.75, 0.25, 0.5]), t)
    assert got.tolist() == [True, False, True, False]
    # both classes pass low thresholds: the likelier one wins (Northcutt et al.'s argmax)
    low = {"male": 0.3, "female": 0.3}
    assert A.gender_suspects(np.array([False, False]), np.array([0.4, 0.6]), low).tolist() == [False, True]


def test_age_tail_by_hand():
    probs = np.array([[0.1, 0.2, 0.4, 0.2, 0.1]] * 6)
    lo = np.array([4, 3, 3, 1, 4, 2])
    hi = np.array([4, 3, 4, 3, np.inf, 2])
    np.testing.assert_allclose(A.age_tail(probs, lo, hi), [0.2, 0.6, 0.6, 1.0, 0.2, 1.0])


def test_an_age_far_out_of_a_sharp_distribution_is_a_suspect_and_one_near_its_mode_is_not():
    table = pd.DataFrame({"file": ["far", "near", "bin_in", "bin_out"], "age": [75.0, 41.0, np.nan, np.nan],
                          "age_bin": ["", "", "20-29", "70+"], "gender": "male", "pred_age": 25.0,
                          "p_female": 0.1})
    table.loc[1, "pred_age"] = 40.0
    audit = A.audit_table(table, gaussians([25, 40, 25, 25], 3)).set_index("file")
    assert audit.loc["far", "flagged"] and audit.loc["far", "suspect"] == "age" and audit.loc["far", "score"] > 0.999
    assert "labelled 75 y; the model's median 25 y" in audit.loc["far", "reason"]
    assert not audit.loc["near", "flagged"] and audit.loc["near", "age_tail"] > 0.5
    assert audit.loc["bin_in", "age_tail"] == pytest.approx(1.0) and not audit.loc["bin_in", "flagged"]
    assert audit.loc["bin_out", "flagged"] and "labelled in 70+" in audit.loc["bin_out", "reason"]


def planted_ages(n=500, planted=15, seed=1):
    rng = np.random.default_rng(seed)
    true = rng.integers(5, 85, n).astype(float)
    label = true.copy()
    bad = rng.choice(n, planted, replace=False)
    label[bad] = np.clip(true[bad] + rng.choice([-1, 1], planted) * rng.uniform(25, 40, planted), 0, 116).round()
    centre = true + rng.normal(0, 2, n)
    table = pd.DataFrame({"file": [f"a{i}" for i in range(n)], "age": label, "gender": "female",
                          "pred_age": centre, "p_female": 0.9})
    return table, gaussians(centre, 4), {f"a{i}" for i in bad}


@pytest.mark.parametrize("method", ["distribution", "predictions", "residual"])
def test_planted_age_errors_rank_first(method):
    """The model's distributions, the same tails read from the predictions table (as evaluation writes them), or
    the regression fallback: the planted ages come first; the first two rank alike."""
    table, probs, bad = planted_ages()
    if method == "predictions":
        table = table.assign(**{LABEL_TAIL: label_tails(probs, table)})
    audit = A.audit_table(table, probs if method == "distribution" else None)
    assert audit.attrs["age_method"] == ("residual" if method == "residual" else "distribution")
    if method == "predictions":
        assert audit.attrs["age_source"] == "predictions"
        by_model = A.audit_table(table, probs)
        assert list(audit["file"]) == list(by_model["file"])
        np.testing.assert_allclose(audit["p_label"], by_model["p_label"])
    top = set(audit[audit["suspect"] == "age"].head(len(bad))["file"])
    assert len(top & bad) / len(bad) >= 0.9
    assert bad <= set(audit[audit["flagged"]]["file"])


def test_fold_of_is_stable_balanced_and_independent_of_the_split():
    assert fold_of("25_1_0_20170116174525125.jpg.chip.jpg", 5) == fold_of("UTKFace/25_1_0_20170116174525125.jpg", 5)
    names = [f"{i % 90}_{i % 2}_{i % 5}_2017{i:09d}.jpg.chip.jpg" for i in range(20_000)]
    folds = np.array([fold_of(n, 5) for n in names])
    assert [fold_of(n, 5) for n in names[:50]] == folds[:50].tolist()  # the same on every call
    splits = np.array([split_of(n) for n in names])
    for part in ("train", "val", "test", None):
        inside = folds if part is None else folds[splits == part]
        shares = np.bincount(inside, minlength=5) / len(inside)
        assert np.abs(shares - 0.2).max() < (0.015 if part in ("train", None) else 0.04), (part, shares)
    with pytest.raises(ValueError, match="at least 1"):
        fold_of(names[0], 0)


def fake_fold(folder, fold, k=2, fingerprint="f" * 64):
    folder.mkdir(parents=True)
    # a preprocessing and a weights hash that meta.json's schema takes: the check under test is the folds'
    preprocess = {"cache_size": 32, "input_size": 28, "mean": [0.5] * 3, "std": [0.25] * 3}
    write_meta(folder, {"arch": "resnet18", "preprocess": preprocess, "age_offset": 0, "age_scale": 1, "labels": {},
                        "weights_sha256": "0" * 64, "dataset_fingerprint": fingerprint,
                        "train_config": {"holdout_fold": fold, "folds": k}})
    return str(folder)


def test_fold_sets_must_cover_every_fold_once_on_the_same_data(tmp_path):
    a, b, c = (fake_fold(tmp_path / n, f) for n, f in (("a", 0), ("b", 1), ("c", 1)))
    assert AR.check_folds([b, a], "f" * 64, "D") == {0: tmp_path / "a", 1: tmp_path / "b"}
    for folders, held in (([a], "0"), ([a, b, c], "0, 1, 1"), ([b, c], "1, 1")):
        with pytest.raises(A.AuditError) as e:
            AR.check_folds(folders, "f" * 64, "D")
        assert str(e.value) == AR.ERR_FOLD_COVERAGE.format(held=held, k=2, last=1)
    three = fake_fold(tmp_path / "t", 2, k=3)
    with pytest.raises(A.AuditError) as e:
        AR.check_folds([a, three], "f" * 64, "D")
    assert str(e.value) == AR.ERR_FOLD_COUNTS.format(counts="a: 2, t: 3")
    with pytest.raises(A.AuditError) as e:
        AR.check_folds([a, b], "e" * 64, "D")
    assert str(e.value) == AR.ERR_FOLD_DATA.format(path=tmp_path / "a", theirs="f" * 64, data="D", ours="e" * 64)
    none = fake_fold(tmp_path / "n", -1)
    with pytest.raises(A.AuditError) as e:
        AR.check_folds([none, a], "f" * 64, "D")
    assert str(e.value) == AR.ERR_NOT_HELD_OUT.format(path=tmp_path / "n")


@pytest.fixture(scope="module")
def folds(tiny_data, tmp_path_factory):
    """Two DLDL checkpoints on the tiny data, each holding out one of two folds; with the members each trained on."""
    root = tmp_path_factory.mktemp("folds")
    sc = scan(tiny_data)
    images = cached_images(sc, 32, root / "cache")
    by_pixels = {px.tobytes(): s.member for s, px in zip(images.samples, images.pixels, strict=True)}
    out, seen = [], {}
    for fold in (0, 1):
        batches = []
        real = training.to_batch
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(training, "to_batch", lambda x, real=real, batches=batches: batches.append(x.clone()) or real(x))
            out.append(training.train(tiny_config(tiny_data, root / f"fold{fold}", age_loss="dldl", holdout_fold=fold,
                                                  folds=2)))
        seen[fold] = {by_pixels[row.numpy().tobytes()] for b in batches for row in b}
    return out, seen


def test_a_held_out_fold_is_never_trained_on(folds, tiny_data):
    (paths, seen), sc = folds, scan(tiny_data)
    for fold, path in enumerate(paths):
        meta = json.loads((path / "meta.json").read_text())
        assert (meta["train_config"]["holdout_fold"], meta["train_config"]["folds"]) == (fold, 2)
        kept = {s.member for s in sc.samples if s.split == "train" and fold_of(s.name, 2) != fold}
        assert meta["holdout"]["train_images"] == len(kept)
        assert seen[fold] <= kept and len(seen[fold]) >= len(kept) - 7  # an epoch drops the last partial batch
        assert not {s.member for s in sc.samples if fold_of(s.name, 2) == fold} & seen[fold]


def run_cli(args, capsys):
    rc = AR.main([str(a) for a in args])
    return rc, capsys.readouterr().err.strip()


def test_train_images_are_scored_out_of_fold(folds, tiny_data, tmp_path, capsys):
    (paths, _), sc = folds, scan(tiny_data)
    cache = paths[0].parent / "cache"
    out, csv = tmp_path / "a.json", tmp_path / "a.csv"
    rc, err = run_cli(["--data", tiny_data, "--split", "train", "--folds", f"{paths[1]},{paths[0]}", "--json", out,
                       "--csv", csv, "--cache-dir", cache, "--threads", "1"], capsys)
    assert rc == 0, err
    report, rows = json.loads(out.read_text()), pd.read_csv(csv)
    train = {s.member for s in sc.samples if s.split == "train"}
    assert report["n"] == len(rows) == len(train) and set(rows["file"]) == train
    assert report["age_method"] == "distribution" and set(report["suspects"]) == {"gender", "age", "total"}
    images = cached_images(sc, 32, cache)
    for fold, path in enumerate(paths):  # each image's prediction is its own fold's checkpoint's
        idx = [i for i, s in enumerate(images.samples) if s.member in train and fold_of(s.name, 2) == fold]
        ages, _ = predict_checkpoint(load_checkpoint(path), images.pixels[idx])
        got = rows.set_index("file").loc[[images.samples[i].member for i in idx], "pred_age"]
        np.testing.assert_allclose(got, np.round(ages, 2), atol=0.011)


def test_the_cli_refuses_what_is_no_audit(folds, tiny_data, tiny_checkpoint, tmp_path, capsys):
    paths, _ = folds
    js = tmp_path / "x.json"
    base = ["--data", tiny_data, "--json", js, "--cache-dir", paths[0].parent / "cache"]
    assert run_cli([*base, "--checkpoint", tiny_checkpoint, "--split", "train"], capsys) == (
        2, "error: " + AR.ERR_TRAIN_NEEDS_FOLDS.format(split="train"))
    assert run_cli([*base, "--split", "train", "--folds", f"{paths[0]},{paths[0]}"], capsys) == (
        2, "error: " + AR.ERR_FOLD_COVERAGE.format(held="0, 0", k=2, last=1))
    assert run_cli([*base, "--split", "train", "--folds", f"{paths[0]},{tiny_checkpoint}"], capsys) == (
        2, "error: " + AR.ERR_NOT_HELD_OUT.format(path=tiny_checkpoint))
    assert run_cli([*base, "--split", "val"], capsys) == (2, "error: " + AR.ERR_NEEDS_CHECKPOINT.format(split="val"))
    missing = tmp_path / "nowhere"
    assert run_cli(["--data", missing, "--checkpoint", tiny_checkpoint, "--json", js], capsys) == (
        2, "error: " + ERR_NOT_FOUND.format(path=missing))
    ff = tmp_path / "ff"
    ff.mkdir()
    (ff / "labels.csv").write_text("file,age,gender,race\n")
    assert run_cli(["--data", ff, "--json", js], capsys) == (
        2, "error: " + AR.ERR_NEEDS_CHECKPOINT_SET.format(path=ff, format="fairface"))
    assert run_cli(["--data", ff, "--checkpoint", tiny_checkpoint, "--split", "val", "--json", js], capsys) == (
        2, "error: " + AR.ERR_NO_SPLITS.format(path=ff, format="fairface"))
    assert run_cli(["--data", ff, "--checkpoint", tiny_checkpoint, "--folds", paths[0], "--json", js], capsys) == (
        2, "error: " + AR.ERR_FOLDS_UTKFACE.format(path=ff, format="fairface"))
    assert not js.exists()


def test_a_regression_head_has_no_distribution_and_falls_back(tiny_checkpoint, tiny_data, tmp_path, capsys):
    ckpt = load_checkpoint(tiny_checkpoint)
    with pytest.raises(A.AuditError) as e:
        AR.age_distributions(ckpt, np.zeros((1, 32, 32, 3), np.uint8))
    assert str(e.value) == AR.ERR_NO_DISTRIBUTION.format(path=tiny_checkpoint, loss="smooth_l1")
    out = tmp_path / "r.json"
    rc, err = run_cli(["--checkpoint", tiny_checkpoint, "--data", tiny_data, "--json", out,
                       "--cache-dir", tiny_checkpoint.parent / "cache"], capsys)
    assert rc == 0, err
    report = json.loads(out.read_text())
    assert report["age_method"] == "residual"
    assert report["n"] == len(pd.read_csv(tiny_checkpoint / "predictions-val.csv"))


def test_verdicts_round_trip_survive_a_reaudit_and_lapse_with_a_new_label(tmp_path):
    table, probs, _ = planted_ages(n=60, planted=3)
    audit = A.audit_table(table, probs)
    path = tmp_path / "label-review-val.csv"
    wrong, confirmed, cleared = audit["file"][:3]
    R.mark(path, audit[audit["file"] == wrong], R.WRONG)
    R.mark(path, audit[audit["file"].isin([confirmed, cleared])], R.CONFIRMED)
    R.mark(path, audit[audit["file"] == cleared], None)
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # written in place, atomically
    review = R.read_review(path)
    assert dict(zip(review["file"], review["verdict"], strict=True)) == {wrong: R.WRONG, confirmed: R.CONFIRMED}
    again = R.with_reviews(A.audit_table(table, gaussians(table["pred_age"] + 1, 5)), R.read_review(path))
    verdict = again.set_index("file")["verdict"]
    assert (verdict[wrong], verdict[confirmed], verdict[cleared]) == (R.WRONG, R.CONFIRMED, "")
    assert (verdict == "").sum() == len(table) - 2
    relabelled = table.assign(age=np.where(table["file"] == wrong, table["age"] + 1, table["age"]))
    assert R.with_reviews(A.audit_table(relabelled, probs), review).set_index("file")["verdict"][wrong] == ""
    R.mark(path, audit[audit["file"] == wrong], R.CONFIRMED)  # a verdict changed replaces the old one
    assert R.read_review(path).set_index("file")["verdict"].to_dict() == {confirmed: R.CONFIRMED, wrong: R.CONFIRMED}
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(R.ReviewError) as e:
        R.read_review(tmp_path / "bad.csv")
    no_columns = "no column file, gender, verdict"
    assert str(e.value) == R.ERR_REVIEW_UNREADABLE.format(path=tmp_path / "bad.csv", detail=no_columns)


def reviewed(table):
    """An audit with a confirmed suspect and a non-suspect reviewed wrong."""
    audit = A.audit_table(table)
    flagged, clean = audit[audit["flagged"]], audit[~audit["flagged"]]
    verdict = {flagged["file"].iloc[0]: R.CONFIRMED, clean["file"].iloc[0]: R.WRONG}
    return audit.assign(verdict=audit["file"].map(verdict).fillna("")), verdict


@pytest.mark.parametrize("threshold", [None, 0.95])
def test_without_suspects_against_a_direct_computation(threshold):
    table, _ = fake_table(seed=3)
    audit, verdict = reviewed(table)
    sus = audit["flagged"] if threshold is None else audit["score"] >= threshold
    drop = (set(audit["file"][sus]) - {f for f, v in verdict.items() if v == R.CONFIRMED}) | {
        f for f, v in verdict.items() if v == R.WRONG}
    kept = A.without_suspects(table, audit, threshold)
    assert list(kept["file"]) == [f for f in table["file"] if f not in drop]  # in the table's order
    shares = A.suspect_share_by_group(prepare(table), audit, ["race", "gender"], threshold)
    assert set(shares["column"]) == {"race", "gender"}
    for r in shares.itertuples():
        inside = table[table[r.column] == r.group]
        k = inside["file"].isin(drop).sum()
        flagged = inside["file"].isin(set(audit["file"][sus])).sum()
        assert (r.n, r.left_out, r.suspects, r.gender_suspects + r.age_suspects) == (len(inside), k, flagged, flagged)
        assert r.share == pytest.approx(k / len(inside))
        assert (r.share_lo, r.share_hi) == pytest.approx(wilson(k, len(inside)))


def test_the_explorer_shows_suspects_and_records_a_verdict(folds, tiny_data, tmp_path, monkeypatch):
    """The page's new view on a DLDL checkpoint: thumbnails with score and reason, and a verdict written to
    the checkpoint's review file (agegender.review.verdicts.review_path), shown on the next run."""
    ck = tmp_path / "ck" / "fold0"
    shutil.copytree(folds[0][0], ck)
    pred = pd.read_csv(ck / "predictions-val.csv")
    pred["p_female"] = np.where(pred["gender"] == "female", 0.95, 0.05)
    pred.loc[:1, "p_female"] = np.where(pred["gender"][:2] == "female", 0.001, 0.999)  # two confident flips
    pred.to_csv(ck / "predictions-val.csv", index=False)
    monkeypatch.setenv("AGEGENDER_UTKFACE", str(tiny_data))
    monkeypatch.setenv("AGEGENDER_CHECKPOINTS", str(ck.parent))
    at = AppTest.from_file(str(ROOT / "dashboard" / "app.py"), default_timeout=120).run()
    at.switch_page("pages/explorer.py").run()
    at.radio(key="ex_mode").set_value("Suspected label errors").run()
    assert not at.exception and not at.error
    assert any("suspects among" in c.value for c in at.caption)
    pick = at.selectbox(key="ex_pick").value
    assert pick in set(pred["file"][:2])
    assert "Why suspect:" in " ".join(m.value for m in at.markdown)
    next(b for b in at.button if b.label == "Label wrong").click().run()
    assert not at.exception and not at.error
    review = pd.read_csv(R.review_path(ck, "val"))
    assert review.set_index("file")["verdict"].to_dict() == {pick: R.WRONG}
    assert f"— **{R.WRONG}**" in " ".join(m.value for m in at.markdown)


# ---- from the predictions alone: the age_label_tail column ------------------------------------------------------

def test_the_label_tail_column_is_the_audits_computation(folds, tiny_data):
    """Evaluation writes age_label_tail for a DLDL checkpoint: the audit's own tail of the label under the model's
    distribution of the face (and its mirror)."""
    path = folds[0][0]
    ckpt, table = load_checkpoint(path), load_predictions(path, "val")
    assert table[LABEL_TAIL].notna().all()
    images = cached_images(scan(tiny_data), 32, path.parent / "cache")
    where = {s.member: i for i, s in enumerate(images.samples)}
    probs = AR.age_distributions(ckpt, images.pixels[[where[f] for f in table["file"]]])
    lo, hi, _ = A.label_years(table)
    # the same computation, in float32 on batches of another size (other kernels): equal to float32 rounding
    np.testing.assert_allclose(table[LABEL_TAIL], A.age_tail(probs, lo, hi), rtol=FLOAT32, atol=1e-12)


def test_the_audit_from_predictions_loads_no_model_and_ranks_as_with_it(folds, tiny_data, tmp_path, capsys,
                                                                        monkeypatch):
    path = folds[0][0]
    table = load_predictions(path, "val")
    images = cached_images(scan(tiny_data), 32, path.parent / "cache")
    where = {s.member: i for i, s in enumerate(images.samples)}
    probs = AR.age_distributions(load_checkpoint(path), images.pixels[[where[f] for f in table["file"]]])
    with_model = A.audit_table(table, probs)

    def no_model(*a, **k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(checkpoint, "load_checkpoint", no_model)  # audit imports it where it loads a model
    monkeypatch.setattr(AR, "cached_images", no_model)
    out, csv = tmp_path / "a.json", tmp_path / "a.csv"
    rc, err = run_cli(["--checkpoint", path, "--data", tiny_data, "--json", out, "--csv", csv], capsys)
    assert rc == 0, err
    report_ = json.loads(out.read_text())
    assert (report_["age_method"], report_["age_source"]) == ("distribution", "predictions")
    assert list(pd.read_csv(csv)["file"]) == list(with_model["file"])
    np.testing.assert_allclose(pd.read_csv(csv)["p_label"], with_model["p_label"], rtol=FLOAT32)
    # the error explorer's entry point reads no face either
    faces = AR.audit_faces(load_checkpoint(path), table, no_model)  # this module's loader is the real one
    assert list(faces["file"]) == list(with_model["file"])


def test_an_old_table_falls_back_on_the_model_with_a_note(folds, tiny_data, tmp_path, capsys):
    ck = tmp_path / "old"
    shutil.copytree(folds[0][0], ck)
    fresh = load_predictions(ck, "val")
    pd.read_csv(ck / "predictions-val.csv").drop(columns=LABEL_TAIL).to_csv(ck / "predictions-val.csv", index=False)
    out, csv = tmp_path / "a.json", tmp_path / "a.csv"
    rc, err = run_cli(["--checkpoint", ck, "--data", tiny_data, "--json", out, "--csv", csv,
                       "--cache-dir", folds[0][0].parent / "cache"], capsys)
    assert rc == 0 and err == "note: " + A.NOTE_NO_TAILS.format(what="the predictions", path=ck)
    got = pd.read_csv(csv).set_index("file")
    np.testing.assert_allclose(got.loc[fresh["file"], "age_tail"], fresh[LABEL_TAIL], rtol=FLOAT32, atol=1e-12)


def test_split_all_audits_a_folder_of_unseen_images_and_leaves_out_what_the_checkpoint_trained_on(
        tiny_checkpoint, tiny_data, tmp_path, capsys):
    folder = tmp_path / "mixed"
    seen = [s for s in scan(tiny_data).samples if s.split == "train"][:5]
    folder.mkdir()
    for s in seen:
        shutil.copy(tiny_data / s.member, folder / s.name)
    fresh = tmp_path / "fresh"
    for name in make_dataset(fresh, n=12, seed=7):
        shutil.move(fresh / name, folder / name.replace("_2017", "_2019"))  # never in the manifest
    unseen = [p.name for p in folder.iterdir() if p.name.split("_")[3].startswith("2019")]
    assert any(split_of(n) == "train" for n in unseen)  # the split rule alone would have refused these
    manifest = pd.read_csv(tiny_checkpoint / "manifest.csv")
    assert not {image_key(n) for n in unseen} & {image_key(f) for f in manifest["file"]}
    out, csv = tmp_path / "a.json", tmp_path / "a.csv"
    rc, err = run_cli(["--checkpoint", tiny_checkpoint, "--data", folder, "--split", "all", "--json", out, "--csv",
                       csv, "--cache-dir", tmp_path / "cache"], capsys)
    assert rc == 0
    assert err.splitlines()[-1] == "note: " + AR.NOTE_TRAINED_ON.format(n=5, total=17, path=tiny_checkpoint,
                                                                       how=AR.MANIFEST_HOW)
    report_ = json.loads(out.read_text())
    assert report_["n"] == 12 and report_["left_out_trained_on"] == 5
    assert sorted(pd.read_csv(csv)["file"]) == sorted(unseen)
    only_seen = tmp_path / "seen"
    shutil.copytree(folder, only_seen, ignore=lambda d, names: [n for n in names if n in unseen])
    assert run_cli(["--checkpoint", tiny_checkpoint, "--data", only_seen, "--split", "all", "--json", out,
                    "--cache-dir", tmp_path / "cache"], capsys)[0] == 2


def test_a_held_out_fold_is_not_trained_on(folds):
    (_, seen), path = folds, folds[0][0]
    keys = AR.trained_on(path)
    manifest = pd.read_csv(path / "manifest.csv")
    train = manifest[manifest["split"] == "train"]["file"]
    assert keys == {image_key(f) for f in train if fold_of(f, 2) != 0}
    assert {image_key(m.rsplit("/", 1)[-1]) for m in seen[0]} <= keys


# ---- the bias report and page without the suspects -------------------------------------------------------------

def test_the_report_json_label_audit_matches_a_direct_recomputation(tmp_path, capsys):
    table, _ = fake_table(n=800, flips=30, seed=5)
    ages, probs, bad = planted_ages(n=800, planted=20, seed=6)
    table = table.assign(age=ages["age"], pred_age=ages["pred_age"])
    table[LABEL_TAIL] = label_tails(probs, table)
    path = tmp_path / "p.csv"
    write_predictions(table, path)
    audit = A.audit_table(load_predictions(path=path))
    confirmed = audit[audit["flagged"]]["file"].iloc[0]
    review = tmp_path / "review.csv"
    R.mark(review, audit[audit["file"] == confirmed], R.CONFIRMED)
    js = tmp_path / "r.json"
    assert report.main(["--predictions", str(path), "--json", str(js), "--by", "race,gender,race:gender",
                        "--n-boot", "50", "--review", str(review)]) == 0
    assert "label audit (distribution" in capsys.readouterr().out
    got = json.loads(js.read_text())["label_audit"]
    audit = R.with_reviews(audit, R.read_review(review))
    df = load_predictions(path=path)
    clean = A.without_suspects(df, audit)
    assert confirmed in set(clean["file"])
    assert got["suspects"] == A.counts(audit) and got["left_out"] == len(df) - len(clean) == A.counts(audit)[
        "total"] - 1
    assert got["reviewed"] == {R.CONFIRMED: 1, R.WRONG: 0}
    assert set(got["share_by_group"]) == set(got["disparity"]) == {"race", "gender"}  # single columns only
    shares = A.suspect_share_by_group(prepare(df), audit, ["race"])
    pd.testing.assert_frame_equal(pd.DataFrame(got["share_by_group"]["race"]), shares.drop(columns="column"),
                                  check_dtype=False)
    for g in ("race", "gender"):
        before = GroupReport(prepare(df), g, n_boot=50).disparity().set_index("metric")["gap"]
        after = GroupReport(prepare(clean), g, n_boot=50).disparity().set_index("metric")["gap"]
        for r in got["disparity"][g]:
            assert r["gap"] == pytest.approx(before[r["metric"]])
            assert r["gap_clean"] == pytest.approx(after[r["metric"]])
    assert report.main(["--predictions", str(path), "--json", str(js), "--n-boot", "20", "--no-label-audit"]) == 0
    assert "label_audit" not in json.loads(js.read_text())


def test_the_report_leaves_the_audit_out_of_a_table_that_would_need_the_model(tmp_path, capsys):
    table, _ = fake_table(n=200, seed=2)
    path = tmp_path / "p.csv"
    write_predictions(table, path)
    js = tmp_path / "r.json"
    assert report.main(["--predictions", str(path), "--json", str(js), "--n-boot", "20", "--by", "race"]) == 0
    assert "label_audit" not in json.loads(js.read_text())
    assert report.main(["--predictions", str(path), "--json", str(js), "--n-boot", "20", "--by", "race",
                        "--label-audit"]) == 0  # asked for: the residual fallback, with a note
    assert json.loads(js.read_text())["label_audit"]["age_method"] == "residual"
    assert "note: the predictions carry no age_label_tail" in capsys.readouterr().err


def test_the_bias_page_recomputes_every_figure_without_the_suspects(folds, tmp_path, monkeypatch):
    ck = tmp_path / "ck" / "fold0"
    shutil.copytree(folds[0][0], ck)
    pred = pd.read_csv(ck / "predictions-val.csv")
    pred["p_female"] = np.where(pred["gender"] == "female", 0.95, 0.05)
    pred.loc[:2, "p_female"] = np.where(pred["gender"][:3] == "female", 0.001, 0.999)  # three confident flips
    pred.to_csv(ck / "predictions-val.csv", index=False)
    monkeypatch.setenv("AGEGENDER_CHECKPOINTS", str(ck.parent))
    at = AppTest.from_file(str(ROOT / "dashboard" / "app.py"), default_timeout=120).run()
    at.switch_page("pages/bias.py").run()
    at.number_input(key="bias_min").set_value(1).run()
    assert not at.exception and not at.error
    n_all = next(m for m in at.metric if m.label.startswith("gender accuracy")).label
    at.radio(key="bias_leave_out").set_value(A.ALL_SUSPECTS).run()
    assert not at.exception and not at.error
    audit = A.audit_table(load_predictions(ck, "val"))
    k = A.counts(audit)["total"]
    assert k >= 3
    assert any(f"{k} suspected label errors among {len(audit)} faces" in c.value for c in at.caption)
    n_clean = next(m for m in at.metric if m.label.startswith("gender accuracy")).label
    assert n_all == f"gender accuracy (n={len(pred)})" and n_clean == f"gender accuracy (n={len(pred) - k})"
    shares = at.dataframe[0].value
    assert int(shares["suspects"].sum()) == k
    R.mark(R.review_path(ck, "val"), audit[audit["flagged"]].head(1), R.CONFIRMED)  # a confirmed label stays in
    at.run()
    assert not at.exception
    assert next(m for m in at.metric if m.label.startswith("gender accuracy")).label == \
        f"gender accuracy (n={len(pred) - k + 1})"
