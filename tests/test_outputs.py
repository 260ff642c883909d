"""Output files: a path that cannot take one is refused before the work, never replaced when it is a device or a
FIFO, and a write that fails (a full disk) is one line with exit 2 (issue 36: nothing ends in a traceback)."""

import errno
import os
import stat

from agegender import meta
from agegender.evaluation import evaluate
from agegender.report import command

from .conftest import ROOT

SHIPPED = ROOT / "checkpoints" / "dlib-resnet29-utkface"


def full_disk(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_output_problems(tmp_path):
    fifo = tmp_path / "out.json"
    os.mkfifo(fifo)
    (tmp_path / "old.json").write_text("old")
    (tmp_path / "link.json").symlink_to(tmp_path / "old.json")
    assert meta.output_problem(tmp_path / "new.json") is None
    assert meta.output_problem(tmp_path / "old.json") is None and meta.output_problem(tmp_path / "link.json") is None
    assert meta.output_problem(tmp_path / "gone" / "x.json") == meta.WHY_NO_FOLDER
    assert meta.output_problem(fifo) == meta.output_problem(tmp_path) == meta.WHY_NOT_A_FILE
    assert meta.output_problem("/dev/null") == meta.WHY_NOT_A_FILE


def test_the_report_refuses_a_bad_output_before_the_work_and_a_full_disk_is_one_line(tmp_path, capsys,
                                                                                      monkeypatch):
    fifo = tmp_path / "r.html"
    os.mkfifo(fifo)
    assert command.main(["--checkpoint", str(SHIPPED), "--html", str(fifo)]) == 2
    assert capsys.readouterr().err == f"error: cannot write {fifo}: {meta.WHY_NOT_A_FILE}\n"
    assert stat.S_ISFIFO(fifo.lstat().st_mode)
    monkeypatch.setattr(command, "atomic_write_text", full_disk)
    out = tmp_path / "r.json"
    assert command.main(["--checkpoint", str(SHIPPED), "--n-boot", "10", "--no-label-audit", "--json", str(out)]) == 2
    assert capsys.readouterr().err == f"error: cannot write {out}: No space left on device\n"
    assert not out.exists()


def test_evaluate_refuses_a_bad_output_before_the_work_and_a_full_disk_is_one_line(tiny_checkpoint, tiny_data,
                                                                                    tmp_path, capsys, monkeypatch):
    args = ["--checkpoint", str(tiny_checkpoint), "--data", str(tiny_data), "--split", "all", "--limit", "8"]
    assert evaluate.main([*args, "--out", str(tmp_path / "p.csv"), "--json", str(tmp_path / "no" / "m.json")]) == 2
    assert capsys.readouterr().err == f"error: cannot write {tmp_path / 'no' / 'm.json'}: {meta.WHY_NO_FOLDER}\n"
    assert not (tmp_path / "p.csv").exists()  # said before the evaluation ran
    monkeypatch.setattr(evaluate, "write_predictions", full_disk)
    out = tmp_path / "p.csv"
    assert evaluate.main([*args, "--out", str(out), "--json", str(tmp_path / "m.json")]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"error: cannot write {out}: No space left on device"
    assert not out.exists() and not (tmp_path / "m.json").exists()
