"""One reading interface over UTKFace names, FairFace's CSV and a user's labels file, from generated fixtures."""

from __future__ import annotations

import logging
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agegender.data import datasets as ds
from agegender.data import labelsfile as lf
from agegender.data.datasets import FAIRFACE_BINS, Problem, Record, bin_label, bin_of, parse_age_bin, read_dataset
from agegender.data.utkface import DatasetError
from agegender.labels import RACES

from ..conftest import MALFORMED, fairface_sample_or_skip, make_dataset

FF_HEADER = "file,age,gender,race,service_test\n"
FF_ROWS = [("val/1.jpg", "more than 70", "Female", "Indian"), ("val/2.jpg", "0-2", "Male", "White"),
           ("val/3.jpg", "30-39", "Female", "Latino_Hispanic")]


def jpeg(path: Path, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=90)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def fairface(folder: Path, rows=FF_ROWS, extra: str = "") -> Path:
    for i, (file, *_rest) in enumerate(rows):
        jpeg(folder / file, i)
    body = "".join(f"{f},{a},{g},{r},False\n" for f, a, g, r in rows)
    return write(folder / "fairface_label_val.csv", FF_HEADER + body + extra)


def zip_folder(folder: Path, out: Path, top: str = "") -> Path:
    with zipfile.ZipFile(out, "w") as z:
        for p in sorted(folder.rglob("*.jpg")):
            z.write(p, top + p.relative_to(folder).as_posix())
    return out


def skipped_warning(caplog, n: int, details: str) -> None:
    warnings = [r.getMessage() for r in caplog.records if r.name == "agegender.data.datasets"]
    assert warnings == [ds.WARN_SKIPPED.format(n=n, details=details)]


# ---- UTKFace --------------------------------------------------------------------------------------------

def test_utkface_folder_gives_exact_ages_five_groups_and_chips(tmp_path):
    names = make_dataset(tmp_path / "UTKFace", n=12, size=16)
    d = read_dataset(tmp_path / "UTKFace")
    assert (d.format, d.geometry, d.group_columns, d.problems) == ("utkface", "chips", ("race",), {})
    assert sorted(r.file for r in d.records) == sorted(names)
    for r in d.records:
        age, gender, race = r.file.split("_")[:3]
        assert r == Record(r.file, float(age), None, int(gender), {"race": RACES[int(race)]})


def test_utkface_zip_and_tar_match_the_folder_and_count_malformed_names(tmp_path):
    folder = tmp_path / "UTKFace"
    make_dataset(folder, n=6, size=16)
    for i, name in enumerate(MALFORMED):
        jpeg(folder / name, i)
    zipped = zip_folder(folder, tmp_path / "utk.zip", top="UTKFace/")
    with tarfile.open(tmp_path / "utk.tar.gz", "w:gz") as t:
        t.add(folder, "UTKFace")
    plain = read_dataset(folder)
    assert plain.problems == {ds.SKIP_NAME: Problem(3, tuple(sorted(MALFORMED)))}
    for archive in (zipped, tmp_path / "utk.tar.gz"):
        d = read_dataset(archive)
        assert [r.file for r in d.records] == ["UTKFace/" + r.file for r in plain.records]
        assert [(r.age, r.gender, r.groups) for r in d.records] == [(r.age, r.gender, r.groups) for r in plain.records]
        assert d.skipped == 3


def test_utkface_refuses_a_labels_file(tmp_path):
    make_dataset(tmp_path / "u", n=2, size=16)
    with pytest.raises(DatasetError) as e:
        read_dataset(tmp_path / "u", labels=write(tmp_path / "l.csv", "a\n1\n"), format="utkface")
    assert str(e.value) == ds.ERR_UTK_LABELS


# ---- FairFace -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["folder", "csv", "explicit"])
def test_fairface_is_detected_from_its_header(tmp_path, how):
    csv = fairface(tmp_path / "ff")
    path, labels, fmt = {"folder": (tmp_path / "ff", None, None), "csv": (csv, None, None),
                         "explicit": (tmp_path / "ff", csv, "fairface")}[how]
    d = read_dataset(path, labels=labels, format=fmt)
    assert (d.format, d.geometry, d.group_columns, d.problems) == ("fairface", "photos", ("race",), {})
    assert d.records == (Record("val/1.jpg", None, (70, None), 1, {"race": "Indian"}),
                         Record("val/2.jpg", None, (0, 2), 0, {"race": "White"}),
                         Record("val/3.jpg", None, (30, 39), 1, {"race": "Latino_Hispanic"}))


