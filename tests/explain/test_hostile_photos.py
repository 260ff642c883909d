"""Issue 36: photos given to predict that are not photos: a FIFO, a socket or a link to /dev/zero named x.jpg,
a sparse file far larger than any photo, a newline in a name. Each is one line, refused before it is opened
or read past the cap, and the photos after it are still scored. Generated here, never committed."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import matplotlib.cbook
import pytest

from agegender.faces import detect
from agegender.faces.detect import (
    ERR_TOO_LARGE,
    ERR_UNREADABLE,
    MAX_PHOTO_BYTES,
    MORE_THAN_BYTES,
    TOO_MANY_BYTES,
    WHY_SPECIAL,
    UnreadableImage,
    load_photo,
)
from agegender.labels import printable

from ..conftest import ROOT

HOPPER = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
TIMEOUT = 20  # seconds for one load: opening a FIFO blocks for ever, so a hang fails here instead
RUN_TIMEOUT = 300  # seconds for the whole predict run (a checkpoint load, MTCNN and three photos take ~15)
needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this system")
needs_dev_zero = pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero")


def refusal(source) -> str:
    """load_photo's message for ``source``, within TIMEOUT seconds."""
    out: dict = {}

    def go():
        try:
            load_photo(source)
        except UnreadableImage as e:
            out["message"] = str(e)

    t = threading.Thread(target=go, daemon=True)
    t.start()
    t.join(TIMEOUT)
    assert not t.is_alive(), f"load_photo({source}) still running after {TIMEOUT} s"
    assert "message" in out, f"load_photo({source}) accepted it"
    return out["message"]


@needs_fifo
def test_a_fifo_named_jpg_is_refused_unopened(tmp_path):
    fifo = tmp_path / "x.jpg"
    os.mkfifo(fifo)
    assert refusal(fifo) == ERR_UNREADABLE.format(name=fifo, detail=WHY_SPECIAL.format(kind="a FIFO (named pipe)"))


@needs_dev_zero
def test_a_link_to_dev_zero_is_refused_not_read_for_ever(tmp_path):
    link = tmp_path / "zero.jpg"
    link.symlink_to("/dev/zero")
    assert refusal(link) == ERR_UNREADABLE.format(name=link, detail=WHY_SPECIAL.format(kind="a character device"))


@pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="no Unix sockets")
def test_a_socket_named_jpg_is_refused(tmp_path):
    path = tmp_path / "s.jpg"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))
        assert refusal(path) == ERR_UNREADABLE.format(name=path, detail=WHY_SPECIAL.format(kind="a socket"))


def test_a_sparse_file_beyond_any_photo_is_refused_on_its_size(tmp_path):
    big = tmp_path / "big.jpg"
    big.write_bytes(Path(HOPPER).read_bytes())  # a real JPEG at its start, so only the size refuses it
    with open(big, "r+b") as f:
        f.truncate(MAX_PHOTO_BYTES + 1)  # sparse: no disk used, and never read
    detail = TOO_MANY_BYTES.format(size=MAX_PHOTO_BYTES + 1, limit=MAX_PHOTO_BYTES)
    assert refusal(big) == ERR_TOO_LARGE.format(name=big, detail=detail)


@pytest.mark.skipif(not os.path.isfile("/proc/self/maps"), reason="no /proc")
def test_reading_stops_at_the_cap_when_the_size_says_nothing(monkeypatch):
    # /proc files are regular and report size 0 whatever they hold: only the read itself can stop
    monkeypatch.setattr(detect, "MAX_PHOTO_BYTES", 100)
    path = Path("/proc/self/maps")
    assert refusal(path) == ERR_TOO_LARGE.format(name=path, detail=MORE_THAN_BYTES.format(limit=100))


@needs_fifo
@needs_dev_zero
def test_predict_skips_special_files_in_one_line_each_and_scores_the_photos_after_them(tiny_checkpoint, tmp_path):
    fifo, zero = tmp_path / "x.jpg", tmp_path / "zero.jpg"
    os.mkfifo(fifo)
    zero.symlink_to("/dev/zero")
    odd = tmp_path / "odd\nerror: forged.jpg"  # a newline in a name must not split or forge a line
    shutil.copy(HOPPER, odd)
    args = [HOPPER, fifo, zero, odd, "--checkpoint", tiny_checkpoint]
    try:
        done = subprocess.run([sys.executable, "-m", "agegender.predict", *map(str, args)], cwd=ROOT,
                              capture_output=True, text=True, timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:  # subprocess.run has killed it
        pytest.fail(f"predict still running after {RUN_TIMEOUT} s: it blocked on {fifo}")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.splitlines() == [
        "error: " + ERR_UNREADABLE.format(name=fifo, detail=WHY_SPECIAL.format(kind="a FIFO (named pipe)")),
        "error: " + ERR_UNREADABLE.format(name=zero, detail=WHY_SPECIAL.format(kind="a character device")),
    ]
    rows = done.stdout.splitlines()[1:]  # after the "age: ..." line
    assert [r.split(" face ")[0] for r in rows] == [str(HOPPER), printable(odd)]  # both real photos scored
    assert all(" face 1 (detection " in r and "P(female)" in r for r in rows)
