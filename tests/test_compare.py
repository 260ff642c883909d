import numpy as np
import pytest

from agegender.compare import agreement, pair, paired_deltas

from .test_fairness import fake_predictions


@pytest.fixture(scope="module")
def two():
    a = fake_predictions(900, seed=1)
    b = a.copy()
    b["pred_age"] = (b["pred_age"] + np.where(b["race"] == "Asian", 4.0, 0.0)).round(2)  # worse on one group
    b.loc[::4, "p_female"] = 1 - b.loc[::4, "p_female"]
    return a, b.sample(frac=1, random_state=0).iloc[:800]  # b scored a subset, in another order


def test_pairs_only_shared_images(two):
    a, b = two
    m = pair(a, b)
    assert len(m) == 800 and set(m["file"]) == set(b["file"])
    with pytest.raises(ValueError, match="share no scored image"):
        pair(a.iloc[:5], a.iloc[5:10])


def test_identical_checkpoints_have_zero_deltas(two):
    a, _ = two
    d = paired_deltas(pair(a, a), "race", n_boot=200)
    assert np.allclose(d["age_mae_delta"], 0) and np.allclose(d["age_mae_delta_lo"], 0)
    assert np.allclose(d["age_mae_delta_hi"], 0)


def test_deltas_match_direct_computation_and_find_the_worse_group(two):
    a, b = two
    m = pair(a, b)
    d = paired_deltas(m, "race", n_boot=300).set_index("race")
    for race, g in m.groupby("race"):
        mae_a = (g["pred_age_a"] - g["age"]).abs().mean()
        mae_b = (g["pred_age_b"] - g["age"]).abs().mean()
        assert d.loc[race, "age_mae_delta"] == pytest.approx(mae_b - mae_a)
        assert d.loc[race, "age_mae_delta_lo"] <= d.loc[race, "age_mae_delta"] <= d.loc[race, "age_mae_delta_hi"]
    assert d["age_mae_delta"].idxmax() == "Asian" and d.loc["Asian", "age_mae_delta_lo"] > 0


def test_agreement(two):
    a, b = two
    ag = agreement(pair(a, b), "race")
    m = pair(a, b)
    expected = ((m["p_female_a"] >= 0.5) != (m["p_female_b"] >= 0.5)).mean()
    assert ag["gender_disagreement"] == pytest.approx(expected)
    assert 0.15 < expected < 0.35
    assert ag["by_group"]["n"].sum() == 800
