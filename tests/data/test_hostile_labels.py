"""Issue 36: labels files as a careless or hostile user hands them over. Each case is generated here (FIFOs,
links to devices, sparse files, other encodings), never committed; each bad file gets its own one-line message,
word for word, and nothing blocks or reads past the cap."""

from __future__ import annotations

import codecs
import logging
import os
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agegender.data import datasets as ds
from agegender.data import labelsfile as lf
from agegender.data.datasets import read_dataset
from agegender.data.utkface import DatasetError
from agegender.labels import MAX_AGE, printable

FF_HEADER = "file,age,gender,race\n"
FF_BODY = "val/1.jpg,20-29,Female,Indian\nval/2.jpg,0-2,Male,White\n"
TIMEOUT = 20  # seconds: a FIFO that is opened blocks for ever, so a hang fails here instead of stalling the run
needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this system")


def images(folder: Path, n: int = 2) -> Path:
    for i in range(n):
        (folder / "val").mkdir(parents=True, exist_ok=True)
        pixels = np.random.default_rng(i).integers(0, 256, (16, 16, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / "val" / f"{i + 1}.jpg")
    return folder


def labels_file(folder: Path, data: bytes, name: str = "labels.csv") -> Path:
    images(folder)
    (folder / name).write_bytes(data)
    return folder / name


def within(fn, *args, **kw):
    """fn's result or its exception, or a failure if it does not return in TIMEOUT seconds (never a hang)."""
    out: dict = {}

    def go():
        try:
            out["value"] = fn(*args, **kw)
        except Exception as e:  # noqa: BLE001 - handed to the test, which checks its type and message
            out["error"] = e

    t = threading.Thread(target=go, daemon=True)
    t.start()
    t.join(TIMEOUT)
    assert not t.is_alive(), f"{fn.__name__} still running after {TIMEOUT} s"
    if "error" in out:
        raise out["error"]
    return out["value"]


def message(*args, **kw) -> str:
    with pytest.raises(DatasetError) as e:
        within(read_dataset, *args, **kw)
    return str(e.value)


# ---- special files and links: refused before they are opened ---------------------------------------------

@needs_fifo
def test_a_fifo_as_labels_is_refused_unopened_wherever_it_is_named(tmp_path):
    images(tmp_path)
    fifo = tmp_path / "labels.csv"
    os.mkfifo(fifo)
    want = lf.ERR_LABELS_SPECIAL.format(path=fifo, kind="a FIFO (named pipe)")
    assert message(tmp_path, labels=fifo) == want  # named with labels=
    assert message(fifo) == want  # named as the dataset itself
    assert message(tmp_path, labels=fifo, columns="file=file,age=age,gender=gender") == want
    ff = tmp_path / "fairface_label_val.csv"  # found in the dataset folder
    fifo.unlink()
    os.mkfifo(ff)
    assert message(tmp_path) == lf.ERR_LABELS_SPECIAL.format(path=ff, kind="a FIFO (named pipe)")


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero")
def test_a_link_to_dev_zero_is_refused_not_read_for_ever(tmp_path):
    images(tmp_path)
    link = tmp_path / "labels.csv"
    link.symlink_to("/dev/zero")
    want = lf.ERR_LABELS_SPECIAL.format(path=link, kind="a character device")
    assert message(tmp_path, labels=link) == want
    assert message(tmp_path, labels=link, columns="file=file,age=age,gender=gender") == want
    assert message(link) == want


def test_a_labels_link_out_of_the_dataset_is_not_followed_unless_named(tmp_path):
    outside = tmp_path / "elsewhere" / "fairface.csv"
    outside.parent.mkdir()
    outside.write_text(FF_HEADER + FF_BODY)
    data = images(tmp_path / "data")
    link = data / "fairface_label_val.csv"
    link.symlink_to(outside)
    assert message(data) == ds.ERR_LABELS_OUTSIDE.format(path=link, target=outside.resolve())
    named = within(read_dataset, data, labels=link)  # the user named it: theirs to trust
    assert [r.file for r in named.records] == ["val/1.jpg", "val/2.jpg"] and named.format == "fairface"
    inner = data / "sub" / "real.csv"  # a link that stays inside the folder is followed as before
    inner.parent.mkdir()
    link.unlink()
    outside.rename(inner)
    link.symlink_to(inner)
    assert len(within(read_dataset, data).records) == 2


# ---- size: capped before reading, and reading stops at the cap --------------------------------------------

def test_a_sparse_labels_file_over_the_default_cap_is_refused_on_its_size(tmp_path):
    labels = labels_file(tmp_path, FF_HEADER.encode())
    size = lf.MAX_LABELS_MB * 2**20 + 1
    with open(labels, "r+b") as f:
        f.truncate(size)  # sparse: no disk used, and never read
    assert message(tmp_path, labels=labels) == lf.ERR_LABELS_TOO_LARGE.format(
        path=labels, size=f"{size / 2**20:,.1f} MB", cap=lf.MAX_LABELS_MB, suggest=2 * lf.MAX_LABELS_MB + 1)
    assert "AGEGENDER_MAX_LABELS_MB=513" in message(tmp_path, labels=labels)


def test_the_cap_is_raised_and_checked_from_the_environment(tmp_path, monkeypatch):
    labels = labels_file(tmp_path, (FF_HEADER + FF_BODY * 1000).encode())  # 62 kB
    monkeypatch.setenv(lf.MAX_LABELS_ENV, "0.01")
    assert message(tmp_path, labels=labels) == lf.ERR_LABELS_TOO_LARGE.format(
        path=labels, size=f"{labels.stat().st_size / 2**20:,.1f} MB", cap=0.01, suggest=1)
    monkeypatch.setenv(lf.MAX_LABELS_ENV, "1")
    assert within(read_dataset, tmp_path, labels=labels).format == "fairface"
    for bad in ("lots", "0", "-5", "nan", "inf"):
        monkeypatch.setenv(lf.MAX_LABELS_ENV, bad)
        assert message(tmp_path, labels=labels) == lf.ERR_LABELS_CAP.format(value=bad)


@pytest.mark.skipif(not os.path.isfile("/proc/self/maps"), reason="no /proc")
def test_reading_stops_at_the_cap_when_the_size_says_nothing(monkeypatch):
    # /proc files are regular and report size 0 whatever they hold: only the read itself can stop
    monkeypatch.setenv(lf.MAX_LABELS_ENV, str(100 / 2**20))  # 100 bytes
    maps = Path("/proc/self/maps")
    with pytest.raises(DatasetError) as e:
        lf.read_labels(maps)
    cap = 100 / 2**20
    assert str(e.value) == lf.ERR_LABELS_TOO_LARGE.format(path=maps, size=lf.MORE_THAN.format(cap=cap), cap=cap,
                                                          suggest=1)


# ---- what is wrong with the file, in its own words --------------------------------------------------------

@pytest.mark.parametrize(("data", "looks"), [
    ((FF_HEADER + FF_BODY).encode("utf-16"), lf.LOOKS_UTF16_BOM),
    ((FF_HEADER + FF_BODY).encode("utf-16-be"), lf.LOOKS_UTF16),
    ((FF_HEADER + FF_BODY).encode("utf-16-le"), lf.LOOKS_UTF16),
    ((FF_HEADER + FF_BODY).encode("utf-32"), lf.LOOKS_UTF32_BOM),
    ((FF_HEADER + "val/1.jpg,20-29,Female,Indian\nval/Zoë.jpg,0-2,Male,White\n").encode("latin-1"),
     lf.LOOKS_LATIN1.format(byte=0xEB, line=3)),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(200), lf.LOOKS_BINARY),
])
def test_a_labels_file_not_in_utf8_says_what_it_looks_like(tmp_path, data, looks):
    labels = labels_file(tmp_path, data)
    want = lf.ERR_LABELS_ENCODING.format(path=labels, encoding=looks)
    assert message(tmp_path, labels=labels) == want  # no mapping: today "is not FairFace's CSV"
    assert message(tmp_path, labels=labels, columns="file=file,age_bin=age,gender=gender") == want


