"""meta.json's schema (agegender.metaschema), checked by meta.read_meta before anything uses a value: the shipped
checkpoints pass; each tampered field (issue 36's cases and their neighbours) is one line of one CheckpointError
that names the file, the field and what it must be, word for word; every violation is named, not the first; a
meta.json nested thousands deep, of gigabytes, or a FIFO, is refused without a RecursionError, MemoryError or hang."""

import json
import math
import os
import shutil
import threading

import pytest

from agegender.meta import ERR_BAD_META, ERR_NO_META, META, NOT_A_FILE, TOO_BIG, CheckpointError, read_meta
from agegender.metaschema import FIELD, MAX_BYTES, MAX_DEPTH, MISSING, TOO_DEEP, violations

from .conftest import ROOT

SHIPPED = ROOT / "checkpoints"
SOUND = json.loads((SHIPPED / "dlib-resnet29-utkface" / META).read_text())

# What each field must be, as the message says it.
PIXELS = "a whole number of pixels from 16 to 1024"
OFFSET = "a finite number of years from -1000 to 1000"
SCALE = "a finite number of years above 0, at most 1000"
STD = "a list of 3 numbers from 0.001 to 1000, one per colour channel"
MEAN = "a list of 3 finite numbers, one per colour channel"
BINS = "0 (a regression head) or a whole number of bins from 2 to 256"
DROPOUT = "a number from 0 up to (not including) 1"
ARCH = "an architecture's name, a string"
PREPROCESS = "an object with cache_size, input_size, mean and std"


def with_meta(tmp_path, meta, name="ck"):
    """A folder holding ``meta`` as its meta.json (NaN and infinity written as Python's json writes them)."""
    folder = tmp_path / name
    folder.mkdir(parents=True)
    (folder / META).write_text(json.dumps(meta) if not isinstance(meta, str) else meta)
    return folder


def changed(**changes) -> dict:
    """The shipped meta.json with top-level fields replaced, and preprocess fields by "preprocess_KEY"."""
    meta = json.loads(json.dumps(SOUND))
    for key, value in changes.items():
        if key.startswith("preprocess_"):
            meta["preprocess"][key.removeprefix("preprocess_")] = value
        else:
            meta[key] = value
    return meta


def refused(folder) -> str:
    with pytest.raises(CheckpointError) as e:
        read_meta(folder)
    return str(e.value)


def bad(folder, *lines) -> str:
    return ERR_BAD_META.format(path=folder, META=META, detail="; ".join(lines))


@pytest.mark.parametrize("name", ["dlib-resnet29-utkface", "dlib-resnet29-balanced"])
def test_the_shipped_checkpoints_pass(name):
    meta = read_meta(SHIPPED / name)
    assert violations(meta, ["dlib-resnet29"]) == [] and meta["preprocess"]["input_size"] == 128


