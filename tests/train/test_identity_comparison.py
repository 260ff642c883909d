"""benchmarks.identity_split: the file-split run against the identity-split run on the identity split's test faces,
and on those neither trained on, with paired intervals."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from benchmarks import identity_split as IS

N = 600


def run(folder, split: np.ndarray, extra_error: np.ndarray, base: pd.DataFrame) -> None:
    folder.mkdir()
    pd.DataFrame({"file": base["file"], "split": split}).to_csv(folder / "manifest.csv", index=False)
    base.assign(pred_age=base["age"] + extra_error).to_csv(folder / IS.PREDICTIONS, index=False)


def test_both_sets_of_faces_and_the_sign_of_the_difference(tmp_path):
    rng = np.random.default_rng(0)
    age = rng.integers(1, 90, N)
    female = rng.random(N) < 0.5
    files = [f"{a}_{int(f)}_0_{i}.jpg.chip.jpg" for i, (a, f) in enumerate(zip(age, female, strict=True))]
    base = pd.DataFrame({"file": files,
                         "age": age, "gender": np.where(female, "female", "male"),
                         "race": rng.choice(["White", "Black", "Asian"], N), "found": True,
                         "p_female": np.where(female, 0.9, 0.1)})
    file_split = rng.choice(["train", "val", "test"], N, p=[0.8, 0.1, 0.1])
    identity_split = np.where(np.arange(N) < 200, "test", "train")
    # the file run errs by 2 years, the identity run by 3: identity - file is +1 year on every face
    run(tmp_path / "file", file_split, np.full(N, 2.0), base)
    run(tmp_path / "identity", identity_split, np.full(N, 3.0), base)
    # the file split's leakage check flags the first 50 faces: those neither run trained on are the third set
    pairs = [{"file": f, "match": "x.jpg", "distance": 0.3, "kind": "look-alike"} for f in base["file"][:50]]
    (tmp_path / "leakage.json").write_text(json.dumps({"n": N, "pairs": pairs}))
    (name_all, all_, races), (name_unseen, unseen, _), (_, alike, _) = IS.compare(
        tmp_path / "file", tmp_path / "identity", 200, tmp_path / "leakage.json")
    assert alike["n"].iloc[0] == int(np.isin(file_split[:50], ["val", "test"]).sum())
    assert alike["age_mae_delta"].iloc[0] == 1.0
    assert all_["n"].iloc[0] == 200
    assert unseen["n"].iloc[0] == int(np.isin(file_split[:200], ["val", "test"]).sum())
    for table in (all_, unseen):
        r = table.iloc[0]
        assert r["age_mae_a"] == 2.0 and r["age_mae_b"] == 3.0 and r["age_mae_delta_lo"] == 1.0
        assert r["gender_accuracy_delta"] == 0.0
    assert set(races["race"]) == {"White", "Black", "Asian"} and races["n"].sum() == 200
    assert IS.main(["--file", str(tmp_path / "file"), "--identity", str(tmp_path / "nowhere")]) == 2
