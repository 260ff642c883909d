"""The label audit: planted label errors rank first, the confident-learning thresholds and the age tails match a
hand computation, folds hold out what they say, the CLI refuses what is no audit, verdicts round-trip, and the
error explorer shows the suspects and records a verdict."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from agegender import audit as A
from agegender import training
from agegender.checkpoint import load_checkpoint
from agegender.data import cached_images, fold_of, scan, split_of
from agegender.datasets import ERR_NOT_FOUND
from agegender.fairness import prepare, wilson
from agegender.inference import predict_checkpoint
from agegender.meta import write_meta

from .conftest import ROOT, tiny_config

RACES = ("White", "Black", "Asian")


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
    assert (np.diff(audit[audit["flagged"]]["p_label"]) >= 0).all()  # most suspect first


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


@pytest.mark.parametrize("method", ["distribution", "residual"])
def test_planted_age_errors_rank_first(method):
    table, probs, bad = planted_ages()
    audit = A.audit_table(table, probs if method == "distribution" else None)
    assert audit.attrs["age_method"] == method
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
    write_meta(folder, {"arch": "resnet18", "preprocess": {}, "age_offset": 0, "age_scale": 1, "labels": {},
                        "weights_sha256": "0", "dataset_fingerprint": fingerprint,
                        "train_config": {"holdout_fold": fold, "folds": k}})
    return str(folder)


def test_fold_sets_must_cover_every_fold_once_on_the_same_data(tmp_path):
    a, b, c = (fake_fold(tmp_path / n, f) for n, f in (("a", 0), ("b", 1), ("c", 1)))
    assert A.check_folds([b, a], "f" * 64, "D") == {0: tmp_path / "a", 1: tmp_path / "b"}
    for folders, held in (([a], "0"), ([a, b, c], "0, 1, 1"), ([b, c], "1, 1")):
        with pytest.raises(A.AuditError) as e:
            A.check_folds(folders, "f" * 64, "D")
        assert str(e.value) == A.ERR_FOLD_COVERAGE.format(held=held, k=2, last=1)
    three = fake_fold(tmp_path / "t", 2, k=3)
    with pytest.raises(A.AuditError) as e:
        A.check_folds([a, three], "f" * 64, "D")
    assert str(e.value) == A.ERR_FOLD_COUNTS.format(counts="a: 2, t: 3")
    with pytest.raises(A.AuditError) as e:
        A.check_folds([a, b], "e" * 64, "D")
    assert str(e.value) == A.ERR_FOLD_DATA.format(path=tmp_path / "a", theirs="f" * 64, data="D", ours="e" * 64)
    none = fake_fold(tmp_path / "n", -1)
    with pytest.raises(A.AuditError) as e:
        A.check_folds([none, a], "f" * 64, "D")
    assert str(e.value) == A.ERR_NOT_HELD_OUT.format(path=tmp_path / "n")


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
    rc = A.main([str(a) for a in args])
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
        2, "error: " + A.ERR_TRAIN_NEEDS_FOLDS.format(split="train"))
    assert run_cli([*base, "--split", "train", "--folds", f"{paths[0]},{paths[0]}"], capsys) == (
        2, "error: " + A.ERR_FOLD_COVERAGE.format(held="0, 0", k=2, last=1))
    assert run_cli([*base, "--split", "train", "--folds", f"{paths[0]},{tiny_checkpoint}"], capsys) == (
        2, "error: " + A.ERR_NOT_HELD_OUT.format(path=tiny_checkpoint))
    assert run_cli([*base, "--split", "val"], capsys) == (2, "error: " + A.ERR_NEEDS_CHECKPOINT.format(split="val"))
    missing = tmp_path / "nowhere"
    assert run_cli(["--data", missing, "--checkpoint", tiny_checkpoint, "--json", js], capsys) == (
        2, "error: " + ERR_NOT_FOUND.format(path=missing))
    ff = tmp_path / "ff"
    ff.mkdir()
    (ff / "labels.csv").write_text("file,age,gender,race\n")
    assert run_cli(["--data", ff, "--json", js], capsys) == (
        2, "error: " + A.ERR_NEEDS_CHECKPOINT_SET.format(path=ff, format="fairface"))
    assert run_cli(["--data", ff, "--checkpoint", tiny_checkpoint, "--split", "val", "--json", js], capsys) == (
        2, "error: " + A.ERR_NO_SPLITS.format(path=ff, format="fairface"))
    assert run_cli(["--data", ff, "--checkpoint", tiny_checkpoint, "--folds", paths[0], "--json", js], capsys) == (
        2, "error: " + A.ERR_FOLDS_UTKFACE.format(path=ff, format="fairface"))
    assert not js.exists()


def test_a_regression_head_has_no_distribution_and_falls_back(tiny_checkpoint, tiny_data, tmp_path, capsys):
    ckpt = load_checkpoint(tiny_checkpoint)
    with pytest.raises(A.AuditError) as e:
        A.age_distributions(ckpt, np.zeros((1, 32, 32, 3), np.uint8))
    assert str(e.value) == A.ERR_NO_DISTRIBUTION.format(path=tiny_checkpoint, loss="smooth_l1")
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
    A.mark(path, audit[audit["file"] == wrong], A.WRONG)
    A.mark(path, audit[audit["file"].isin([confirmed, cleared])], A.CONFIRMED)
    A.mark(path, audit[audit["file"] == cleared], None)
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # written in place, atomically
    review = A.read_review(path)
    assert dict(zip(review["file"], review["verdict"], strict=True)) == {wrong: A.WRONG, confirmed: A.CONFIRMED}
    again = A.with_reviews(A.audit_table(table, gaussians(table["pred_age"] + 1, 5)), A.read_review(path))
    verdict = again.set_index("file")["verdict"]
    assert (verdict[wrong], verdict[confirmed], verdict[cleared]) == (A.WRONG, A.CONFIRMED, "")
    assert (verdict == "").sum() == len(table) - 2
    relabelled = table.assign(age=np.where(table["file"] == wrong, table["age"] + 1, table["age"]))
    assert A.with_reviews(A.audit_table(relabelled, probs), review).set_index("file")["verdict"][wrong] == ""
    A.mark(path, audit[audit["file"] == wrong], A.CONFIRMED)  # a verdict changed replaces the old one
    assert A.read_review(path).set_index("file")["verdict"].to_dict() == {confirmed: A.CONFIRMED, wrong: A.CONFIRMED}
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(A.AuditError) as e:
        A.read_review(tmp_path / "bad.csv")
    no_columns = "no column file, gender, verdict"
    assert str(e.value) == A.ERR_REVIEW_UNREADABLE.format(path=tmp_path / "bad.csv", detail=no_columns)


def test_review_files_live_beside_the_predictions(tmp_path):
    from agegender.results import set_folder

    assert A.review_path(tmp_path, "val") == tmp_path / "label-review-val.csv"
    assert A.review_path(tmp_path, "ff") == set_folder("ff") / "label-review-ff.csv"


def reviewed(table):
    """An audit with a confirmed suspect and a non-suspect reviewed wrong."""
    audit = A.audit_table(table)
    flagged, clean = audit[audit["flagged"]], audit[~audit["flagged"]]
    verdict = {flagged["file"].iloc[0]: A.CONFIRMED, clean["file"].iloc[0]: A.WRONG}
    return audit.assign(verdict=audit["file"].map(verdict).fillna("")), verdict


@pytest.mark.parametrize("threshold", [None, 0.95])
def test_without_suspects_against_a_direct_computation(threshold):
    table, _ = fake_table(seed=3)
    audit, verdict = reviewed(table)
    sus = audit["flagged"] if threshold is None else audit["score"] >= threshold
    drop = (set(audit["file"][sus]) - {f for f, v in verdict.items() if v == A.CONFIRMED}) | {
        f for f, v in verdict.items() if v == A.WRONG}
    kept = A.without_suspects(table, audit, threshold)
    assert list(kept["file"]) == [f for f in table["file"] if f not in drop]  # in the table's order
    shares = A.suspect_share_by_group(prepare(table), audit, ["race", "gender"], threshold)
    assert set(shares["column"]) == {"race", "gender"}
    for r in shares.itertuples():
        inside = table[table[r.column] == r.group]
        k = inside["file"].isin(drop).sum()
        assert (r.n, r.suspects, r.gender + r.age) == (len(inside), k, k)
        assert r.share == pytest.approx(k / len(inside))
        assert (r.share_lo, r.share_hi) == pytest.approx(wilson(k, len(inside)))


def test_the_explorer_shows_suspects_and_records_a_verdict(folds, tiny_data, tmp_path, monkeypatch):
    """The page's new view on a DLDL checkpoint: thumbnails with score and reason, and a verdict written to
    the checkpoint's review file, shown on the next run."""
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
    at.button(key="ex_verdict_Label wrong").click().run()
    assert not at.exception and not at.error
    review = pd.read_csv(ck / "label-review-val.csv")
    assert review.set_index("file")["verdict"].to_dict() == {pick: A.WRONG}
    assert f"— **{A.WRONG}**" in " ".join(m.value for m in at.markdown)
