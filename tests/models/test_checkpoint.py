import json
import shutil

import pytest
import torch
from safetensors.torch import save_file

from agegender.metaschema import FIELD
from agegender.models.checkpoint import (
    ERR_BAD_META,
    ERR_CHECKSUM,
    ERR_NO_FOLDER,
    ERR_NO_META,
    ERR_NO_WEIGHTS,
    ERR_NOT_SAFETENSORS,
    META,
    WEIGHTS,
    CheckpointError,
    list_checkpoints,
    load_checkpoint,
    sha256_file,
)
from agegender.models.model import ARCHS, create_model

from ..conftest import ROOT


@pytest.fixture
def ckpt(tiny_checkpoint, tmp_path):
    """A private copy of the tiny checkpoint to damage."""
    return shutil.copytree(tiny_checkpoint, tmp_path / "copy")


def expect(path, message):
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    assert str(e.value) == message


def set_meta(path, **changes):
    meta = json.loads((path / META).read_text())
    meta.update(changes)
    (path / META).write_text(json.dumps(meta))


def test_loads_and_lists(ckpt):
    c = load_checkpoint(ckpt)
    assert c.meta["arch"] == "resnet18" and not c.model.training
    assert list_checkpoints(ckpt.parent) == [ckpt]


def test_missing_folder(tmp_path):
    expect(tmp_path / "nope", ERR_NO_FOLDER.format(path=tmp_path / "nope"))


def test_missing_meta(ckpt):
    (ckpt / META).unlink()
    expect(ckpt, ERR_NO_META.format(path=ckpt, META=META))


def test_meta_not_json(ckpt):
    (ckpt / META).write_text("{ truncated")
    with pytest.raises(CheckpointError, match=r"meta.json is corrupt \(not JSON"):
        load_checkpoint(ckpt)


def test_meta_missing_keys(ckpt):
    meta = json.loads((ckpt / META).read_text())
    del meta["age_scale"]
    (ckpt / META).write_text(json.dumps(meta))
    expect(ckpt, ERR_BAD_META.format(path=ckpt, META=META, detail="missing age_scale"))


def test_missing_weights(ckpt):
    (ckpt / WEIGHTS).unlink()
    expect(ckpt, ERR_NO_WEIGHTS.format(path=ckpt, WEIGHTS=WEIGHTS))


def test_pickle_in_place_of_weights_is_never_unpickled(ckpt, monkeypatch):
    torch.save(create_model("resnet18").state_dict(), ckpt / WEIGHTS)
    monkeypatch.setattr("pickle.loads", lambda *a, **k: pytest.fail("unpickled"))
    expect(ckpt, ERR_NOT_SAFETENSORS.format(path=ckpt, WEIGHTS=WEIGHTS))


def test_tampered_weights_fail_the_checksum(ckpt):
    sd = {k: v.clone() for k, v in load_checkpoint(ckpt).model.state_dict().items()}
    sd["age_head.bias"] += 5
    save_file({k: v.contiguous() for k, v in sd.items()}, str(ckpt / WEIGHTS))
    expect(ckpt, ERR_CHECKSUM.format(path=ckpt, WEIGHTS=WEIGHTS, META=META))


def test_unknown_architecture(ckpt):
    set_meta(ckpt, arch="resnet9000")
    expect(ckpt, ERR_BAD_META.format(path=ckpt, META=META, detail=FIELD.format(
        field="arch", expected=f"one of {', '.join(ARCHS)}", value="'resnet9000'")))


def test_weights_of_another_architecture(ckpt):
    save_file({k: v.contiguous() for k, v in create_model("resnet34").state_dict().items()}, str(ckpt / WEIGHTS))
    set_meta(ckpt, weights_sha256=sha256_file(ckpt / WEIGHTS))
    with pytest.raises(CheckpointError, match=r"the weights in .* do not fit resnet18: unexpected trunk.layer1.2"):
        load_checkpoint(ckpt)


def test_a_fresh_session_starts_on_the_baseline_not_the_mitigated_checkpoint(tmp_path):
    from agegender.models.catalog import default_pick

    sound = json.loads((ROOT / "checkpoints" / "dlib-resnet29-utkface" / META).read_text())
    for name, meta in (("a-balanced", {**sound, "balance": {"method": "loss"}}), ("b-plain", sound),
                       ("c-broken", None)):
        (tmp_path / name).mkdir()
        (tmp_path / name / META).write_text("{not json" if meta is None else json.dumps(meta))
    paths = list_checkpoints(tmp_path)
    assert [p.name for p in default_pick(paths)] == ["b-plain"]
    assert [p.name for p in default_pick(paths[:1])] == ["a-balanced"]  # no baseline: the first
    assert default_pick([]) == []


# ---- the contract meta.json states, parsed once at load -----------------------------------------------------