def test_an_empty_labels_file_says_so_not_that_it_is_not_fairface(tmp_path):
    labels = labels_file(tmp_path, b"")
    assert message(tmp_path, labels=labels) == lf.ERR_LABELS_EMPTY.format(path=labels)
    assert message(labels) == lf.ERR_LABELS_EMPTY.format(path=labels)


@pytest.mark.parametrize("header", ['"file","age","gender","race"\n', '"file","age","gender","race"\r\n',
                                    '\ufeff"file","age","gender","race"\n', "\ufefffile,age,gender,race\n"])
def test_fairface_with_quoted_header_or_byte_order_mark_is_fairface(tmp_path, header):
    labels = labels_file(tmp_path, (header + FF_BODY).encode(), name="fairface_label_val.csv")
    for ds_ in (within(read_dataset, tmp_path), within(read_dataset, labels)):
        assert ds_.format == "fairface" and ds_.labels == labels
        assert [(r.file, r.age_bin, r.gender) for r in ds_.records] == [("val/1.jpg", (20, 29), 1),
                                                                         ("val/2.jpg", (0, 2), 0)]


def test_semicolons_are_named_not_called_another_format(tmp_path):
    labels = labels_file(tmp_path, b"file;age;gender;race\nval/1.jpg;20-29;Female;Indian\n")
    assert message(tmp_path, labels=labels) == lf.ERR_LABELS_SEMICOLONS.format(path=labels,
                                                                               header="file;age;gender;race")


