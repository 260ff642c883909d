"""python -m agegender.leakage (agegender.evaluation.leakage_command, with leakage's classification and figures).

Generated faces cannot test identity, so the command runs on synthetic descriptors placed at known distances
(the descriptor functions monkeypatched); where ../shared exists, planted copies of real train chips among
real held-out chips are found through the real descriptors and their cache.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageOps

from agegender.data.utkface import scan, split_of
from agegender.evaluation import leakage
from agegender.evaluation import leakage_command as lc
from agegender.evaluation.descriptors import Descriptors

from ..conftest import make_dataset

T = leakage.DEFAULT
Z95 = 1.959963984540054


# ---- classification at the thresholds ----------------------------------------------------------------------

def test_each_distance_is_classed_at_the_thresholds():
    e = 1e-6
    d = np.array([0.0, T.duplicate - e, T.duplicate + e, T.look_alike - e, T.look_alike + e, np.nan])
    assert T.duplicate < T.look_alike
    assert list(leakage.classify(d)) == ["duplicate", "duplicate", "look-alike", "look-alike", "", ""]


def test_a_duplicate_needs_the_pixels_to_agree():
    d = np.array([0.05, 0.05, 0.05, T.duplicate + 1e-6])
    r = np.array([T.correlation, T.correlation - 1e-6, np.nan, 1.0])  # NaN: no pixels, not the same picture
    assert list(leakage.classify(d, correlation=r)) == ["duplicate", "look-alike", "look-alike", "look-alike"]


def test_the_younger_face_sets_a_stricter_look_alike_limit():
    (child, child_limit), (teen, teen_limit) = T.young
    assert child_limit < teen_limit < T.look_alike and child < teen
    d = np.array([teen_limit - 1e-6, teen_limit + 1e-6, teen_limit + 1e-6, teen_limit + 1e-6, 0.05, 0.05])
    age = np.array([teen - 1, teen - 1, teen, np.nan, child - 1, child - 1])  # NaN: unknown, the adult limit
    r = np.array([np.nan] * 4 + [1.0, 0.0])
    assert list(leakage.classify(d, age, r)) == ["look-alike", "", "look-alike", "look-alike", "duplicate", ""]


def test_the_pixel_check_sees_the_same_picture_mirrored_brightened_or_cropped():
    rng = np.random.default_rng(0)

    def smooth() -> np.ndarray:  # features a few pixels wide at the thumbnail's 32 px, as a face's are
        return np.asarray(Image.fromarray(rng.integers(40, 216, (6, 6, 3), dtype=np.uint8)).resize(
            (150, 150), Image.BICUBIC))
    face = smooth()
    im = Image.fromarray(face)
    same = [ImageOps.mirror(im), ImageEnhance.Brightness(im).enhance(1.15),
            im.crop((7, 0, 150, 150)).resize((150, 150))]
    for other in same:
        assert leakage.correlation(face, np.asarray(other)) >= T.correlation
    assert leakage.correlation(face, smooth()) < T.correlation
    assert np.isnan(leakage.correlation(face, np.zeros_like(face)))


# ---- shares by group ---------------------------------------------------------------------------------------

def _wilson(k: int, n: int) -> tuple[float, float]:
    p = k / n
    centre = (p + Z95**2 / (2 * n)) / (1 + Z95**2 / n)
    half = Z95 / (1 + Z95**2 / n) * np.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def test_shares_by_group_match_a_brute_force_count_with_wilson_intervals():
    rng = np.random.default_rng(1)
    n = 500
    race = rng.choice(["White", "Black", "Asian"], n)
    gender = rng.choice(["male", "female"], n)
    flagged = rng.random(n) < np.where(race == "Asian", 0.3, 0.05)
    duplicate = flagged & (rng.random(n) < 0.3)
    got = leakage.shares_by_group({"race": race, "gender": gender}, flagged, duplicate)
    assert set(got) == {"race", "gender"}
    for column, values in (("race", race), ("gender", gender)):
        assert [r["group"] for r in got[column]] == sorted(set(values))
        for row in got[column]:
            rows = [i for i in range(n) if values[i] == row["group"]]
            k = sum(bool(flagged[i]) for i in rows)
            assert (row["n"], row["n_flagged"]) == (len(rows), k)
            assert row["n_duplicate"] == sum(bool(duplicate[i]) for i in rows)
            assert row["share"] == pytest.approx(k / len(rows))
            assert (row["lo"], row["hi"]) == pytest.approx(_wilson(k, len(rows)), abs=1e-6)
    asian = next(r for r in got["race"] if r["group"] == "Asian")
    white = next(r for r in got["race"] if r["group"] == "White")
    assert asian["lo"] > white["hi"]  # the intervals separate groups this different


def test_age_buckets_come_in_age_order():
    got = leakage.shares_by_group({"age_bucket": np.array(["10-19", "3-9", "70+", "0-2"])}, np.zeros(4, bool),
                                  np.zeros(4, bool))
    assert [r["group"] for r in got["age_bucket"]] == ["0-2", "3-9", "10-19", "70+"]


def test_missing_group_values_are_left_out():
    got = leakage.shares_by_group({"race": np.array(["A", "", None, "A"], dtype=object)},
                                  np.array([True, True, True, False]), np.zeros(4, bool))
    assert got["race"] == [{"group": "A", "n": 2, "n_flagged": 1, "n_duplicate": 0, "share": 0.5,
                            "lo": pytest.approx(_wilson(1, 2)[0]), "hi": pytest.approx(_wilson(1, 2)[1])}]


# ---- figures with and without the flagged faces ------------------------------------------------------------

def test_with_and_without_figures_on_a_small_table():
    err = np.array([-1.0, 2.0, 3.0, -4.0, 10.0])  # signed: the MAE takes the absolute error
    correct = np.array([True, False, True, True, False])
    drop = np.array([False, False, False, False, True])
    got = leakage.with_without(err, correct, drop, n_boot=500)
    assert (got["n"], got["n_without"]) == (5, 4)
    mae = got["age_mae"]
    assert (mae["with"], mae["without"], mae["difference"]) == pytest.approx((4.0, 2.5, 1.5))
    acc = got["gender_accuracy"]
    assert (acc["with"], acc["without"], acc["difference"]) == pytest.approx((0.6, 0.75, -0.15))
    # the dropped face has the largest error and a wrong call: no resample can move the difference the other way
    assert 0 <= mae["lo"] < mae["difference"] < mae["hi"]
    assert acc["lo"] < acc["difference"] < acc["hi"] <= 0


def test_the_difference_is_paired_dropping_nothing_gives_exactly_zero():
    rng = np.random.default_rng(0)
    got = leakage.with_without(rng.normal(0, 5, 300), rng.random(300) < 0.9, np.zeros(300, bool), n_boot=200)
    for m in ("age_mae", "gender_accuracy"):
        assert (got[m]["difference"], got[m]["lo"], got[m]["hi"]) == (0.0, 0.0, 0.0)


def test_dropping_everything_leaves_no_figure_without():
    got = leakage.with_without(np.ones(3), np.ones(3, bool), np.ones(3, bool), n_boot=50)
    assert got["n_without"] == 0 and np.isnan(got["age_mae"]["without"]) and np.isnan(got["age_mae"]["lo"])


# ---- the command on synthetic descriptors ------------------------------------------------------------------

def _fake_descriptors(monkeypatch, planted: dict[str, tuple[str, float]]):
    """Every chip far from every other (random directions at distance ~1.4), except ``planted``:
    file -> (the file it copies, the distance to put between them)."""
    def fake(scan_, cache_dir=None, progress=None):
        files = sorted(s.member for s in scan_.samples)
        rng = np.random.default_rng(len(files))
        v = rng.normal(0, 1, (len(files), 128))
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        row = {f: i for i, f in enumerate(files)}
        for f, (src, dist) in planted.items():
            if f in row and src in row:
                step = rng.normal(0, 1, 128)
                step -= step @ v[row[src]] * v[row[src]]
                v[row[f]] = v[row[src]] + dist * step / np.linalg.norm(step)
        return Descriptors(files, v.astype(np.float32), np.ones(len(files), bool))
    monkeypatch.setattr(lc, "utkface_descriptors", fake)


@pytest.fixture
def small_set(tmp_path):
    """Generated chips; among the adults, held[0] is a copy of train[0]'s picture placed at a duplicate's
    distance, held[1] another picture at the same distance (the pixel check says look-alike), held[2] just
    inside the look-alike limit, held[3] just outside it."""
    folder = tmp_path / "utk"
    names = make_dataset(folder, n=120, size=24)
    adult = [n for n in names if int(n.split("_")[0]) >= 20]
    held = [n for n in adult if split_of(n) != "train"]
    train = [n for n in adult if split_of(n) == "train"]
    assert len(held) >= 4 and len(train) >= 4
    (folder / held[0]).write_bytes((folder / train[0]).read_bytes())
    planted = {held[0]: (train[0], 0.05), held[1]: (train[1], 0.05), held[2]: (train[2], T.look_alike - 0.01),
               held[3]: (train[3], T.look_alike + 0.01)}
    return folder, names, held, train, planted


def test_the_command_writes_the_json_and_the_csv(small_set, monkeypatch, tmp_path):
    folder, names, held, train, planted = small_set
    _fake_descriptors(monkeypatch, planted)
    out, pairs = tmp_path / "leak.json", tmp_path / "pairs.csv"
    assert lc.main(["--data", str(folder), "--json", str(out), "--csv", str(pairs), "--n-boot", "20",
                    "--cache-dir", str(tmp_path / "cache")]) == 0
    got = json.loads(out.read_text())
    for key in ("n", "n_duplicate", "n_look_alike", "threshold_duplicate", "threshold_look_alike", "by_group",
                "pairs", "n_reference"):
        assert key in got
    every = [n for n in names if split_of(n) != "train"]
    assert (got["n"], got["n_reference"]) == (len(every), len(names) - len(every))
    assert (got["n_duplicate"], got["n_look_alike"]) == (1, 2)
    assert (got["threshold_duplicate"], got["threshold_look_alike"]) == (T.duplicate, T.look_alike)
    kinds = {p["file"]: (p["match"], p["kind"]) for p in got["pairs"]}
    assert kinds == {held[0]: (train[0], "duplicate"), held[1]: (train[1], "look-alike"),
                     held[2]: (train[2], "look-alike")}
    assert {p["file"]: p["distance"] for p in got["pairs"]} == pytest.approx(
        {held[0]: 0.05, held[1]: 0.05, held[2]: T.look_alike - 0.01}, abs=1e-4)
    assert set(got["by_group"]) == {"race", "gender", "age_bucket"}
    assert sum(r["n"] for r in got["by_group"]["gender"]) == len(every)
    assert sum(r["n_flagged"] for r in got["by_group"]["race"]) == 3
    assert sum(r["n_duplicate"] for r in got["by_group"]["age_bucket"]) == 1
    with open(pairs, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["file"], r["match"], r["kind"]) for r in rows] == [(p["file"], p["match"], p["kind"])
                                                                  for p in got["pairs"]]


def test_against_compares_every_face_of_the_set(small_set, monkeypatch, tmp_path):
    folder, names, held, train, planted = small_set
    _fake_descriptors(monkeypatch, {})
    other = tmp_path / "other"
    make_dataset(other, n=10, size=24, seed=5)
    out = tmp_path / "leak.json"
    assert lc.main(["--data", str(other), "--against", str(folder), "--json", str(out), "--n-boot", "0",
                    "--cache-dir", str(tmp_path / "cache")]) == 0
    got = json.loads(out.read_text())
    assert (got["n"], got["n_reference"], got["pairs"]) == (10, len(names), [])


def test_with_a_checkpoint_a_set_is_checked_against_the_faces_it_trained_on(small_set, monkeypatch, tmp_path):
    folder, names, held, train, planted = small_set

    def by_name(scan_, cache_dir=None, progress=None):  # one descriptor per picture, whichever set holds it
        files = sorted(s.member for s in scan_.samples)
        v = np.stack([np.random.default_rng(int(lc.image_key(f)[-7:])).normal(size=128) for f in files])
        return Descriptors(files, (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32),
                           np.ones(len(files), bool))

    monkeypatch.setattr(lc, "utkface_descriptors", by_name)
    other = tmp_path / "other"
    other.mkdir()
    for n in names[:3]:  # the same pictures, in another set
        (other / n).write_bytes((folder / n).read_bytes())
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "manifest.csv").write_text("file,split\n" + "".join(f"{n},train\n" for n in names[1:]))
    monkeypatch.setattr(lc, "trained_on", lambda folder: {lc.image_key(n) for n in names[1:]})
    monkeypatch.setattr(lc, "checkpoint_figures", lambda *a: {})
    out = tmp_path / "leak.json"
    assert lc.main(["--data", str(other), "--against", str(folder), "--checkpoint", str(ckpt), "--json", str(out),
                    "--cache-dir", str(tmp_path / "cache")]) == 0
    got = json.loads(out.read_text())
    assert (got["n"], got["n_reference"]) == (3, len(names) - 1)  # names[0] is not a face it trained on
    assert sorted(p["file"] for p in got["pairs"]) == sorted(names[1:3])


def test_set_and_checkpoint_rules_are_one_line_each(small_set, capsys, tmp_path):
    folder = small_set[0]
    fair = tmp_path / "fair"
    fair.mkdir()
    (fair / "labels.csv").write_text("file,age,gender,race\n")
    assert lc.main(["--json", str(tmp_path / "x.json")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {lc.ERR_NO_DATA}"
    assert lc.main(["--data", str(folder)]) == 2
    assert capsys.readouterr().err.strip() == f"error: {lc.ERR_NO_JSON}"
    assert lc.main(["--data", str(folder), "--against", str(folder), "--checkpoint", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == f"error: {lc.ERR_NO_JSON}"  # never the checkpoint's own check
    assert lc.main(["--set", "fairface", "--json", str(tmp_path / "x.json")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {lc.ERR_SET_AGAINST}"


def test_an_output_in_a_missing_folder_is_refused_before_any_face_is_read(small_set, monkeypatch, capsys,
                                                                         tmp_path):
    def never(*a, **k):
        raise AssertionError("descriptors read before the outputs were checked")
    monkeypatch.setattr(lc, "utkface_descriptors", never)
    out = tmp_path / "no" / "leak.json"
    assert lc.main(["--data", str(small_set[0]), "--json", str(out)]) == 2
    assert lc.ERR_OUT_FOLDER.format(path=str(out), folder=str(out.parent)) in capsys.readouterr().err
    pairs = tmp_path / "gone" / "pairs.csv"
    assert lc.main(["--data", str(small_set[0]), "--json", str(tmp_path / "a.json"), "--csv", str(pairs)]) == 2
    assert lc.ERR_OUT_FOLDER.format(path=str(pairs), folder=str(pairs.parent)) in capsys.readouterr().err
    assert not (tmp_path / "a.json").exists()


def test_a_checkpoint_without_a_manifest_is_refused(small_set, monkeypatch, capsys, tmp_path):
    _fake_descriptors(monkeypatch, {})
    code = lc.main(["--data", str(small_set[0]), "--checkpoint", str(tmp_path), "--json", str(tmp_path / "x.json"),
                    "--cache-dir", str(tmp_path / "cache")])
    assert code == 2
    assert lc.ERR_NO_MANIFEST.format(path=str(tmp_path)) in capsys.readouterr().err


def test_the_checkpoint_splits_come_from_its_manifest(small_set, monkeypatch, tmp_path):
    folder, names, held, train, planted = small_set
    _fake_descriptors(monkeypatch, {})
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    # the checkpoint's own split: the first two names held out, the next five its train images
    lines = ["file,split"] + [f"{n},test" for n in names[:2]] + [f"{n},train" for n in names[2:7]]
    (ckpt / "manifest.csv").write_text("\n".join(lines) + "\n")
    monkeypatch.setattr(lc, "trained_on", lambda folder: {lc.image_key(n) for n in names[2:7]})
    side = lc.read_side(lc.read_dataset(folder), tmp_path / "cache")
    q, r = lc.utkface_splits(side, str(ckpt))
    assert sorted(side.table["file"][q]) == sorted(names[:2])
    assert sorted(side.table["file"][r]) == sorted(names[2:7])


def test_checkpoint_figures_drop_the_flagged_faces(monkeypatch):
    import pandas as pd

    table = pd.DataFrame({"file": ["a.jpg", "b.jpg", "c.jpg", "d.jpg"], "age": [20.0, 30, 40, 50],
                          "pred_age": [21.0, 33, 40, 60], "gender": ["male", "female", "female", "male"],
                          "p_female": [0.1, 0.9, 0.2, 0.8], "race": ["A", "A", "B", "B"], "found": True})
    class Source:
        def __init__(self, ckpt, name):
            self.name = name

        def load(self):
            if self.name == "fairface":
                raise lc.ResultsError("not evaluated yet")
            return table

    monkeypatch.setattr(lc.sources, "source", Source)
    matched = pd.DataFrame({"file": ["d.jpg", "a.jpg"], "kind": ["look-alike", ""]})
    assert lc.checkpoint_figures("ckpt", matched, 50, ["fairface"]) == {}  # a set not evaluated has no figures
    got = lc.checkpoint_figures("ckpt", matched, n_boot=50)
    assert set(got) == {"val", "test"}
    fig = got["test"]
    assert fig["all"]["age_mae"]["with"] == pytest.approx(3.5) and fig["all"]["age_mae"]["without"] == pytest.approx(
        4 / 3)
    assert fig["all"]["gender_accuracy"]["with"] == pytest.approx(0.5)
    assert fig["all"]["gender_accuracy"]["without"] == pytest.approx(2 / 3)
    assert fig["B"]["age_mae"]["without"] == pytest.approx(0.0) and fig["A"]["n_without"] == 2


# ---- planted copies of real chips --------------------------------------------------------------------------

def _planted(im: Image.Image, i: int) -> Image.Image:
    """One of the issue's same-picture transforms, in turn."""
    w, h = im.size
    c = round(0.05 * w)
    ways = [lambda: im, lambda: ImageOps.mirror(im), lambda: im.crop((c, c // 2, w, h)).resize((w, h)),
            lambda: ImageEnhance.Brightness(im).enhance(1.15), lambda: ImageEnhance.Brightness(im).enhance(0.85)]
    return ways[i % len(ways)]()


def test_planted_copies_of_real_train_chips_are_found(real_data, tmp_path):
    """20 planted copies of real train chips (re-encoded, mirrored, cropped, brightened) among 200 held-out chips
    find their original among 400 train chips. The sides are small folders described here (a few hundred chips,
    seconds), so the test needs no cache of the whole set; docs/leakage.md measures the whole set."""
    data = real_data
    s = scan(data)
    rng = np.random.default_rng(0)
    train = [x for x in s.samples if x.split == "train"]
    held = [x for x in s.samples if x.split != "train"]
    ref, folder = tmp_path / "train", tmp_path / "mixed"
    ref.mkdir()
    folder.mkdir()
    picked = rng.choice(len(train), 400, replace=False)
    for j in picked:
        (ref / train[j].name).write_bytes((data / train[j].member).read_bytes())
    for x in rng.choice(held, 200, replace=False):
        (folder / x.name).write_bytes((data / x.member).read_bytes())
    sources = {}
    for i, j in enumerate(picked[:20]):
        x = train[j]
        name = f"{x.age}_{x.gender}_{x.race}_29990101{i:09d}.jpg.chip.jpg"  # a name no real chip has
        buf = io.BytesIO()
        _planted(Image.open(data / x.member).convert("RGB"), i).save(buf, "JPEG", quality=60 + 35 * (i % 2))
        (folder / name).write_bytes(buf.getvalue())
        sources[name] = x.name
    reference = lc.read_side(lc.read_dataset(ref), tmp_path / "cache")
    query = lc.read_side(lc.read_dataset(folder), tmp_path / "cache")
    matched = lc.match(query, reference, np.arange(len(query.table)), np.arange(len(reference.table)))
    found = matched[matched["file"].isin(sources)]
    hits = sum(r["kind"] != "" and Path(r["match"]).name == sources[r["file"]] for _, r in found.iterrows())
    assert hits >= 19, found[["file", "match", "distance", "kind"]]