# (the change, the line it gives); the first eleven are the issue's, the rest their neighbours
CASES = [
    ({"age_scale": math.nan}, FIELD.format(field="age_scale", expected=SCALE, value="nan")),
    ({"age_offset": math.inf}, FIELD.format(field="age_offset", expected=OFFSET, value="inf")),
    ({"preprocess_std": [0.229, 0, 0.225]}, FIELD.format(field="preprocess.std", expected=STD,
                                                         value="[0.229, 0, 0.225]")),
    ({"preprocess_input_size": 100000}, FIELD.format(field="preprocess.input_size", expected=PIXELS, value="100000")),
    ({"preprocess_cache_size": 112}, FIELD.format(field="preprocess.input_size", value="128",
                                                  expected="at most preprocess.cache_size (112)")),
    ({"age_offset": "thirty"}, FIELD.format(field="age_offset", expected=OFFSET, value="'thirty'")),
    ({"age_bins": "many"}, FIELD.format(field="age_bins", expected=BINS, value="'many'")),
    ({"dropout": "0.1x"}, FIELD.format(field="dropout", expected=DROPOUT, value="'0.1x'")),
    ({"arch": ["dlib-resnet29"]}, FIELD.format(field="arch", expected=ARCH, value="['dlib-resnet29']")),
    ({"preprocess": "imagenet"}, FIELD.format(field="preprocess", expected=PREPROCESS, value="'imagenet'")),
    ({"preprocess_mean": [0.5]}, FIELD.format(field="preprocess.mean", expected=MEAN, value="[0.5]")),
    ({"preprocess_input_size": 0}, FIELD.format(field="preprocess.input_size", expected=PIXELS, value="0")),
    ({"preprocess_input_size": -128}, FIELD.format(field="preprocess.input_size", expected=PIXELS, value="-128")),
    ({"preprocess_input_size": 127.5}, FIELD.format(field="preprocess.input_size", expected=PIXELS, value="127.5")),
    ({"preprocess_cache_size": "144"}, FIELD.format(field="preprocess.cache_size", expected=PIXELS, value="'144'")),
    ({"preprocess_std": [1e-300] * 3}, FIELD.format(field="preprocess.std", expected=STD,
                                                    value="[1e-300, 1e-300, 1e-300]")),
    ({"preprocess_mean": [0.5, math.nan, 0.5]}, FIELD.format(field="preprocess.mean", expected=MEAN,
                                                             value="[0.5, nan, 0.5]")),
    ({"preprocess_mean": "0.5"}, FIELD.format(field="preprocess.mean", expected=MEAN, value="'0.5'")),
    ({"age_scale": 0}, FIELD.format(field="age_scale", expected=SCALE, value="0")),
    ({"age_scale": -20.0}, FIELD.format(field="age_scale", expected=SCALE, value="-20.0")),
    ({"age_scale": 1e300}, FIELD.format(field="age_scale", expected=SCALE, value="1e+300")),
    ({"age_scale": True}, FIELD.format(field="age_scale", expected=SCALE, value="True")),
    ({"age_offset": None}, FIELD.format(field="age_offset", expected=OFFSET, value="None")),
    ({"age_bins": 100000}, FIELD.format(field="age_bins", expected=BINS, value="100000")),
    ({"age_bins": 1}, FIELD.format(field="age_bins", expected=BINS, value="1")),
    ({"age_bins": 121.0}, FIELD.format(field="age_bins", expected=BINS, value="121.0")),
    ({"dropout": 1.0}, FIELD.format(field="dropout", expected=DROPOUT, value="1.0")),
    ({"dropout": -0.1}, FIELD.format(field="dropout", expected=DROPOUT, value="-0.1")),
    ({"age_range": [90, 10]}, FIELD.format(field="age_range", value="[90, 10]",
                                           expected="two finite ages from -1000 to 1000, the first smaller")),
    ({"labels": ["male", "female"]}, FIELD.format(field="labels", expected="an object", value="['male', 'female']")),
    ({"weights_sha256": "x" * 64}, FIELD.format(field="weights_sha256", expected="64 hexadecimal digits",
                                                value="'" + "x" * 56 + "...")),
    ({"metrics": {"val": [1, 2]}}, FIELD.format(field="metrics", expected="an object of figures by split, each an "
                                                "object", value="{'val': [1, 2]}")),
    ({"soup": {"runs": "all"}}, FIELD.format(field="soup.runs", expected="a list of objects, one per run",
                                             value="'all'")),
    ({"train_config": {"folds": "thirty"}}, FIELD.format(field="train_config.folds", value="'thirty'",
                                                         expected="a whole number of folds, 2 or more")),
    ({"holdout": {"fold": "first"}}, FIELD.format(field="holdout.fold", expected="a whole number, -1 for none",
                                                  value="'first'")),
    ({"format": 1}, FIELD.format(field="format", expected="a string", value="1")),
]


@pytest.mark.parametrize(("change", "line"), CASES, ids=[",".join(c) + f"-{i}" for i, (c, _) in enumerate(CASES)])
def test_each_tampered_field_is_named_with_what_it_must_be(tmp_path, change, line):
    folder = with_meta(tmp_path, changed(**change))
    assert refused(folder) == bad(folder, line)


def test_every_violation_is_named_not_only_the_first(tmp_path):
    meta = changed(age_scale=math.nan, preprocess_std=[0, 0, 0], dropout="0.1x", arch=7)
    del meta["labels"]
    folder = with_meta(tmp_path, meta)
    assert refused(folder) == bad(
        folder, MISSING.format(fields="labels"), FIELD.format(field="arch", expected=ARCH, value="7"),
        FIELD.format(field="preprocess.std", expected=STD, value="[0, 0, 0]"),
        FIELD.format(field="age_scale", expected=SCALE, value="nan"),
        FIELD.format(field="dropout", expected=DROPOUT, value="'0.1x'"))


