"""Tampered checkpoints (issue 36): the checksum covers the weights only, so meta.json is what a hostile hand
edits. On a copy of a shipped checkpoint (never checkpoints/ itself), each tampered field is one CheckpointError
naming the file and the field, never a NaN age or a silently different prediction; the predict and audit commands
say so in one line and exit non-zero; the catalog and the dashboard's picker survive one bad checkpoint (nested
thousands deep, of gigabytes, or NaN) among good ones, which still work."""

import json
import math
import shutil
import struct
import subprocess
import sys

import matplotlib.cbook
import pytest
from streamlit.testing.v1 import AppTest

from agegender.meta import ERR_BAD_META, META, TOO_BIG, CheckpointError
from agegender.metaschema import FIELD, RULES, TOO_DEEP
from agegender.models import catalog
from agegender.models.checkpoint import ERR_NOT_FINITE, ERR_SHAPES, WEIGHTS, load_checkpoint, sha256_file

from ..conftest import ROOT

SHIPPED = ROOT / "checkpoints" / "dlib-resnet29-utkface"
HOPPER = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
EXPECTED = {name: want for name, _, _, want in RULES}  # test_meta_schema pins these word for word


@pytest.fixture
def copy(tmp_path):
    return shutil.copytree(SHIPPED, tmp_path / "ck" / "good")


def tamper(folder, field, value):
    """meta.json's ``field`` ("a" or "a.b") set to ``value``; the weights, and so their checksum, untouched."""
    meta = json.loads((folder / META).read_text())
    *parents, key = field.split(".")
    holder = meta
    for p in parents:
        holder = holder[p]
    holder[key] = value
    (folder / META).write_text(json.dumps(meta))
    return folder


def shown(value) -> str:
    return repr(value)


# the cases: each was a NaN age, a silently different prediction or a raw traceback
TAMPERED = [("age_scale", math.nan), ("age_offset", math.inf), ("preprocess.std", [0.229, 0.0, 0.225]),
            ("preprocess.input_size", 100000), ("age_offset", "thirty"), ("age_bins", "many"), ("dropout", "0.1x"),
            ("arch", ["dlib-resnet29"]), ("preprocess", "imagenet"), ("preprocess.mean", [0.485]),
            ("preprocess.input_size", 0), ("preprocess.input_size", -128), ("preprocess.cache_size", "144"),
            ("dropout", "thirty"), ("preprocess.mean", ["thirty", 0.456, 0.406]), ("age_range", [0]),
            ("age_scale", 1e300), ("age_bins", 1)]


@pytest.mark.parametrize(("field", "value"), TAMPERED, ids=[f"{f}={v!r}" for f, v in TAMPERED])
def test_each_tampered_field_is_one_checkpoint_error_naming_file_and_field(copy, field, value):
    tamper(copy, field, value)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(copy)
    line = FIELD.format(field=field, expected=EXPECTED[field], value=shown(value))
    assert str(e.value) == ERR_BAD_META.format(path=copy, META=META, detail=line)


def test_a_cache_size_below_the_input_size_is_refused_not_a_silent_change(copy):
    tamper(copy, "preprocess.cache_size", 112)  # the crop of 128 px would no longer be what training saw
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(copy)
    assert str(e.value) == ERR_BAD_META.format(path=copy, META=META, detail=FIELD.format(
        field="preprocess.input_size", expected="at most preprocess.cache_size (112)", value="128"))


def test_an_unknown_architecture_and_another_field_are_named_together(copy):
    tamper(tamper(copy, "arch", "resnet9000"), "age_scale", -1)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(copy)
    assert str(e.value) == ERR_BAD_META.format(path=copy, META=META, detail="; ".join([
        FIELD.format(field="age_scale", expected=EXPECTED["age_scale"], value="-1"),
        FIELD.format(field="arch", expected="one of resnet18, resnet34, resnet50, dlib-resnet29",
                     value="'resnet9000'")]))


def test_the_untampered_copy_loads_with_finite_figures(copy):
    c = load_checkpoint(copy)
    assert c.preprocess.input_size == 128 and all(math.isfinite(v) for v in (c.scaling.offset, c.scaling.scale))


