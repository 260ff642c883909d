"""agegender.data.pack: a dataset as a small zip of WebP chips that training and evaluation read like the original."""

import io
import zipfile

import numpy as np
from PIL import Image

from agegender.data.pack import main, pack
from agegender.data.utkface import scan

from ..conftest import make_dataset


def test_the_pack_keeps_names_labels_and_split_and_shrinks_the_pixels(tmp_path):
    src = tmp_path / "utk"
    names = make_dataset(src, n=30, size=60)
    (src / "3_1_20170109150557335.jpg.chip.jpg").write_bytes((src / names[0]).read_bytes())  # a malformed name
    out = tmp_path / "p.zip"
    r = pack(src, out, size=32, quality=80)
    assert r["members"] == 31 and r["kept_raw"] == []
    with zipfile.ZipFile(out) as z:
        assert sorted(z.namelist()) == sorted([*names, "3_1_20170109150557335.jpg.chip.jpg"])
        with Image.open(io.BytesIO(z.read(names[0]))) as im:
            assert (im.format, im.size) == ("WEBP", (32, 32))
    a, b = scan(src), scan(out)
    as_tuples = lambda sc: sorted((s.member, s.age, s.gender, s.race, s.split) for s in sc.samples)  # noqa: E731
    assert as_tuples(a) == as_tuples(b) and len(b.samples) == 30
    assert a.fingerprint != b.fingerprint  # other pixels: a checkpoint trained on the pack must say so


def test_packing_twice_gives_the_same_bytes(tmp_path):
    src = tmp_path / "utk"
    make_dataset(src, n=8)
    pack(src, tmp_path / "a.zip")
    pack(src, tmp_path / "b.zip")
    assert (tmp_path / "a.zip").read_bytes() == (tmp_path / "b.zip").read_bytes()


def test_a_packed_chip_stays_close_to_the_original(tmp_path):
    src = tmp_path / "utk"
    src.mkdir()
    y, x = np.mgrid[0:144, 0:144]
    smooth = np.stack([x + y, 2 * y, 288 - x - y], -1).clip(0, 255).astype(np.uint8)  # a face-like smooth image
    Image.fromarray(smooth).save(src / "30_1_0_20170109150557335.jpg.chip.jpg", quality=95)
    pack(src, tmp_path / "p.zip")
    with zipfile.ZipFile(tmp_path / "p.zip") as z, Image.open(io.BytesIO(z.read(z.namelist()[0]))) as im:
        back = np.asarray(im.convert("RGB"), dtype=float)
    assert np.abs(back - smooth).mean() < 4


def test_an_unreadable_image_goes_in_as_it_was(tmp_path, capsys):
    src = tmp_path / "utk"
    make_dataset(src, n=4)
    (src / "40_0_1_20170109150557335.jpg.chip.jpg").write_bytes(b"not an image")
    assert main(["--data", str(src), "--out", str(tmp_path / "p.zip")]) == 0
    assert "1 unreadable, kept as they were (e.g. 40_0_1_20170109150557335.jpg.chip.jpg)" in capsys.readouterr().out
    with zipfile.ZipFile(tmp_path / "p.zip") as z:
        assert z.read("40_0_1_20170109150557335.jpg.chip.jpg") == b"not an image"


def test_a_missing_or_empty_dataset_is_one_line_and_writes_nothing(tmp_path, capsys):
    assert main(["--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "p.zip")]) == 2
    assert "nowhere does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["--data", str(tmp_path / "empty"), "--out", str(tmp_path / "p.zip")]) == 2
    assert "holds no images" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.zip")) and not list(tmp_path.glob(".p.zip.tmp*"))