def test_an_unknown_architecture_is_named_where_the_registry_is_known(tmp_path):
    meta = changed(arch="resnet9000")
    assert violations(meta) == []  # the torch-free reader does not know the registry
    assert violations(meta, ["resnet18", "dlib-resnet29"]) == [
        FIELD.format(field="arch", expected="one of resnet18, dlib-resnet29", value="'resnet9000'")]


def test_a_value_is_shown_on_one_line_and_cut_short(tmp_path):
    folder = with_meta(tmp_path, changed(age_offset="3\n0\x1b[2J" + "y" * 500))
    message = refused(folder)
    assert "\n" not in message and "\x1b" not in message and "\\n0\\x1b[2J" in message and len(message) < 400


def test_the_file_name_in_the_message_is_printable(tmp_path):
    folder = with_meta(tmp_path, changed(age_scale=math.nan), name="ck\nforged line")
    assert refused(folder).startswith(f"{tmp_path}/ck\\nforged line/meta.json is corrupt (age_scale must be")


@pytest.mark.parametrize("levels", [MAX_DEPTH + 1, 5000, 200_000])
def test_deep_nesting_anywhere_is_refused_without_recursion_error(tmp_path, levels):
    text = json.dumps(SOUND)[:-1] + ', "notes": ' + "[" * levels + "]" * levels + "}"
    folder = with_meta(tmp_path, text)
    assert refused(folder) == bad(folder, TOO_DEEP)


def test_nesting_within_the_bound_passes(tmp_path):
    nested = 1
    for _ in range(MAX_DEPTH - 1):
        nested = [nested]
    assert read_meta(with_meta(tmp_path, {**SOUND, "notes": nested}))["notes"]


def test_a_huge_meta_json_is_refused_without_reading_it(tmp_path):
    folder = with_meta(tmp_path, SOUND)
    with open(folder / META, "r+b") as f:
        f.truncate(8 << 30)  # sparse: 8 GB that take no disk and must take no memory
    assert refused(folder) == bad(folder, TOO_BIG)
    with open(folder / META, "r+b") as f:
        f.truncate(MAX_BYTES + 1)
    assert refused(folder) == bad(folder, TOO_BIG)


def test_a_fifo_or_a_device_as_meta_json_is_refused_without_hanging(tmp_path):
    folder = tmp_path / "ck"
    folder.mkdir()
    os.mkfifo(folder / META)
    (tmp_path / "dev").mkdir()
    os.symlink("/dev/zero", tmp_path / "dev" / META)
    got = {}
    worker = threading.Thread(target=lambda: got.update(fifo=refused(folder), dev=refused(tmp_path / "dev")),
                              daemon=True)
    worker.start()
    worker.join(timeout=20)
    if worker.is_alive():  # unblock the reader so the test run can end, then fail
        with open(folder / META, "w"):
            pass
        pytest.fail("reading a FIFO as meta.json hangs")
    assert got == {"fifo": bad(folder, NOT_A_FILE), "dev": bad(tmp_path / "dev", NOT_A_FILE)}


@pytest.mark.parametrize("data", [b"\xff\xfe{\x00}\x00", "\ufeff{}".encode(), b"", b"NaN", b"1e999999"])
def test_bytes_that_are_no_json_object_are_refused_in_one_line(tmp_path, data):
    folder = tmp_path / "ck"
    folder.mkdir()
    (folder / META).write_bytes(data)
    message = refused(folder)
    assert message.startswith(f"{folder}/meta.json is corrupt (not ") and "\n" not in message


def test_a_missing_meta_json_and_a_dangling_link_say_it_is_missing(tmp_path):
    (tmp_path / "ck").mkdir()
    assert refused(tmp_path / "ck") == ERR_NO_META.format(path=tmp_path / "ck", META=META)
    os.symlink(tmp_path / "nowhere", tmp_path / "ck" / META)
    assert refused(tmp_path / "ck") == ERR_NO_META.format(path=tmp_path / "ck", META=META)


def test_a_copy_of_a_shipped_folder_with_its_meta_json_untouched_passes(tmp_path):
    copy = shutil.copytree(SHIPPED / "dlib-resnet29-balanced", tmp_path / "copy")
    assert read_meta(copy) == json.loads((SHIPPED / "dlib-resnet29-balanced" / META).read_text())