def run(*args, timeout=240):
    return subprocess.run([sys.executable, "-m", *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def test_predict_json_on_a_tampered_copy_exits_non_zero_in_one_line(copy):
    tamper(copy, "age_scale", math.nan)
    r = run("agegender.predict", HOPPER, "--checkpoint", copy, "--json")
    line = FIELD.format(field="age_scale", expected=EXPECTED["age_scale"], value="nan")
    assert r.returncode != 0 and r.stdout == ""  # no JSON at all rather than "age": NaN
    assert r.stderr.splitlines() == [f"error: {ERR_BAD_META.format(path=copy, META=META, detail=line)}"]


def test_audit_names_the_file_and_field_of_a_value_that_is_no_number(copy, tiny_data, tmp_path):
    tamper(copy, "dropout", "thirty")
    r = run("agegender.audit", "--data", tiny_data, "--checkpoint", copy, "--split", "val", "--json",
            tmp_path / "audit.json", "--cache-dir", tmp_path / "cache", "--threads", "1")
    line = FIELD.format(field="dropout", expected=EXPECTED["dropout"], value="'thirty'")
    assert r.returncode != 0 and "could not convert" not in r.stderr
    assert r.stderr.splitlines()[-1] == f"error: {ERR_BAD_META.format(path=copy, META=META, detail=line)}"


@pytest.fixture
def mixed(copy):
    """checkpoints/ as a hostile user leaves it: the good copy, and beside it a meta.json nested 100,000 deep,
    one of 8 GB (sparse), one with a NaN scale and one whose age_bins is a word."""
    root = copy.parent
    for name in ("deep", "huge", "nan", "words"):
        shutil.copytree(copy, root / name)
    (root / "deep" / META).write_text('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with open(root / "huge" / META, "r+b") as f:
        f.truncate(8 << 30)
    tamper(root / "nan", "age_scale", math.nan)
    tamper(root / "words", "age_bins", "many")
    return root


def test_the_catalog_lists_the_good_among_bad_ones(mixed):
    paths = catalog.list_checkpoints(mixed)
    assert [p.name for p in paths] == ["deep", "good", "huge", "nan", "words"]
    assert catalog.default_pick(paths) == [mixed / "good"]  # a fresh session starts on one that works
    assert catalog.default_pick([p for p in paths if p.name != "good"]) == []  # never on one that cannot load
    problems = {p.name: catalog.problem_of(p) for p in paths}
    assert problems["good"] is None
    assert problems["deep"] == ERR_BAD_META.format(path=mixed / "deep", META=META, detail=TOO_DEEP)
    assert problems["huge"] == ERR_BAD_META.format(path=mixed / "huge", META=META, detail=TOO_BIG)
    assert "(age_scale must be" in problems["nan"] and "(age_bins must be" in problems["words"]
    table = catalog.summary_table(paths=paths).set_index("checkpoint")
    assert table.loc["good", "health"] == "ok" and table.loc["good", "input px"] == 128
    assert {name: table.loc[name, "problem"] for name in problems if name != "good"} == \
        {name: p for name, p in problems.items() if name != "good"}
    assert [catalog.trained_on(p) for p in paths if p.name != "good"] == [[]] * 4


def test_the_picker_renders_with_a_bad_checkpoint_beside_a_good_one(mixed, monkeypatch):
    from dashboard.state import UNUSABLE_HELP

    monkeypatch.setenv("AGEGENDER_CHECKPOINTS", str(mixed))
    monkeypatch.delenv("AGEGENDER_ALLOWED_ROOTS", raising=False)
    at = AppTest.from_file(str(ROOT / "dashboard" / "app.py"), default_timeout=120)
    at.session_state["picker_names"] = ["deep", "good"]
    at.run()
    assert not at.exception, at.exception
    picker = at.sidebar.multiselect[0]
    assert set(picker.options) >= {"deep (unusable)", "good", "huge (unusable)"}
    assert [w.value for w in at.sidebar.warning] == [UNUSABLE_HELP.format(n=1)]
    assert at.sidebar.code[0].value == ERR_BAD_META.format(path=mixed / "deep", META=META, detail=TOO_DEEP)
    at.switch_page("pages/checkpoints.py").run()
    assert not at.exception, at.exception
    assert "good" in list(at.dataframe[0].value["checkpoint"])


@pytest.mark.parametrize("record", [[1, 2], "cqr", {"method": ["cqr"]}, {"method": "cqr", "coverage": math.nan},
                                    {"method": "cqr-by-predicted-age", "edges": ["0"], "t_by_bucket": [math.inf]}])
def test_a_tampered_age_interval_keeps_the_load_and_is_refused_where_asked(copy, record):
    from agegender.meta import IntervalError

    c = load_checkpoint(tamper(copy, "age_interval", record))  # the model still predicts ages
    with pytest.raises(IntervalError) as e:
        _ = c.calibration
    assert str(e.value).startswith(f"{copy}/meta.json has a malformed age_interval record (")


def test_nan_weights_under_a_matching_checksum_are_refused(copy):
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(copy / WEIGHTS))
    name = next(k for k, v in tensors.items() if v.is_floating_point())
    tensors[name][0] = math.nan
    save_file(tensors, str(copy / WEIGHTS))
    tamper(copy, "weights_sha256", sha256_file(copy / WEIGHTS))  # the checksum lives in meta.json: a hand fixes it
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(copy)
    assert str(e.value) == ERR_NOT_FINITE.format(path=copy, WEIGHTS=WEIGHTS, n=1, names=name)


def test_weights_whose_header_claims_gigabytes_are_refused_before_reading_them(copy, monkeypatch):
    n = 3 * 2 ** 27  # 1.5 GB of float32, as the header states; the file is sparse
    header = json.dumps({"trunk.evil": {"dtype": "F32", "shape": [n], "data_offsets": [0, 4 * n]}}).encode()
    header += b" " * (-len(header) % 8)
    with open(copy / WEIGHTS, "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header)
        f.truncate(8 + len(header) + 4 * n)
    for name in ("sha256_file", "load_file"):  # neither hashed nor loaded: the header alone refuses it
        monkeypatch.setattr(f"agegender.models.checkpoint.{name}", lambda *a, name=name: pytest.fail(f"{name} ran"))
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(copy)
    assert str(e.value) == ERR_SHAPES.format(path=copy, arch="dlib-resnet29", detail="missing trunk.conv1.weight; "
                                             "missing trunk.conv1.bias; missing trunk.affine1.weight (and 118 more)")
