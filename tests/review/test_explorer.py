"""The error explorer's library half: which faces it shows, the result it builds for a dataset chip,
and the per-group mean Grad-CAMs (the page only draws them)."""

import numpy as np
import pytest

from agegender.data.utkface import evenly_spaced, scan
from agegender.evaluation.sources import set_chips, set_faces, utkface_chips
from agegender.fairness.groups import prepare
from agegender.models.checkpoint import load_checkpoint
from agegender.predictions import load_predictions
from agegender.review.audit import audit_table
from agegender.review.explorer import (
    chip_result,
    group_mean_cams,
    group_values,
    in_group,
    mean_cams,
    misgendered,
    suspect_caption,
    suspected,
    worst_age_errors,
    years_outside,
)
from agegender.review.verdicts import WRONG

from ..fairness.test_agebins import BINS, SITES, fairface_predictions
from ..fairness.test_fairness import fake_predictions


@pytest.fixture(scope="module")
def ckpt(tiny_checkpoint):
    return load_checkpoint(tiny_checkpoint)


def test_worst_errors_and_misgendered():
    df = fake_predictions(500, seed=2)
    worst = worst_age_errors(df, 10)
    err = (df["pred_age"] - df["age"]).abs()
    assert len(worst) == 10 and set(worst["error"].abs()) <= set(err.nlargest(10))
    wrong = misgendered(df, 1000)
    female = df["gender"] == "female"
    assert set(wrong.index) == set(df.index[(df["p_female"] >= 0.5) != female])
    confidence = (wrong["p_female"] - 0.5).abs().to_numpy()
    assert (np.diff(confidence) <= 0).all()  # the most confident mistakes first


def test_groups_by_name():
    table = prepare(fake_predictions(300, seed=1))
    names = group_values(table, "age_bucket")
    assert names == [n for n in BINS if n in names] and "20-29" in names  # by age, not as text
    part = in_group(table, "age_bucket", "20-29")
    assert len(part) > 0 and ((part["age"] >= 20) & (part["age"] < 30)).all()


def test_groups_of_any_column():
    table = prepare(fairface_predictions())
    assert group_values(table, "site") == sorted(SITES)
    assert group_values(table, "age_bin") == BINS
    for column, value in (("site", "east"), ("age_bin", "70+"), ("race", "Latino_Hispanic")):
        part = in_group(table, column, value)
        assert len(part) == (table[column].astype(str) == value).sum() > 0 and (part[column] == value).all()


def test_years_outside_the_true_bin():
    got = years_outside([25, 35, 1, 80, 5, 29.5, 30.0, np.nan], ["20-29", "20-29", "3-9", "70+", "3-9", "20-29",
                                                                  "20-29", "20-29"])
    np.testing.assert_array_equal(got[:-1], [0, 5, -2, 0, 0, 0, 0])  # a bin 20-29 holds 20 <= age < 30
    assert np.isnan(got[-1])


def test_worst_errors_on_bins_rank_by_bins_then_years():
    df = fairface_predictions(seed=3)
    worst = worst_age_errors(df, 40)
    assert worst["found"].all() and len(worst) == 40
    index = {label: i for i, label in enumerate(BINS)}
    found = prepare(df)[df["found"]]
    bins_off = (found["pred_age_bin"].map(index) - found["age_bin"].map(index)).abs()
    np.testing.assert_array_equal(worst["bin_error"].abs(), np.sort(bins_off.to_numpy())[::-1][:40])
    np.testing.assert_allclose(worst["error"], years_outside(worst["pred_age"], worst["age_bin"]))
    for _, same in worst.groupby(worst["bin_error"].abs()):  # within as many bins off: the furthest out first
        assert (np.diff(same["error"].abs().to_numpy()) <= 0).all()


def test_faces_not_found_are_no_mistakes():
    df = fairface_predictions(seed=3)
    wrong = misgendered(df, 10_000)
    assert wrong["found"].all()
    hit = df[df["found"]]
    assert len(wrong) == ((hit["p_female"] >= 0.5) != (hit["gender"] == "female")).sum()


