"""The lock the README's commands install: it satisfies the declared ranges, every pin is hashed,
and the test environment holds exactly what it pins."""

import os
import re
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from .conftest import ROOT

LOCK = ROOT / "requirements.lock"
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")


def locked() -> dict[str, tuple[str, int]]:
    """name -> (version, number of hashes) from a pip-compile lock."""
    pins: dict[str, tuple[str, int]] = {}
    name = None
    for line in LOCK.read_text().splitlines():
        m = _PIN.match(line)
        if m:
            name = canonicalize_name(m[1])
            pins[name] = (m[2], 0)
        elif name and line.strip().startswith("--hash=sha256:"):
            pins[name] = (pins[name][0], pins[name][1] + 1)
    return pins


def declared(path: Path) -> list[Requirement]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [Requirement(line) for line in lines if line]


def test_lock_pins_every_declared_requirement_within_its_range():
    pins = locked()
    assert len(pins) > 50  # the whole tree, not only the direct requirements
    for req in declared(ROOT / "requirements.txt") + declared(ROOT / "requirements-dev.txt"):
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is declared but not in {LOCK.name}: run make lock"
        assert req.specifier.contains(pins[name][0], prereleases=True), (
            f"{LOCK.name} pins {req.name}=={pins[name][0]}, outside {req}: run make lock")


def test_every_pin_is_exact_and_hashed():
    for name, (version, hashes) in locked().items():
        assert hashes >= 1, f"{name}=={version} has no hash"
        assert not version.endswith("*"), name


def test_environment_holds_exactly_the_locked_versions():
    if not os.environ.get("AGEGENDER_LOCKED"):
        pytest.skip("not installed from the lock (make test sets AGEGENDER_LOCKED)")
    wrong = {}
    for name, (version, _) in locked().items():
        try:
            have = metadata.version(name)
        except metadata.PackageNotFoundError:
            have = None
        if have is None or have.split("+")[0] != version.split("+")[0]:
            wrong[name] = (version, have)
    assert not wrong, f"installed versions differ from {LOCK.name} (locked, installed): {wrong}"
