import json
import shutil

import numpy as np

from agegender.report.modelcard import main as modelcard_main

from ..fairness.test_fairness import fake_predictions


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


def test_balanced_checkpoint_is_compared_with_its_baseline(tiny_checkpoint, tmp_path):
    root = tmp_path / "ck"
    base = fake_predictions(900, seed=3).assign(split="test")
    shutil.copytree(tiny_checkpoint, root / "plain")
    shutil.copytree(tiny_checkpoint, root / "plain-balanced")
    base.to_csv(root / "plain" / "predictions-test.csv", index=False)
    hard = base["race"] == "Black"  # the worst group gets closer to the truth: its gap must shrink
    bal = base.assign(pred_age=np.where(hard, (base["pred_age"] + base["age"]) / 2, base["pred_age"]))
    bal.to_csv(root / "plain-balanced" / "predictions-test.csv", index=False)
    meta_path = root / "plain-balanced" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["balance"] = {"method": "loss", "power": 1.0, "cells": "ethnicity x age bucket", "within": "age bucket"}
    meta_path.write_text(json.dumps(meta))
    assert modelcard_main(["--root", str(root), "--n-boot", "100"]) == 0
    text = (root / "README.md").read_text()
    assert "loss reweighting by each cell's last-epoch error (per head), (error / mean) ** power, power 1.0, " \
           "over ethnicity x age bucket, each cell against the mean of its age bucket" in text
    section = text.split("## Mitigation: plain-balanced against plain")[1]
    row = next(line for line in section.splitlines() if line.startswith("| ethnicity gap in age MAE"))
    before, after, change = (c.strip() for c in row.strip("|").split("|")[1:4])
    assert float(after.split()[0]) < float(before.split()[0]) and change.startswith("-")
    std = next(ln for ln in section.splitlines() if ln.startswith("| ethnicity gap, age-standardised, in age MAE"))
    assert std != row and "Age-standardised: each ethnicity group weighted" in section


def test_a_balanced_checkpoint_is_paired_with_the_baseline_trained_most_like_it(tiny_checkpoint, tmp_path):
    root = tmp_path / "ck"
    for name in ("a-dldl", "plain", "plain-balanced"):
        shutil.copytree(tiny_checkpoint, root / name)

    def edit(name, **changes):
        path = root / name / "meta.json"
        meta = json.loads(path.read_text())
        for k, v in changes.items():
            if k == "balance":
                meta["balance"] = v
            else:
                meta["train_config"][k] = v
        path.write_text(json.dumps(meta))

    edit("a-dldl", age_loss="dldl")  # sorts first, same architecture, another recipe
    edit("plain-balanced", balance={"method": "loss", "power": 2.0, "cells": "ethnicity"}, balance_power=2.0,
         out="/elsewhere")  # the mitigation and the output folder are not the recipe
    assert modelcard_main(["--root", str(root), "--n-boot", "20"]) == 0
    text = (root / "README.md").read_text()
    assert "## Mitigation: plain-balanced against plain\n" in text and "Not a clean comparison" not in text

    shutil.rmtree(root / "plain")
    assert modelcard_main(["--root", str(root), "--n-boot", "20"]) == 0
    text = (root / "README.md").read_text()
    assert "## Mitigation: plain-balanced against a-dldl" in text
    assert "**Not a clean comparison**: besides balancing, the two were trained differently (age_loss: dldl in " \
           "a-dldl, " in text


def test_the_card_says_where_training_started_and_which_photo_degradations_it_used(tiny_checkpoint, tmp_path):
    root = tmp_path / "ck"
    shutil.copytree(tiny_checkpoint, root / "tuned")
    path = root / "tuned" / "meta.json"
    meta = json.loads(path.read_text())
    meta["init_from"] = {"name": "base", "weights_sha256": "ab" * 32, "epochs": 40}
    meta["train_config"].update(aug_yaw=0.3, aug_jpeg=0.2)
    path.write_text(json.dumps(meta))
    assert modelcard_main(["--root", str(root), "--n-boot", "50"]) == 0
    text = (root / "README.md").read_text()
    assert "trained from fine-tuned from checkpoint base (weights sha256 abababababab, 40 epochs)" not in text
    assert "fine-tuned from checkpoint base (weights sha256 abababababab, 40 epochs)" in text
    assert "photo degradations: jpeg 0.2, yaw 0.3." in text