def test_the_checkpoint_carries_its_scaling_age_range_and_calibration_parsed_at_load(ckpt, monkeypatch):
    import numpy as np

    from agegender.explain.gradcam import explain_checkpoint
    from agegender.labels import MAX_AGE
    from agegender.meta import KEY, Calibration, calibration_of
    from agegender.models import model as model_module
    from agegender.models.inference import predict_checkpoint, predict_quantiles
    from agegender.models.interval import interval_of

    meta = json.loads((ckpt / META).read_text())
    rec = Calibration("residual", 0.8, (), 2.5, 50, "val", "UTKFace", "f" * 64, meta["weights_sha256"], False)
    set_meta(ckpt, **{KEY: rec.to_json()})
    c = load_checkpoint(ckpt)
    assert (c.scaling.offset, c.scaling.scale) == (meta["age_offset"], meta["age_scale"])
    assert c.age_range == c.scaling.limits == (0.0, float(MAX_AGE))  # a regression head: the labels' range
    assert c.calibration == rec == calibration_of(c.meta, ckpt)
    assert c.preprocess.cache_size == meta["preprocess"]["cache_size"]

    def reread(*a, **k):
        raise AssertionError("meta.json's contract read again after load")

    monkeypatch.setattr(model_module.AgeScaling, "from_meta", reread)
    monkeypatch.setattr("agegender.meta.calibration_of", reread)
    monkeypatch.setattr("agegender.evaluation.intervals.calibration_of", reread)
    px = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    age, _ = predict_checkpoint(c, px, tta=False, precision="fp32")
    predict_quantiles(c, px, (0.1, 0.9), tta=False, precision="fp32")
    lo, hi = interval_of(c, age, None, tta=False)
    np.testing.assert_allclose(hi - lo, 5.0, atol=0.03)  # the record's t on each side
    explain_checkpoint(c, px[0], maps=("older",))


def test_an_unusable_interval_record_keeps_the_load_and_is_refused_word_for_word_wherever_asked(ckpt):
    from agegender.evaluation.intervals import ERR_MALFORMED, ERR_STALE, KEY, IntervalError

    meta = json.loads((ckpt / META).read_text())
    set_meta(ckpt, **{KEY: {"method": "magic"}})
    c = load_checkpoint(ckpt)  # the model still predicts ages
    detail = ("missing coverage, quantiles, t, n_cal, split, data, dataset_fingerprint, weights_sha256, tta")
    for _ask in range(2):  # each time it is asked, the same message
        with pytest.raises(IntervalError) as e:
            _ = c.calibration
        assert str(e.value) == ERR_MALFORMED.format(path=ckpt, detail=detail)
    rec = {"method": "residual", "coverage": 0.8, "quantiles": [], "t": 1.0, "n_cal": 9, "split": "val",
           "data": "UTKFace", "dataset_fingerprint": "f", "weights_sha256": "0" * 64, "tta": True}
    set_meta(ckpt, **{KEY: rec})
    with pytest.raises(IntervalError) as e:
        _ = load_checkpoint(ckpt).calibration
    assert str(e.value) == ERR_STALE.format(path=ckpt, theirs="0" * 64, ours=meta["weights_sha256"])


@pytest.mark.parametrize("changes", [{"age_scale": "wide"}, {"age_offset": None}, {"age_range": 5}])
def test_an_age_scaling_that_is_not_numbers_is_refused_in_one_line(ckpt, changes):
    from agegender.metaschema import RULES

    set_meta(ckpt, **changes)
    (field, value), = changes.items()
    expected = next(want for name, _, _, want in RULES if name == field)  # the schema's line for the field
    expect(ckpt, ERR_BAD_META.format(path=ckpt, META=META, detail=FIELD.format(field=field, expected=expected,
                                                                              value=repr(value))))


def test_no_module_reads_the_age_scaling_from_meta_by_hand():
    """age_offset and age_scale are parsed in one place (AgeScaling.from_meta, called by the checkpoint); a
    loaded checkpoint's readers ask it (Checkpoint.scaling, .age_range). Writing them (training's run_meta),
    listing them (meta's required keys, soup's keys every run must share) and the catalog's health check of a
    meta.json no model was loaded for are the only other places the names appear."""
    import ast


    allowed = {"agegender/models/model.py", "agegender/meta.py", "agegender/train/setup.py", "agegender/train/soup.py",
               "agegender/models/catalog.py", "agegender/metaschema.py"}
    found = []
    for folder in ("agegender", "dashboard", "benchmarks"):
        for p in sorted((ROOT / folder).rglob("*.py")):
            rel = p.relative_to(ROOT).as_posix()
            for node in ast.walk(ast.parse(p.read_text())):
                named = isinstance(node, ast.Constant) and node.value in ("age_offset", "age_scale")
                parsed = isinstance(node, ast.Attribute) and node.attr == "from_meta" and \
                    getattr(node.value, "id", "") == "AgeScaling"
                if (named and rel not in allowed) or (parsed and rel not in ("agegender/models/checkpoint.py",
                                                                             "agegender/models/model.py")):
                    found.append(f"{rel}:{node.lineno}")
    assert found == []
