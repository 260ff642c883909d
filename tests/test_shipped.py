"""The checkpoint the dashboard ships with: present, loadable, and as good as its card says."""

import json

from agegender.catalog import REPO_CHECKPOINTS
from agegender.checkpoint import load_checkpoint
from agegender.evaluate import main as evaluate_main

SHIPPED = REPO_CHECKPOINTS / "resnet18-utkface"


def test_shipped_checkpoint_loads_and_records_its_targets():
    ckpt = load_checkpoint(SHIPPED)
    test = ckpt.meta["metrics"]["test"]
    assert test["n"] > 2000
    assert test["age_mae"] <= 5.3 and test["gender_accuracy"] >= 0.925
    for name in ("history.csv", "predictions-val.csv", "predictions-test.csv", "manifest.csv"):
        assert (SHIPPED / name).is_file()


def test_shipped_checkpoint_on_real_test_images(real_data, tmp_path):
    js = tmp_path / "m.json"
    assert evaluate_main(["--checkpoint", str(SHIPPED), "--data", str(real_data), "--split", "test",
                          "--limit", "400", "--out", str(tmp_path / "p.csv"), "--json", str(js)]) == 0
    m = json.loads(js.read_text())
    assert m["n"] == 400
    # 400 images: the standard error of the MAE is ~0.3 y, of the accuracy ~1.3 points
    assert m["age_mae"] < 6.3 and m["gender_accuracy"] > 0.9
