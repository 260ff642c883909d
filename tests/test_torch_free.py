"""The bias report of a predictions file runs without torch: the command itself, in a fresh interpreter, with the
label audit on (it reads the table alone) and off. An import-time check per module missed the chain report ->
audit -> checkpoint; this one runs the command and reads every module Python imported."""

import json
import re
import subprocess
import sys

import pandas as pd
import pytest

from .conftest import ROOT

SHIPPED_VAL = ROOT / "checkpoints" / "dlib-resnet29-utkface" / "predictions-val.csv"
TORCH = re.compile(r"\|\s*(torch|torchvision|facenet_pytorch|pytorch_grad_cam|safetensors\.torch)(\.|\s*$)")


def report_imports(*args) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run ``python -X importtime -m agegender.report ARGS``: (the process, the chain that first imported torch,
    innermost first, or [] when nothing did)."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "agegender.report", *map(str, args)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    names = [ln.rsplit("|", 1)[-1] for ln in proc.stderr.splitlines() if ln.startswith("import time:")]
    assert names, proc.stderr[-2000:]  # -X importtime wrote its table: an empty chain below means something
    return proc, importer_chain(names)


def importer_chain(names: list[str]) -> list[str]:
    """-X importtime lists a module when its import ends, below the modules it imported and indented less than
    them: from the first torch module, each next line indented less is the module that imported it."""
    first = next((i for i, n in enumerate(names) if TORCH.search("| " + n.strip())), None)
    if first is None:
        return []
    chain, depth = [names[first].strip()], len(names[first]) - len(names[first].lstrip())
    for n in names[first + 1:]:
        d = len(n) - len(n.lstrip())
        if d < depth:
            chain.append(n.strip())
            depth = d
    return chain


@pytest.mark.parametrize("audit", [[], ["--label-audit"], ["--no-label-audit"]], ids=["default", "on", "off"])
def test_the_report_of_a_predictions_file_never_imports_torch(tmp_path, audit):
    out = tmp_path / "r.json"
    proc, torch = report_imports("--predictions", SHIPPED_VAL, "--json", out, "--n-boot", 50, *audit)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert torch == [], " <- ".join(torch)
    doc = json.loads(out.read_text())
    # the audit ran (from the table's age_label_tail) unless turned off: not a report that skipped the part
    assert ("label_audit" in doc) == (audit != ["--no-label-audit"])


def test_the_residual_fallback_of_an_old_table_needs_no_torch_either(tmp_path):
    old = tmp_path / "old.csv"
    pd.read_csv(SHIPPED_VAL).drop(columns="age_label_tail").to_csv(old, index=False)
    out = tmp_path / "r.json"
    proc, torch = report_imports("--predictions", old, "--json", out, "--n-boot", 50, "--label-audit")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert torch == [], " <- ".join(torch)
    assert "label_audit" in json.loads(out.read_text())


def test_the_check_sees_torch_where_it_is_imported():
    """The pattern is not blind: a command that loads a model shows torch in the same table."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", "import agegender.models.checkpoint"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    names = [ln.rsplit("|", 1)[-1] for ln in proc.stderr.splitlines() if ln.startswith("import time:")]
    chain = importer_chain(names)
    assert proc.returncode == 0 and chain[-2:] == ["torch", "agegender.models.checkpoint"], chain
