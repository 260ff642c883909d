import logging
import shutil
import tarfile
import zipfile
from collections import Counter

import numpy as np
import pytest

from agegender.data import utkface as data
from agegender.data.utkface import DatasetError, cached_images, evenly_spaced, load_images, scan, split_of
from agegender.faces.detect import ERR_UNREADABLE, WHY_CORRUPT, WHY_EMPTY, WHY_NOT_IMAGE

from ..conftest import MALFORMED, make_dataset


def test_split_is_stable_between_subset_and_superset(tmp_path):
    full = tmp_path / "full"
    names = make_dataset(full, n=60)
    sub = tmp_path / "sub"
    sub.mkdir()
    for n in names[::3]:
        shutil.copy(full / n, sub / n)
    split_full = {s.name: s.split for s in scan(full).samples}
    split_sub = {s.name: s.split for s in scan(sub).samples}
    assert split_sub and all(split_full[n] == sp for n, sp in split_sub.items())


@pytest.mark.parametrize("length", [0, 1, 7, 99, 100, 101, 250])
@pytest.mark.parametrize("n", [1, 3, 100])
def test_evenly_spaced_takes_every_kth_from_the_first(length, n):
    import pandas as pd

    items = list(range(length))
    got = evenly_spaced(items, n)
    step = max(1, length // n)
    assert got == items[::step][:n] and len(got) == min(n, length)
    assert list(evenly_spaced(pd.DataFrame({"i": items}, index=items[::-1]), n)["i"]) == got  # rows by position
    assert evenly_spaced(items, 0) == []


def test_split_proportions_and_chip_forms_agree():
    names = [f"{i % 90}_{i % 2}_{i % 5}_2017{i:013d}.jpg.chip.jpg" for i in range(20000)]
    counts = Counter(split_of(n) for n in names)
    assert abs(counts["train"] / 20000 - 0.8) < 0.01
    assert abs(counts["val"] / 20000 - 0.1) < 0.01
    assert all(split_of(n) == split_of(n.replace(".jpg.chip.jpg", ".jpg")) for n in names[:500])


def test_malformed_names_are_reported_once_and_skipped(tmp_path, caplog):
    names = make_dataset(tmp_path, n=10)
    for bad in MALFORMED:
        shutil.copy(tmp_path / names[0], tmp_path / bad)
    (tmp_path / "readme.txt").write_text("not an image")
    with caplog.at_level(logging.WARNING):
        sc = scan(tmp_path)
    assert len(sc.samples) == 10
    assert sorted(sc.malformed) == sorted(MALFORMED)
    warnings = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith("skipped 3 file(s)")


def test_unreadable_images_are_reported_and_dropped(tmp_path, caplog):
    make_dataset(tmp_path, n=6)
    (tmp_path / "30_1_2_20170109150557999.jpg.chip.jpg").write_bytes(b"\xff\xd8 truncated")
    sc = scan(tmp_path)
    assert len(sc.samples) == 7
    with caplog.at_level(logging.WARNING):
        images = load_images(sc, sc.samples, 16, progress=False)
    assert len(images.samples) == 6 and images.pixels.shape == (6, 16, 16, 3)
    assert images.unreadable == ["30_1_2_20170109150557999.jpg.chip.jpg"]
    assert images.why == {"30_1_2_20170109150557999.jpg.chip.jpg": ERR_UNREADABLE.format(
        name="30_1_2_20170109150557999.jpg.chip.jpg", detail=WHY_NOT_IMAGE)}  # no JPEG past its marker
    assert any("1 unreadable image" in r.getMessage() for r in caplog.records)


def damage(folder, names) -> dict[str, str]:
    """Truncate, empty and replace three of a generated dataset's files; their expected messages."""
    truncated, empty, corrupt = names[:3]
    raw = (folder / truncated).read_bytes()
    (folder / truncated).write_bytes(raw[: len(raw) // 2])
    (folder / empty).write_bytes(b"")
    (folder / corrupt).write_bytes(b"GIF89a? no")
    return {truncated: ERR_UNREADABLE.format(name=truncated, detail=WHY_CORRUPT),
            empty: ERR_UNREADABLE.format(name=empty, detail=WHY_EMPTY),
            corrupt: ERR_UNREADABLE.format(name=corrupt, detail=WHY_NOT_IMAGE)}


def test_damaged_files_are_counted_reported_once_with_reasons_and_skipped(tmp_path, caplog):
    names = make_dataset(tmp_path / "d", n=10, size=64)
    expected = damage(tmp_path / "d", names)
    sc = scan(tmp_path / "d")
    for attempt in ("built", "from the cache"):
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            images = cached_images(sc, 16, tmp_path / "cache")
        assert len(images.samples) == 7 and len(images.pixels) == 7, attempt
        assert images.why == dict(sorted(expected.items())), attempt
        [report] = [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()]
        assert report == "skipped 3 unreadable image(s), e.g. " + "; ".join(v for _, v in sorted(expected.items()))


@pytest.mark.parametrize("form", ["zip", "tar.gz"])
def test_archives_read_like_the_folder(tmp_path, form):
    folder = tmp_path / "UTKFace"
    make_dataset(folder, n=12)
    archive = tmp_path / f"utk.{form}"
    if form == "zip":
        with zipfile.ZipFile(archive, "w") as z:
            for p in sorted(folder.iterdir()):
                z.write(p, f"outer/UTKFace/{p.name}")  # nested folders, as the Kaggle zip ships
            z.writestr("__MACOSX/outer/UTKFace/._1_0_0_20170109150557335.jpg", b"junk")
    else:
        with tarfile.open(archive, "w:gz") as t:
            t.add(folder, arcname="UTKFace")
    a, f = scan(archive), scan(folder)
    assert [s.name for s in a.samples] == [s.name for s in f.samples]
    pa = load_images(a, a.samples, 16, progress=False)
    pf = load_images(f, f.samples, 16, progress=False)
    assert [s.name for s in pa.samples] == [s.name for s in pf.samples]
    np.testing.assert_array_equal(pa.pixels, pf.pixels)


def test_cache_is_reused(tmp_path, monkeypatch):
    make_dataset(tmp_path / "d", n=8)
    sc = scan(tmp_path / "d")
    first = cached_images(sc, 16, tmp_path / "cache")
    monkeypatch.setattr(data, "decode", lambda *a: pytest.fail("decoded again despite the cache"))
    second = cached_images(sc, 16, tmp_path / "cache")
    np.testing.assert_array_equal(first.pixels, second.pixels)
    assert [s.member for s in first.samples] == [s.member for s in second.samples]


def test_missing_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match="dataset not found at .*pass the UTKFace folder"):
        scan(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no UTKFace images found"):
        scan(tmp_path / "empty")


def test_real_dataset_scan_skips_its_malformed_names(real_data):
    sc = scan(real_data)
    for bad in ("61_1_20170109150557335.jpg.chip.jpg", "61_1_20170109142408075.jpg.chip.jpg",
                "39_1_20170116174525125.jpg.chip.jpg"):
        assert any(m.endswith(bad) for m in sc.malformed)
    assert len(sc.samples) > 20000
    counts = Counter(s.split for s in sc.samples)
    assert 0.78 < counts["train"] / len(sc.samples) < 0.82


def test_too_little_disk_for_the_cache_is_reported_up_front(tmp_path, monkeypatch, caplog):
    make_dataset(tmp_path / "d", n=6)
    sc = scan(tmp_path / "d")
    monkeypatch.setattr(data.shutil, "disk_usage", lambda p: type("U", (), {"free": 1000})())
    with caplog.at_level(logging.WARNING):
        images = cached_images(sc, 16, tmp_path / "cache")
    assert len(images.samples) == 6  # nothing lost: decoded into memory
    assert "not enough disk for the image cache" in caplog.text
    assert not list((tmp_path).glob("cache/*.npy"))


def test_every_format_lists_images_through_one_place_with_one_message(tmp_path):
    from agegender.data.datasets import read_dataset
    from agegender.data.utkface import ERR_ARCHIVE, ERR_NOT_IMAGES

    notes = tmp_path / "notes.txt"
    notes.write_text("not a dataset")
    broken = tmp_path / "broken.zip"
    broken.write_bytes(b"PK not really a zip")
    for read in (scan, lambda p: read_dataset(p, format="utkface")):
        with pytest.raises(DatasetError) as e:
            read(notes)
        assert str(e.value) == ERR_NOT_IMAGES.format(path=notes)
        with pytest.raises(DatasetError) as e:
            read(broken)
        head, tail = ERR_ARCHIVE.format(path=broken, kind="zip", detail="|").split("|")  # the detail is zipfile's
        assert str(e.value).startswith(head) and str(e.value).endswith(tail), str(e.value)