# ---- rows: ages out of range skipped and counted, names escaped -------------------------------------------

def test_ages_above_max_age_are_skipped_with_a_count_and_the_rest_scored(tmp_path, caplog):
    images(tmp_path, 4)
    (tmp_path / "l.csv").write_text(f"f,a,g\nval/1.jpg,300,f\nval/2.jpg,{MAX_AGE},m\nval/3.jpg,1e9,f\n"
                                    f"val/4.jpg,{MAX_AGE + 0.5},m\n")
    with caplog.at_level(logging.WARNING, logger="agegender.data.datasets"):
        d = within(read_dataset, tmp_path, labels=tmp_path / "l.csv", columns="file=f,age=a,gender=g")
    assert [(r.file, r.age) for r in d.records] == [("val/2.jpg", MAX_AGE)]
    assert d.problems == {ds.SKIP_AGE_RANGE: ds.Problem(3, ("row 2 (val/1.jpg): '300'", "row 4 (val/3.jpg): '1e9'",
                                                           f"row 5 (val/4.jpg): '{MAX_AGE + 0.5}'"))}
    lines = [r.getMessage() for r in caplog.records if r.name == "agegender.data.datasets"]
    assert len(lines) == 1 and lines[0].startswith(f"skipped 3 row(s): {ds.SKIP_AGE_RANGE}: 3 (e.g. row 2")


def test_an_age_bin_above_max_age_is_skipped(tmp_path):
    images(tmp_path)
    (tmp_path / "l.csv").write_text("f,b,g\nval/1.jpg,200-209,f\nval/2.jpg,20-29,m\n")
    d = within(read_dataset, tmp_path, labels=tmp_path / "l.csv", columns="file=f,age_bin=b,gender=g")
    assert [r.file for r in d.records] == ["val/2.jpg"]
    assert d.problems == {ds.SKIP_AGE_RANGE: ds.Problem(1, ("row 2 (val/1.jpg): '200-209'",))}


def test_control_characters_in_names_cannot_split_or_forge_a_line(tmp_path, caplog):
    images(tmp_path)
    forged = 'val/x.jpg\nERROR everything is fine\u202e.jpg'
    (tmp_path / "l.csv").write_text(f'f,a,g\n"{forged}",30,f\nval/2.jpg,30,m\n')
    with caplog.at_level(logging.WARNING, logger="agegender.data.datasets"):
        d = within(read_dataset, tmp_path, labels=tmp_path / "l.csv", columns="file=f,age=a,gender=g")
    assert [r.file for r in d.records] == ["val/2.jpg"]  # the good row still scored
    [line] = [r.getMessage() for r in caplog.records if r.name == "agegender.data.datasets"]
    assert "\n" not in line and "\u202e" not in line and printable(forged) in line
    odd = tmp_path / "a\nb.csv"  # a labels file's own name, in an error message
    odd.write_text("")
    msg = message(tmp_path, labels=odd)
    assert msg == lf.ERR_LABELS_EMPTY.format(path=printable(odd)) and "\n" not in msg


def test_utf8_with_a_byte_order_mark_reads_as_utf8(tmp_path):
    labels = labels_file(tmp_path, codecs.BOM_UTF8 + b"f,a,g\nval/1.jpg,30,f\nval/2.jpg,31,m\n")
    d = within(read_dataset, tmp_path, labels=labels, columns="file=f,age=a,gender=g")
    assert [(r.file, r.age, r.gender) for r in d.records] == [("val/1.jpg", 30.0, 1), ("val/2.jpg", 31.0, 0)]


# ---- the column mapping's .toml: the same rules ------------------------------------------------------------

@needs_fifo
def test_a_mapping_toml_that_is_a_fifo_huge_or_deeply_nested_says_so(tmp_path):
    labels = labels_file(tmp_path, b"f,a,g\nval/1.jpg,30,f\n")
    fifo = tmp_path / "map.toml"
    os.mkfifo(fifo)
    assert message(tmp_path, labels=labels, columns=fifo) == ds.ERR_TOML.format(
        path=fifo, detail=ds.WHY_SPECIAL.format(kind="a FIFO (named pipe)"))
    big = tmp_path / "big.toml"
    with open(big, "wb") as f:
        f.truncate(ds.MAPPING_BYTES + 1)
    assert message(tmp_path, labels=labels, columns=big) == ds.ERR_TOML.format(path=big, detail=ds.MAPPING_TOO_LARGE)
    deep = tmp_path / "deep.toml"
    deep.write_text("file = " + "[" * 50_000 + "]" * 50_000 + "\n")
    assert message(tmp_path, labels=labels, columns=deep).startswith(f"cannot read the column mapping {deep} (")
