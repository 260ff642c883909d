"""Issue 36: a dataset's members that must never be read (links out of it, FIFOs, devices, sockets, members over the
cap, links inside archives) are skipped, counted and named in one line, and the rest of the dataset is still read.
Every hostile case is made here, in tmp_path; none is committed."""

from __future__ import annotations

import io
import logging
import os
import socket
import stat
import subprocess
import sys
import tarfile
import tracemalloc
import zipfile
from pathlib import Path

import pytest

from agegender.data import members
from agegender.data.datasets import read_dataset
from agegender.data.members import (
    WARN_SKIPPED,
    WHY_HARD_LINK,
    WHY_LINKED_FOLDER,
    WHY_OUTSIDE,
    WHY_SYMLINK,
    Refused,
)
from agegender.data.utkface import ERR_ARCHIVE, list_images, load_images, member_bytes, scan
from agegender.evaluation.evalset import dataset_crops
from agegender.faces.detect import SPECIAL_KINDS
from dashboard.access import DATA_ENV, data_allow_list

from ..conftest import ROOT, make_dataset

WHY_FIFO, WHY_CHAR_DEVICE, WHY_SOCKET = (SPECIAL_KINDS[k] for k in (stat.S_IFIFO, stat.S_IFCHR, stat.S_IFSOCK))
LINK = "33_1_0_20170109150557999.jpg.chip.jpg"  # named like a UTKFace chip, so the listing would take it


def skip_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == members.__name__]


def expected(root: Path, items: list[tuple[str, str]], n: int | None = None) -> str:
    examples = "; ".join(f"{m} ({why})" for m, why in items)
    return WARN_SKIPPED.format(n=len(items) if n is None else n, root=root, cap=64, examples=examples)


@pytest.fixture
def outside(tmp_path) -> Path:
    """A face image outside the dataset, with bytes no image inside it has."""
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    name = make_dataset(folder, n=1, seed=7)[0]
    return folder / name


@pytest.fixture
def utk(tmp_path) -> tuple[Path, list[str]]:
    folder = tmp_path / "UTKFace"
    folder.mkdir()
    return folder, make_dataset(folder, n=5, size=24)


def opened_names(monkeypatch) -> list[str]:
    """Every name os.open is asked to open from now on."""
    seen: list[str] = []
    real = os.open

    def spy(path, *a, **kw):
        seen.append(os.fspath(path))
        return real(path, *a, **kw)

    monkeypatch.setattr(os, "open", spy)
    return seen


def test_a_link_out_of_a_utkface_folder_is_never_read_and_the_rest_is_scored(utk, outside, tmp_path, caplog,
                                                                           monkeypatch):
    folder, good = utk
    (folder / LINK).symlink_to(outside)
    caplog.set_level(logging.WARNING)
    seen = opened_names(monkeypatch)
    ds = read_dataset(folder)
    crops = dataset_crops(ds, 24, tmp_path / "cache")
    assert sorted(crops.files) == sorted(good) and crops.found.all() and not crops.unreadable
    assert skip_lines(caplog) == [expected(folder, [(LINK, WHY_SYMLINK)])]
    assert skip_lines(caplog) == [f"skipped 1 member(s) of {folder} that are never read (only regular files inside "
                                  f"the dataset, of at most 64 MB, are): {LINK} (a symbolic link)"]
    assert LINK not in seen and str(outside) not in seen
    # asked for by name (a labels file, a stale listing): refused at the read too, with the same line
    caplog.clear()
    got = dict(member_bytes(folder, "folder", [LINK, good[0]]))
    assert got[LINK] is None and got[good[0]] == (folder / good[0]).read_bytes()
    assert skip_lines(caplog) == [expected(folder, [(LINK, WHY_SYMLINK)])]
    assert LINK not in seen


def fairface_layout(folder: Path, outside: Path) -> None:
    """FairFace's layout: val/N.jpg and its label CSV; val/9.jpg a link to a photo elsewhere."""
    (folder / "val").mkdir(parents=True)
    make_dataset(folder / "val", n=3, size=32, chip=False)
    rows = ["file,age,gender,race,service_test"]
    for i, p in enumerate(sorted((folder / "val").iterdir())):
        p.rename(folder / "val" / f"{i}.jpg")
        rows.append(f"val/{i}.jpg,20-29,Female,White,False")
    (folder / "val" / "9.jpg").symlink_to(outside)
    rows.append("val/9.jpg,30-39,Male,Black,False")
    (folder / "fairface_label_val.csv").write_text("\n".join(rows) + "\n")


