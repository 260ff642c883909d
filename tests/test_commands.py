"""Every command the README and docs name keeps working after a move: python -m agegender.NAME and train.py each
answer --help with their usage. Run the way -m runs them (runpy), in this process, so the imports are paid once."""

import contextlib
import io
import re
import runpy
import sys

import pytest

from .conftest import ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
NAMED = sorted({m for p in DOCS for m in re.findall(r"python -m (agegender\.[a-z_]+)", p.read_text())})


def help_of(run, argv0: str) -> tuple[int, str]:
    out, argv = io.StringIO(), sys.argv
    sys.argv = [argv0, "--help"]
    try:
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as done:
            run()
    finally:
        sys.argv = argv
    return done.value.code, out.getvalue()


def test_the_docs_name_the_commands():
    assert len(NAMED) >= 13 and "agegender.report" in NAMED and "agegender.evaluate" in NAMED, NAMED


@pytest.mark.parametrize("module", NAMED)
def test_every_named_command_answers_help(module):
    code, text = help_of(lambda: runpy.run_module(module, run_name="__main__", alter_sys=True), module)
    assert code == 0 and text.startswith("usage:"), text[:500]


def test_train_py_answers_help():
    code, text = help_of(lambda: runpy.run_path(str(ROOT / "train.py"), run_name="__main__"), "train.py")
    assert code == 0 and "usage:" in text and "--data" in text, text[:500]