def test_the_card_names_the_trunk_its_rate_the_data_file_and_the_device(tiny_checkpoint, tmp_path):
    root = tmp_path / "ck"
    shutil.copytree(tiny_checkpoint, root / "face")
    path = root / "face" / "meta.json"
    meta = json.loads(path.read_text())
    meta["init_trunk"] = {"file": "dlib-resnet29.safetensors", "sha256": "cd" * 32}
    meta["train_config"].update(trunk_lr=0.01, data="/somewhere/utk144.zip", device="cuda")
    path.write_text(json.dumps(meta))
    assert modelcard_main(["--root", str(root), "--n-boot", "50"]) == 0
    text = (root / "README.md").read_text()
    assert "trained from a converted trunk, dlib-resnet29.safetensors, at 0.01 x the heads' learning rate" in text
    assert "UTKFace aligned chips as `utk144.zip`" in text  # the file, not the machine's path to it
    assert f"{meta['train_minutes']} min on cuda;" in text  # GPU minutes are not CPU minutes
    meta["train_config"]["device"] = "auto"  # the device was not named: say nothing rather than guess
    path.write_text(json.dumps(meta))
    assert modelcard_main(["--root", str(root), "--n-boot", "50"]) == 0
    assert f"{meta['train_minutes']} min; balancing" in (root / "README.md").read_text()


def _faith_row(grouping, group, diff, lo, hi, n=60):
    return {"grouping": grouping, "group": group, "n": n, "score": diff, "random": 0.0, "difference": diff,
            "difference_lo": lo, "difference_hi": hi, "beats_random": lo > 0, "too_small": n < 30}


def test_the_card_states_the_sweep_and_the_heatmaps_faithfulness(tiny_checkpoint, tmp_path):
    from agegender.fairness import sensitivity as sens

    from ..dashboard.test_robustness_page import write_sweep

    folder = tmp_path / "ck" / "tiny"
    shutil.copytree(tiny_checkpoint, folder)
    write_sweep(folder)  # blur: the Black faces' age falls 8 years at full strength
    report = {"source": "UTKFace test", "n": 120, "heads": {
        "age": {"unit": "years", "methods": {"GradCAM": {
            "overall": _faith_row("overall", "all", 0.8, 0.3, 1.3, 120),
            "by_group": [_faith_row("race", "White", 1.0, 0.4, 1.6), _faith_row("race", "Black", 0.1, -0.5, 0.7)]}}},
        "gender": {"unit": "logit", "methods": {"GradCAM": {
            "overall": _faith_row("overall", "all", -0.1, -0.4, 0.2, 120), "by_group": []}}}}}
    (folder / "faithfulness-test.json").write_text(json.dumps(report))
    assert modelcard_main(["--root", str(tmp_path / "ck"), "--n-boot", "50"]) == 0
    text = (tmp_path / "ck" / "README.md").read_text()
    sweep = sens.read_sweep(folder / "sweep-val.json")
    row = next(line for line in text.splitlines() if line.startswith("| blur |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    women = next(r for r in sweep["perturbations"]["blur"]["by_group"] if r["group"] == "female")
    assert cells[0] == "blur" and cells[1].endswith(" 2") and cells[2].startswith(f"{women['flip_rate']:.1%} [")
    assert cells[4] == "race Black (age)"
    assert "240 val faces" in text
    assert ("- age, GradCAM: beats random, +0.800 [+0.300, +1.300] years; not shown better for: race Black" in text)
    assert "- gender, GradCAM: not shown better than random, -0.100 [-0.400, +0.200] logit; not shown better for: " \
           "no group" in text
    # damaged or tampered files are said in one line, not a traceback
    (folder / "sweep-val.json").write_text(json.dumps({"format": sens.FORMAT, "perturbations": {
        "blur": {"strengths": [1.0], "by_group": [{"grouping": "race"}]}}}))
    for bad in ("{", json.dumps({"heads": {"age": {"methods": {"GradCAM": {"overall": 3}}}}})):
        (folder / "faithfulness-test.json").write_text(bad)
        assert modelcard_main(["--root", str(tmp_path / "ck"), "--n-boot", "50"]) == 0
        text = (tmp_path / "ck" / "README.md").read_text()
        assert "Heatmap faithfulness: " in text and "Counterfactual sweep: a file beside the checkpoint cannot" in text