def test_a_link_in_a_fairface_set_is_not_a_record_and_its_photo_never_read(tmp_path, outside, caplog, monkeypatch):
    folder = tmp_path / "FairFace"
    fairface_layout(folder, outside)
    caplog.set_level(logging.WARNING)
    seen = opened_names(monkeypatch)
    ds = read_dataset(folder)
    assert sorted(r.file for r in ds.records) == ["val/0.jpg", "val/1.jpg", "val/2.jpg"]
    assert skip_lines(caplog) == [expected(folder, [("val/9.jpg", WHY_SYMLINK)])]
    read = dict(member_bytes(folder, "folder", [r.file for r in ds.records] + ["val/9.jpg"]))
    assert read["val/9.jpg"] is None and all(read[r.file] for r in ds.records)
    assert outside.read_bytes() not in read.values() and "9.jpg" not in seen and str(outside) not in seen


def test_a_link_in_an_allowed_dataset_to_a_file_outside_it_is_not_read(utk, outside, monkeypatch, caplog):
    """The allow-list checks the dataset's root; the member rule keeps every read inside that root."""
    folder, good = utk
    (folder / LINK).symlink_to(outside)
    monkeypatch.setenv(DATA_ENV, str(folder))
    allowed = data_allow_list()
    allowed.check(folder)  # the dataset itself is allowed...
    assert not allowed.allows(outside)  # ...the file its link points at is not
    caplog.set_level(logging.WARNING)
    sc = scan(folder)
    images = load_images(sc, sc.samples, 24, progress=False)
    assert sorted(s.name for s in images.samples) == sorted(good) and not images.unreadable
    read = dict(member_bytes(folder, "folder", [LINK]))
    assert read == {LINK: None}
    assert len(skip_lines(caplog)) == 2  # one at the listing, one at the read asked by name


def run_isolated(code: str, timeout: float = 90) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter with a memory ceiling, so a hang is a timeout and an endless read a
    MemoryError, never this test run's."""
    def limit():
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (4 * 2**30, 4 * 2**30))

    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          preexec_fn=limit)


SCORE = """
from agegender.data.utkface import load_images, scan
sc = scan({folder!r})
images = load_images(sc, sc.samples, 24, progress=False)
print(len(images.samples), len(images.unreadable))
"""


@pytest.mark.parametrize("special", ["fifo", "dev_zero"])
def test_a_fifo_or_a_link_to_dev_zero_neither_blocks_nor_fills_memory(utk, special):
    folder, good = utk
    if special == "fifo":
        os.mkfifo(folder / LINK)
    else:
        (folder / LINK).symlink_to("/dev/zero")
    try:
        r = run_isolated(SCORE.format(folder=str(folder)))
    except subprocess.TimeoutExpired:
        pytest.fail(f"reading a dataset holding a {special} did not finish")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [str(len(good)), "0"]
    why = WHY_FIFO if special == "fifo" else WHY_SYMLINK
    assert expected(folder, [(LINK, why)]) in r.stderr


def test_devices_sockets_dangling_links_and_linked_folders_are_skipped(utk, tmp_path, outside, caplog):
    folder, good = utk
    (folder / "10_0_0_20170109150557001.jpg").symlink_to(tmp_path / "nothing-here.jpg")  # dangling
    (folder / "sub").symlink_to(outside.parent, target_is_directory=True)
    skipped = [("10_0_0_20170109150557001.jpg", WHY_SYMLINK), ("sub", WHY_LINKED_FOLDER)]
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(folder / "12_0_0_20170109150557003.jpg"))
        skipped.append(("12_0_0_20170109150557003.jpg", WHY_SOCKET))
    except OSError:
        pass  # a path too long for a socket
    caplog.set_level(logging.WARNING)
    try:
        kind, listed = list_images(folder)
    finally:
        sock.close()
    assert sorted(m for m, _ in listed) == sorted(good)
    skipped.sort()
    assert skip_lines(caplog) == [expected(folder, skipped[:3], n=len(skipped))]
    got = dict(member_bytes(folder, "folder", [m for m, _ in skipped]))
    assert got == {m: None for m, _ in skipped}
    for member, why in ((f"sub/{outside.name}", WHY_LINKED_FOLDER), (f"../elsewhere/{outside.name}", WHY_OUTSIDE),
                        (f"./{good[0]}", WHY_OUTSIDE), (str(outside), WHY_OUTSIDE)):
        caplog.clear()
        assert dict(member_bytes(folder, "folder", [member])) == {member: None}
        assert skip_lines(caplog) == [expected(folder, [(member, why)])]


