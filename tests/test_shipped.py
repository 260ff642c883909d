"""The checkpoints the dashboard ships with: present, loadable, and as good as their card says."""

import json

import pytest

from agegender.evaluation.evaluate import main as evaluate_main
from agegender.meta import soup_runs
from agegender.models.catalog import REPO_CHECKPOINTS
from agegender.models.checkpoint import load_checkpoint
from agegender.report.modelcard import main as modelcard_main
from agegender.train.soup import run_histories

SHIPPED = [REPO_CHECKPOINTS / "dlib-resnet29-utkface", REPO_CHECKPOINTS / "dlib-resnet29-balanced"]
shipped = pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])


@shipped
def test_shipped_checkpoint_loads_and_records_its_targets(path):
    ckpt = load_checkpoint(path)
    test = ckpt.meta["metrics"]["test"]
    assert test["n"] > 2000
    assert test["age_mae"] <= 5.3 and test["gender_accuracy"] >= 0.925
    for name in ("predictions-val.csv", "predictions-test.csv", "manifest.csv"):
        assert (path / name).is_file()
    runs = soup_runs(ckpt.meta)  # a soup keeps each run's history instead of its own
    assert (path / "history.csv").is_file() or len(run_histories(path, ckpt.meta)) == len(runs) >= 2


def test_the_balanced_checkpoint_records_its_weighting():
    meta = load_checkpoint(SHIPPED[1]).meta
    runs = soup_runs(meta) or [meta]  # a soup is balanced when each of its runs was
    for balance in [meta["balance"], *(r["balance"] for r in runs)]:
        assert balance["method"] == "loss" and balance["cells"] == "ethnicity x age bucket"
        assert balance["within"] == "age bucket"
        weights = [c["age_weight"] for c in balance["by_cell"].values()]
        assert len(weights) == 5 * 9 and max(weights) > min(weights) > 0


def test_the_model_card_matches_the_shipped_checkpoints(tmp_path):
    card = tmp_path / "README.md"
    # the command's own defaults, so that the check follows them if they change
    assert modelcard_main(["--out", str(card)]) == 0
    assert card.read_text() == (REPO_CHECKPOINTS / "README.md").read_text(), (
        "checkpoints/README.md is stale: run python -m agegender.modelcard")


@shipped
def test_shipped_checkpoint_on_real_test_images(path, real_data, tmp_path):
    js = tmp_path / "m.json"
    assert evaluate_main(["--checkpoint", str(path), "--data", str(real_data), "--split", "test",
                          "--limit", "400", "--out", str(tmp_path / "p.csv"), "--json", str(js)]) == 0
    m = json.loads(js.read_text())
    assert m["n"] == 400
    # 400 images: the standard error of the MAE is ~0.3 y, of the accuracy ~1.3 points
    assert m["age_mae"] < 6.3 and m["gender_accuracy"] > 0.9