def test_fairface_from_a_zip_with_its_labels_beside_it(tmp_path):
    csv = fairface(tmp_path / "ff")
    d = read_dataset(zip_folder(tmp_path / "ff", tmp_path / "imgs.zip", top="fairface/"), labels=csv)
    assert d.format == "fairface"
    assert [r.file for r in d.records] == ["fairface/val/1.jpg", "fairface/val/2.jpg", "fairface/val/3.jpg"]


def test_fairface_bad_rows_are_counted_warned_once_and_skipped(tmp_path, caplog):
    bad = ("val/4.jpg,12-15,Male,White,False\n"  # not one of FairFace's bins
           "val/5.jpg,20-29,Other,White,False\n"
           "val/6.jpg,20-29,Male,Martian,False\n"
           "val/7.jpg,,Male,White,False\n"
           "val/8.jpg,20-29,Male,White,False\n"  # no such image
           "val/1.jpg,20-29,Male,White,False\n")
    for i in (4, 5, 6, 7):
        jpeg(tmp_path / "ff" / f"val/{i}.jpg", i)
    with caplog.at_level(logging.WARNING):
        d = read_dataset(fairface(tmp_path / "ff", extra=bad))
    assert len(d.records) == 3 and d.skipped == 6
    assert d.problems == {
        ds.SKIP_BIN: Problem(1, ("row 5 (val/4.jpg): '12-15'",)),
        ds.SKIP_GENDER: Problem(1, ("row 6 (val/5.jpg): 'Other'",)),
        ds.SKIP_RACE: Problem(1, ("row 7 (val/6.jpg): 'Martian'",)),
        ds.SKIP_MISSING: Problem(1, ("row 8 (val/7.jpg)",)),
        ds.SKIP_FILE: Problem(1, ("row 9 (val/8.jpg)",)),
        ds.SKIP_DUPLICATE: Problem(1, ("row 10 (val/1.jpg)",)),
    }
    skipped_warning(caplog, 6, "age bin not recognised: 1 (e.g. row 5 (val/4.jpg): '12-15'); "
                               "gender not mappable: 1 (e.g. row 6 (val/5.jpg): 'Other'); "
                               "race not one of FairFace's seven: 1 (e.g. row 7 (val/6.jpg): 'Martian'); "
                               "a required value is empty: 1 (e.g. row 8 (val/7.jpg)); "
                               "image file not found: 1 (e.g. row 9 (val/8.jpg)); "
                               "file listed twice: 1 (e.g. row 10 (val/1.jpg))")


def test_problems_keep_three_examples_of_many(tmp_path, caplog):
    extra = "".join(f"val/{i}.jpg,20-29,Male,White,False\n" for i in range(10, 15))
    with caplog.at_level(logging.WARNING):
        d = read_dataset(fairface(tmp_path / "ff", extra=extra))
    assert d.problems == {ds.SKIP_FILE: Problem(5, ("row 5 (val/10.jpg)", "row 6 (val/11.jpg)", "row 7 (val/12.jpg)"))}
    skipped_warning(caplog, 5, "image file not found: 5 (e.g. row 5 (val/10.jpg), row 6 (val/11.jpg), "
                               "row 7 (val/12.jpg))")


def test_the_real_fairface_sample():
    path = fairface_sample_or_skip()
    d = read_dataset(path)
    assert (len(d.records), d.geometry, d.format, d.problems) == (563, "photos", "fairface", {})
    assert sorted({r.groups["race"] for r in d.records}) == sorted(ds.FAIRFACE_RACES)
    assert all(r.age_bin in FAIRFACE_BINS and r.age is None for r in d.records)


# ---- a user's labels file -------------------------------------------------------------------------------

def user_images(folder: Path, n: int = 3) -> None:
    for i in range(n):
        jpeg(folder / "img" / f"p{i}.jpg", i)


def test_generic_csv_with_exact_ages_and_a_gender_map(tmp_path):
    user_images(tmp_path)
    labels = write(tmp_path / "labels.csv", "path,years,sex,site\nimg/p0.jpg,31.5,F,a\nimg/p1.jpg,4,m,b\n"
                                            "img/p2.jpg,70,M,a\n")
    d = read_dataset(tmp_path, labels=labels, columns="file=path,age=years,gender=sex,gender_map=F=1,M=0,groups=site")
    assert (d.format, d.geometry, d.group_columns, d.problems) == ("csv", "photos", ("site",), {})
    assert d.records == (Record("img/p0.jpg", 31.5, None, 1, {"site": "a"}),
                         Record("img/p1.jpg", 4.0, None, 0, {"site": "b"}),
                         Record("img/p2.jpg", 70.0, None, 0, {"site": "a"}))