def test_a_device_node_in_a_folder_is_never_opened(utk, caplog, monkeypatch):
    folder, good = utk
    device = "11_0_0_20170109150557002.jpg"
    try:
        os.mknod(folder / device, stat.S_IFCHR | 0o600, os.makedev(1, 5))  # /dev/zero's numbers
    except OSError as e:
        pytest.skip(f"os.mknod is not allowed here ({e}); a device inside a tar is tested below")
    caplog.set_level(logging.WARNING)
    seen = opened_names(monkeypatch)
    assert sorted(m for m, _ in list_images(folder)[1]) == sorted(good)
    assert dict(member_bytes(folder, "folder", [device])) == {device: None}
    assert skip_lines(caplog) == [expected(folder, [(device, WHY_CHAR_DEVICE)])] * 2
    assert device not in seen


def test_a_newline_in_a_member_name_stays_on_one_line_and_a_good_one_is_still_read(utk, outside, caplog):
    folder, good = utk
    evil = "x\nWARNING forged line 20_1_0_20170109150557000.jpg"
    (folder / evil).symlink_to(outside)
    plain = "a\nfolder/21_1_0_20170109150557000.jpg"  # a regular file: read, whatever its name
    (folder / "a\nfolder").mkdir()
    (folder / plain).write_bytes((folder / good[0]).read_bytes())
    caplog.set_level(logging.WARNING)
    sc = scan(folder)
    assert plain in [s.member for s in sc.samples] and evil not in [s.member for s in sc.samples]
    (line,) = skip_lines(caplog)
    assert "\n" not in line
    assert line.endswith("x\\nWARNING forged line 20_1_0_20170109150557000.jpg (a symbolic link)")
    assert dict(member_bytes(folder, "folder", [plain]))[plain] == (folder / good[0]).read_bytes()


def patch_zip_sizes(path: Path, size: int) -> None:
    """Say ``size`` for every member's uncompressed size, in its local header and the central directory."""
    raw = bytearray(path.read_bytes())
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        at = raw.find(signature)
        while at != -1:
            raw[at + offset:at + offset + 4] = size.to_bytes(4, "little")
            at = raw.find(signature, at + 4)
    path.write_bytes(bytes(raw))


def zip_of(path: Path, items: dict[str, bytes], compression=zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression) as z:
        for name, data in items.items():
            z.writestr(name, data)
    return path


def test_a_zip_member_whose_header_claims_2_gb_is_skipped_unread(utk, tmp_path, caplog):
    folder, good = utk
    items = {g: (folder / g).read_bytes() for g in good}
    items[LINK] = b"\xff\xd8" + bytes(4000)
    bomb = zip_of(tmp_path / "bomb.zip", {LINK: items[LINK]})
    patch_zip_sizes(bomb, 2**31 - 1)
    caplog.set_level(logging.WARNING)
    assert list_images(bomb)[1] == []
    assert skip_lines(caplog) == [expected(bomb, [(LINK, "over the 64 MB an image may take")])]
    assert dict(member_bytes(bomb, "zip", [LINK])) == {LINK: None}


