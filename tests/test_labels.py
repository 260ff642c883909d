import pytest

from agegender.labels import (
    MalformedName,
    age_bucket,
    gender_label,
    image_key,
    parse_name,
    printable,
)


@pytest.mark.parametrize("name, want", [
    ("25_1_0_20170116174525125.jpg.chip.jpg", (25, 1, 0)),
    ("25_1_0_20170116174525125.jpg", (25, 1, 0)),
    ("UTKFace/1_0_4_20161221193016140.jpg.chip.jpg", (1, 0, 4)),
    ("116_0_3_20170120134639935.JPG", (116, 0, 3)),
])
def test_parse_good_names(name, want):
    lab = parse_name(name)
    assert (lab.age, lab.gender, lab.race) == want


@pytest.mark.parametrize("name", [
    "61_1_20170109150557335.jpg.chip.jpg",  # race missing: shipped this way in UTKFace
    "39_1_20170116174525125.jpg.chip.jpg",
    "55_0_0_20170116232725357jpg.chip.jpg",  # no dot before jpg
    "25_2_0_20170116174525125.jpg",  # gender out of range
    "25_1_5_20170116174525125.jpg",  # race out of range
    "117_1_0_20170116174525125.jpg",  # age past 116
    "abc_1_0_20170116174525125.jpg",
    "25_1_0_20170116174525125.txt",
    "",
])
def test_malformed_names_raise(name):
    with pytest.raises(MalformedName):
        parse_name(name)


def test_image_key_ignores_folder_and_chip_suffix():
    assert image_key("a/b/25_1_0_20170116174525125.jpg.chip.jpg") == "25_1_0_20170116174525125"
    assert image_key("25_1_0_20170116174525125.jpg") == "25_1_0_20170116174525125"


@pytest.mark.parametrize(
    "age, bucket", [(0, "0-2"), (2, "0-2"), (3, "3-9"), (29.5, "20-29"), (70, "70+"), (116, "70+")]
)
def test_age_bucket(age, bucket):
    assert age_bucket(age) == bucket


def test_gender_label_band():
    assert gender_label(0.2) == "Male"
    assert gender_label(0.5) == "Uncertain"
    assert gender_label(0.9) == "Female"
    assert gender_label(0.6, band=(0.3, 0.7)) == "Uncertain"


def test_the_gender_call_and_the_band_agree():
    import numpy as np

    from agegender.labels import DEFAULT_BAND, called_female, gender_label

    assert called_female(0.5) and not called_female(np.nextafter(0.5, 0))
    assert list(called_female(np.array([0.1, 0.5, 0.9]))) == [False, True, True]
    for p in np.linspace(0, 1, 101):  # outside the band, the label is the call
        if not DEFAULT_BAND[0] <= p <= DEFAULT_BAND[1]:
            assert gender_label(p) == ("Female" if called_female(p) else "Male"), p


@pytest.mark.parametrize("name, shown", [
    ("ok/ä_1.jpg", "ok/ä_1.jpg"),
    ("a\nWARNING forged.jpg", "a\\nWARNING forged.jpg"),
    ("x\r\t\x00\x1b[31m.jpg", "x\\r\\t\\x00\\x1b[31m.jpg"),
    ("gpj.\u202eexe", "gpj.\\u202eexe"),
])
def test_printable_escapes_what_would_split_or_forge_a_line(name, shown):
    out = printable(name)
    assert out == shown and "\n" not in out and "\r" not in out