def test_generic_csv_with_bins_default_genders_and_chips(tmp_path):
    user_images(tmp_path)
    labels = write(tmp_path / "l.csv", "f,bin,g\nimg/p0.jpg,20-29,female\nimg/p1.jpg,70+,1\nimg/p2.jpg,5-7,Male\n")
    d = read_dataset(labels, columns={"file": "f", "age_bin": "bin", "gender": "g", "geometry": "chips"})
    assert d.geometry == "chips" and d.group_columns == ()
    assert [(r.age_bin, r.gender) for r in d.records] == [((20, 29), 1), ((70, None), 1), ((5, 7), 0)]


def test_toml_mapping_with_two_extra_group_columns_of_any_categories(tmp_path):
    user_images(tmp_path)
    labels = write(tmp_path / "l.csv", "file,age,gender,skin,camera\nimg/p0.jpg,20,0,V,phone\n"
                                       "img/p1.jpg,30,1,II,dslr\nimg/p2.jpg,40,1,V,webcam\n")
    mapping = write(tmp_path / "m.toml", 'file = "file"\nage = "age"\ngender = "gender"\n'
                                         'groups = ["skin", "camera"]\n')
    d = read_dataset(tmp_path, labels=labels, columns=mapping)
    assert d.group_columns == ("skin", "camera")
    assert [r.groups for r in d.records] == [{"skin": "V", "camera": "phone"}, {"skin": "II", "camera": "dslr"},
                                             {"skin": "V", "camera": "webcam"}]


def test_parquet_labels(tmp_path):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    user_images(tmp_path, 2)
    pd.DataFrame({"f": ["img/p0.jpg", "img/p1.jpg"], "a": [25.0, 61.0], "g": [1, 0]}).to_parquet(tmp_path / "l.parquet")
    d = read_dataset(tmp_path, labels=tmp_path / "l.parquet", columns="file=f,age=a,gender=g")
    assert [(r.age, r.gender) for r in d.records] == [(25.0, 1), (61.0, 0)]


def test_generic_csv_skips_bad_ages_and_genders(tmp_path, caplog):
    user_images(tmp_path)
    labels = write(tmp_path / "l.csv", "f,a,g\nimg/p0.jpg,old,0\nimg/p1.jpg,-3,0\nimg/p2.jpg,30,x\nimg/p0.jpg,30,0\n")
    with caplog.at_level(logging.WARNING):
        d = read_dataset(tmp_path, labels=labels, columns="file=f,age=a,gender=g")
    assert [r.file for r in d.records] == ["img/p0.jpg"]
    skipped_warning(caplog, 3, "age is not a number of years: 2 (e.g. row 2 (img/p0.jpg): 'old', "
                               "row 3 (img/p1.jpg): '-3'); gender not mappable: 1 (e.g. row 4 (img/p2.jpg): 'x')")


# ---- labels that cannot be used at all ------------------------------------------------------------------

def error(path, **kw) -> str:
    with pytest.raises(DatasetError) as e:
        read_dataset(path, **kw)
    return str(e.value)


def test_a_missing_column_is_named_with_the_fix(tmp_path):
    user_images(tmp_path)
    labels = write(tmp_path / "l.csv", "f,g\nimg/p0.jpg,0\n")
    assert error(tmp_path, labels=labels, columns="file=f,age=years,gender=g") == ds.ERR_MISSING_COLUMN.format(
        path=labels, column="years", key="age", have="f, g")
    assert error(tmp_path, labels=labels, columns="file=f,age=f,gender=g,groups=site") == ds.ERR_MISSING_COLUMN.format(
        path=labels, column="site", key="groups", have="f, g")


@pytest.mark.parametrize("text", ["", "f,a,g\n"])
def test_an_empty_labels_file(tmp_path, text):
    labels = write(tmp_path / "l.csv", text)
    assert error(tmp_path, labels=labels, columns="file=f,age=a,gender=g") == ds.ERR_LABELS_EMPTY.format(path=labels)


def test_an_unreadable_and_a_missing_labels_file(tmp_path):
    labels = tmp_path / "l.csv"
    labels.write_bytes(b"f,a,g\n\xff\xfe,1,0\n")
    msg = error(tmp_path, labels=labels, columns="file=f,age=a,gender=g")
    assert msg == lf.ERR_LABELS_ENCODING.format(path=labels, encoding=lf.LOOKS_LATIN1.format(byte=0xFF, line=2))
    assert error(tmp_path, labels=tmp_path / "no.csv", columns="file=f,age=a,gender=g") == \
        ds.ERR_LABELS_MISSING.format(path=tmp_path / "no.csv")


def test_every_row_skipped_is_an_error(tmp_path):
    labels = write(tmp_path / "l.csv", "f,a,g\nimg/none.jpg,3,0\n")
    assert error(tmp_path, labels=labels, columns="file=f,age=a,gender=g") == ds.ERR_NO_RECORDS.format(path=labels)


