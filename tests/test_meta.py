"""meta.json and the one atomic write: a file is replaced whole or not at all, and reading a
checkpoint's metadata needs no torch."""

import json
import stat
import subprocess
import sys
import threading

import pytest

from agegender.meta import (
    ERR_BAD_META,
    ERR_NO_FOLDER,
    ERR_NO_META,
    FORMAT,
    META,
    CheckpointError,
    atomic_write,
    atomic_write_text,
    read_meta,
    write_meta,
)

from .conftest import ROOT


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_atomic_write_replaces_the_file_whole_and_readable(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")
    atomic_write_text(target, "new")
    assert target.read_text() == "new" and not leftovers(tmp_path)
    assert stat.S_IMODE(target.stat().st_mode) == 0o644  # not mkstemp's private 0600


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")
    with pytest.raises(KeyboardInterrupt), atomic_write(target) as tmp:
        tmp.write_text("half")
        assert tmp.parent == tmp_path and tmp.name.startswith(".a.txt.tmp")
        raise KeyboardInterrupt
    assert target.read_text() == "old" and not leftovers(tmp_path)


def test_concurrent_writers_never_share_a_temporary(tmp_path):
    target, names, barrier = tmp_path / "m.csv", set(), threading.Barrier(8)

    def write(i):
        with atomic_write(target) as tmp:
            names.add(tmp.name)
            tmp.write_text(f"writer {i}\n" * 1000)
            barrier.wait()  # every writer holds its temporary at once

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(names) == 8 and not leftovers(tmp_path)
    lines = set(target.read_text().splitlines())
    assert len(lines) == 1  # one writer's file, whole, not a mix


def test_meta_round_trip_and_messages(tmp_path):
    meta = {"arch": "resnet18", "age_offset": 33.0, "age_scale": 20.0, "labels": {}, "weights_sha256": "0" * 64,
            "preprocess": {"cache_size": 128, "input_size": 112, "mean": [0.5] * 3, "std": [0.25] * 3}}
    write_meta(tmp_path, meta)
    back = read_meta(tmp_path)
    assert back["format"] == FORMAT and {k: back[k] for k in meta} == meta
    with pytest.raises(CheckpointError) as e:
        read_meta(tmp_path / "nope")
    assert str(e.value) == ERR_NO_FOLDER.format(path=tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError) as e:
        read_meta(tmp_path / "empty")
    assert str(e.value) == ERR_NO_META.format(path=tmp_path / "empty", META=META)
    (tmp_path / META).write_text(json.dumps({"arch": "resnet18"}))
    with pytest.raises(CheckpointError) as e:
        read_meta(tmp_path)
    assert str(e.value) == ERR_BAD_META.format(
        path=tmp_path, META=META, detail="missing format, preprocess, age_offset, age_scale, labels, weights_sha256")
    (tmp_path / META).write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="not a JSON object"):
        read_meta(tmp_path)


def test_reading_metadata_imports_no_torch():
    code = ("import sys; from agegender.meta import read_meta; "
            "m = read_meta('checkpoints/dlib-resnet29-utkface'); assert m['arch']; "
            "assert 'torch' not in sys.modules, sorted(k for k in sys.modules if 'torch' in k)")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