def test_a_chip_becomes_a_result_the_face_view_shows(ckpt, tiny_checkpoint, tiny_data):
    row = load_predictions(tiny_checkpoint, "val").iloc[0]
    chip = utkface_chips(scan(tiny_data), [row["file"]])[row["file"]]
    r = chip_result(ckpt, row["file"], chip, row)
    assert r.image == row["file"] and r.error is None and len(r.faces) == 1
    face = r.faces[0]
    size = ckpt.preprocess.cache_size
    assert face.predicted and face.box == (0, 0, chip.width, chip.height)
    assert face.pixels.shape == (size, size, 3) and face.pixels.dtype == np.uint8
    assert (face.age, face.p_female) == (row["pred_age"], row["p_female"])  # the table's, not new ones


def test_group_mean_cams(ckpt, tiny_checkpoint, tiny_data):
    sc = scan(tiny_data)
    table = prepare(load_predictions(tiny_checkpoint, "val"))
    means = group_mean_cams(ckpt, lambda files: utkface_chips(sc, files), table, "gender", 2)
    assert set(means) == set(table["gender"].astype(str))
    size = ckpt.preprocess.cache_size
    for name, (count, face, maps) in means.items():
        picked = evenly_spaced(in_group(table, "gender", name), 2)
        assert count == len(picked) <= 2
        assert face.shape == (size, size, 3) and face.dtype == np.uint8
        assert set(maps) == {"older", "female"}
        chips = list(utkface_chips(sc, list(picked["file"])).values())
        want_face, want = mean_cams(ckpt, chips)
        np.testing.assert_array_equal(face, want_face)
        for k, heat in maps.items():
            assert np.isfinite(heat).all() and heat.min() >= 0 and heat.max() <= 1
            np.testing.assert_allclose(heat, want[k], atol=1e-6)


def test_groups_without_chips_are_left_out(ckpt, tiny_checkpoint, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "1_0_0_20170109150557335.jpg.chip.jpg").write_bytes(b"")  # a scan needs one name
    table = prepare(load_predictions(tiny_checkpoint, "val"))
    empty = scan(tmp_path / "empty")
    assert group_mean_cams(ckpt, lambda files: utkface_chips(empty, files), table, "race", 2) == {}


def test_set_chips_are_the_found_faces_of_the_cached_crops():
    from agegender.evaluation.evalset import Crops

    px = np.arange(3 * 8 * 8 * 3, dtype=np.uint8).reshape(3, 8, 8, 3)
    nan = np.full(3, np.nan)
    crops = Crops(["a.jpg", "b.jpg", "c.jpg"], px, np.array([True, False, True]), nan, np.full((3, 4), np.nan),
                  np.full((3, 5, 2), np.nan))
    got = set_chips(crops, ["c.jpg", "b.jpg", "zz.jpg"])
    assert list(got) == ["c.jpg"] and np.array_equal(np.asarray(got["c.jpg"]), px[2])


def test_set_faces_are_the_found_crops_in_the_order_asked():
    from agegender.evaluation.evalset import Crops

    px = np.arange(3 * 8 * 8 * 3, dtype=np.uint8).reshape(3, 8, 8, 3)
    nan = np.full(3, np.nan)
    crops = Crops(["a.jpg", "b.jpg", "c.jpg"], px, np.array([True, False, True]), nan, np.full((3, 4), np.nan),
                  np.full((3, 5, 2), np.nan))
    files, pixels = set_faces(crops, ["c.jpg", "b.jpg", "zz.jpg", "a.jpg"])
    assert files == ["c.jpg", "a.jpg"] and np.array_equal(pixels, px[[2, 0]])


def test_suspects_of_a_group_ranked_with_their_verdicts():
    df = prepare(fake_predictions(400, seed=4))
    flip = df.index[:6]
    df.loc[flip, "p_female"] = np.where(df.loc[flip, "gender"] == "female", 0.001, 0.999)
    audit = audit_table(df)
    audit = audit.assign(verdict=np.where(audit["file"] == df["file"][flip[0]], WRONG, ""))
    every = suspected(audit, df, 1000)
    assert every["flagged"].all() and len(every) == audit["flagged"].sum()
    assert set(df["file"][flip]) <= set(every["file"]) and (np.diff(every["p_set"]) >= 0).all()
    group = in_group(df, "race", df.loc[flip[0], "race"])
    part = suspected(audit, group, 1000)
    assert set(part["file"]) == set(every["file"]) & set(group["file"])
    assert len(suspected(audit, df, 3)) == 3
    r = every.set_index("file").loc[df["file"][flip[0]]].rename(df["file"][flip[0]])
    text = suspect_caption(r, 0)
    assert text.startswith(f"#1 gender {r['score']:.3f}: label {r['age']:.0f} {r['gender']}") and text.endswith(WRONG)