def test_a_csv_that_is_not_fairface_needs_a_mapping(tmp_path):
    labels = write(tmp_path / "l.csv", "file,age,gender\nx.jpg,3,0\n")
    assert error(tmp_path, labels=labels) == ds.ERR_NO_MAPPING.format(path=labels)


@pytest.mark.parametrize("columns, message", [
    ("file=f,gender=g", ds.ERR_MAPPING_AGE),
    ("file=f,age=a,age_bin=b,gender=g", ds.ERR_MAPPING_AGE),
    ("file=f,age=a", ds.ERR_MAPPING_REQUIRED.format(key="gender")),
    ("sex=g,file=f", ds.ERR_MAPPING_PAIR.format(piece="sex=g")),
    ({"file": "f", "age": "a", "gender": "g", "colour": "c"},
     ds.ERR_MAPPING_KEY.format(key="colour", keys=", ".join(ds.MAPPING_KEYS))),
    ("file=f,age=a,gender=g,gender_map=F", ds.ERR_GENDER_MAP.format(text="F")),
    ("file=f,age=a,gender=g,gender_map=F=2", ds.ERR_GENDER_MAP.format(text="F=2")),
    ("file=f,age=a,gender=g,geometry=crops", ds.ERR_GEOMETRY.format(value="crops")),
])
def test_a_bad_mapping_names_the_fix(columns, message):
    with pytest.raises(DatasetError) as e:
        ds.parse_columns(columns)
    assert str(e.value) == message


def test_gender_map_accepts_names_and_is_case_insensitive():
    assert ds.parse_columns("file=f,age=a,gender=g,gender_map=W=female,H=male")["gender_map"] == {"w": 1, "h": 0}


def test_unknown_format_and_missing_path(tmp_path):
    assert error(tmp_path, format="imdb") == ds.ERR_FORMAT.format(format="imdb")
    assert error(tmp_path / "nowhere") == ds.ERR_NOT_FOUND.format(path=tmp_path / "nowhere")
    labels = write(tmp_path / "l.csv", "f,a,g\nx.jpg,1,0\n")
    assert error(tmp_path, labels=labels, format="csv") == ds.ERR_NO_MAPPING.format(path=labels)


# ---- fingerprint and bins -------------------------------------------------------------------------------

def test_fingerprint_changes_with_a_label_and_not_without(tmp_path):
    csv = fairface(tmp_path / "ff")
    first = read_dataset(csv).fingerprint
    assert read_dataset(csv).fingerprint == first
    assert read_dataset(tmp_path / "ff").fingerprint == first
    write(csv, csv.read_text().replace("0-2,Male", "3-9,Male"))
    assert read_dataset(csv).fingerprint != first


def test_utkface_fingerprint_is_stable(tmp_path):
    make_dataset(tmp_path / "u", n=4, size=16)
    first = read_dataset(tmp_path / "u").fingerprint
    assert read_dataset(tmp_path / "u").fingerprint == first
    make_dataset(tmp_path / "u", n=5, size=16, seed=1)
    assert read_dataset(tmp_path / "u").fingerprint != first


@pytest.mark.parametrize("text, expected", [("0-2", (0, 2)), ("20-29", (20, 29)), (" 60 - 69 ", (60, 69)),
                                            ("more than 70", (70, None)), ("70+", (70, None)),
                                            ("More Than 70", (70, None))])
def test_parse_age_bin(text, expected):
    assert parse_age_bin(text) == expected
    assert parse_age_bin(bin_label(expected)) == expected


@pytest.mark.parametrize("text", ["", "20", "29-20", "adult", "-5", "20-"])
def test_parse_age_bin_refuses(text):
    with pytest.raises(ValueError) as e:
        parse_age_bin(text)
    assert str(e.value) == ds.ERR_BIN.format(text=text)


@pytest.mark.parametrize("age, index", [(0, 0), (2.9, 0), (3, 1), (19.99, 2), (20, 3), (29.5, 3), (69.9, 7),
                                        (70, 8), (116, 8)])
def test_bin_of_fairface(age, index):
    assert bin_of(age, FAIRFACE_BINS) == index


def test_bin_of_outside_and_labels():
    assert [bin_label(b) for b in FAIRFACE_BINS] == ["0-2", "3-9", "10-19", "20-29", "30-39", "40-49", "50-59",
                                                     "60-69", "70+"]
    with pytest.raises(ValueError) as e:
        bin_of(9, [(10, 19), (20, None)])
    assert str(e.value) == ds.ERR_BIN_OF.format(age=9, bins="10-19, 20+")