def test_an_archive_member_larger_than_its_header_says_is_read_no_further_than_the_cap(tmp_path, monkeypatch):
    monkeypatch.setattr(members, "MAX_MEMBER_BYTES", 2**20)
    real = 48 * 2**20  # zeros: a 48 MB member in a zip of ~50 KB
    liar = tmp_path / "liar.zip"
    with zipfile.ZipFile(liar, "w", zipfile.ZIP_DEFLATED) as z, z.open(LINK, "w", force_zip64=False) as f:
        for _ in range(real // 2**20):
            f.write(bytes(2**20))
    honest = tmp_path / "honest.zip"
    honest.write_bytes(liar.read_bytes())
    patch_zip_sizes(liar, 1000)  # small in the header, 48 MB in fact
    for archive in (honest, liar):
        tracemalloc.start()
        got = dict(member_bytes(archive, "zip", [LINK]))
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert got == {LINK: None}
        assert peak < 4 * 2**20, f"{archive.name}: {peak / 2**20:.1f} MB held to refuse a member"


def test_reading_stops_one_byte_past_the_cap(monkeypatch):
    monkeypatch.setattr(members, "MAX_MEMBER_BYTES", 1000)
    f = io.BytesIO(bytes(50_000))
    with pytest.raises(Refused):
        members._capped(f)
    assert f.tell() == 1001
    assert members._capped(io.BytesIO(bytes(1000))) == bytes(1000)


def test_zip_links_are_skipped_and_of_two_members_of_one_name_the_last_is_read(tmp_path, caplog):
    link = zipfile.ZipInfo("20_0_0_20170109150557005.jpg")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    good = "21_0_0_20170109150557006.jpg"
    path = tmp_path / "d.zip"
    with pytest.warns(UserWarning, match="Duplicate name"), zipfile.ZipFile(path, "w") as z:
        z.writestr(link, "/etc/passwd")
        z.writestr(good, b"first")
        z.writestr(good, b"second")
    caplog.set_level(logging.WARNING)
    assert list_images(path)[1] == [(good, 6)]
    assert skip_lines(caplog) == [expected(path, [(link.filename, WHY_SYMLINK)])]
    assert dict(member_bytes(path, "zip", [good, link.filename])) == {good: b"second", link.filename: None}


def add(t: tarfile.TarFile, name: str, data: bytes | None = None, **kw) -> None:
    info = tarfile.TarInfo(name)
    for k, v in kw.items():
        setattr(info, k, v)
    info.size = len(data) if data is not None else 0
    t.addfile(info, io.BytesIO(data) if data is not None else None)


@pytest.mark.parametrize("link_last", [True, False])
def test_a_tar_with_a_link_and_a_file_of_one_name_reads_the_last_and_never_the_link(utk, tmp_path, caplog, link_last):
    folder, good = utk
    path = tmp_path / "d.tar.gz"
    with tarfile.open(path, "w:gz") as t:
        for g in good:
            t.add(folder / g, g)
        regular = lambda: add(t, LINK, b"the regular one")  # noqa: E731
        link = lambda: add(t, LINK, type=tarfile.SYMTYPE, linkname="/etc/passwd")  # noqa: E731
        for make in ((regular, link) if link_last else (link, regular)):
            make()
    caplog.set_level(logging.WARNING)
    sc = scan(path)
    images = load_images(sc, sc.samples, 24, progress=False)
    assert sorted(s.name for s in images.samples) == sorted(good)  # the regular one is no image: unreadable
    read = dict(member_bytes(path, "tar", [LINK]))
    if link_last:
        assert LINK not in [s.member for s in sc.samples] and read == {LINK: None}
        assert skip_lines(caplog)[0] == expected(path, [(LINK, WHY_SYMLINK)])
    else:
        assert LINK in [s.member for s in sc.samples] and read == {LINK: b"the regular one"}
        assert not skip_lines(caplog)


def test_tar_hard_links_devices_fifos_and_members_over_the_cap_are_skipped(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(members, "MAX_MEMBER_BYTES", 2**20)
    names = [f"{20 + i}_0_0_2017010915055700{i}.jpg" for i in range(6)]
    path = tmp_path / "d.tar"
    with tarfile.open(path, "w") as t:
        add(t, names[0], b"regular")
        add(t, names[1], type=tarfile.LNKTYPE, linkname=names[0])
        add(t, names[2], type=tarfile.CHRTYPE, devmajor=1, devminor=5)
        add(t, names[3], type=tarfile.FIFOTYPE)
        add(t, names[4], bytes(2**20 + 1))
        add(t, names[5], b"another")
    caplog.set_level(logging.WARNING)
    assert [m for m, _ in list_images(path)[1]] == [names[0], names[5]]
    whys = [(names[1], WHY_HARD_LINK), (names[2], WHY_CHAR_DEVICE), (names[3], WHY_FIFO)]
    assert skip_lines(caplog) == [expected(path, whys, n=4).replace("64 MB", "1 MB")]
    got = dict(member_bytes(path, "tar", names))
    assert got == {names[0]: b"regular", names[5]: b"another", **{n: None for n in names[1:5]}}


ARCHIVE = """
from agegender.data.utkface import DatasetError, scan
try:
    scan({path!r})
except DatasetError as e:
    print(e)
"""


@pytest.mark.parametrize("name, kind", [("set.zip", "zip"), ("set.tar.gz", "tar")])
def test_an_archive_that_is_a_fifo_or_a_link_to_dev_zero_is_refused_unopened(tmp_path, name, kind):
    fifo, zero = tmp_path / "fifo" / name, tmp_path / "zero" / name
    fifo.parent.mkdir()
    zero.parent.mkdir()
    os.mkfifo(fifo)
    zero.symlink_to("/dev/zero")
    for path, why in ((fifo, SPECIAL_KINDS[stat.S_IFIFO]), (zero, SPECIAL_KINDS[stat.S_IFCHR])):
        try:
            r = run_isolated(ARCHIVE.format(path=str(path)))
        except subprocess.TimeoutExpired:
            pytest.fail(f"opening {path} as a {kind} did not finish")
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == ERR_ARCHIVE.format(path=path, kind=kind, detail=why)
