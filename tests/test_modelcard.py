import json
import shutil

from agegender.modelcard import main as modelcard_main


def test_model_card_from_metadata_and_predictions(tiny_checkpoint, tmp_path):
    root = tmp_path / "ck"
    shutil.copytree(tiny_checkpoint, root / "tiny")
    assert modelcard_main(["--root", str(root), "--n-boot", "50"]) == 0
    text = (root / "README.md").read_text()
    meta = json.loads((root / "tiny" / "meta.json").read_text())
    n = meta["metrics"]["test"]["n"]
    assert "## tiny" in text and f"| **all** | {n} |" in text
    assert f"{meta['metrics']['test']['age_mae']:.2f} y [" in text
    for heading in ("Intended use", "Not for", "Limitations", "Where it fails most"):
        assert heading in text
