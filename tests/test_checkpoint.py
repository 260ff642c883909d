import json
import shutil

import pytest
import torch
from safetensors.torch import save_file

from agegender.checkpoint import (
    ERR_ARCH,
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
from agegender.model import ARCHS, create_model


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
    expect(ckpt, ERR_ARCH.format(path=ckpt, META=META, arch="resnet9000", known=", ".join(ARCHS)))


def test_weights_of_another_architecture(ckpt):
    save_file({k: v.contiguous() for k, v in create_model("resnet34").state_dict().items()}, str(ckpt / WEIGHTS))
    set_meta(ckpt, weights_sha256=sha256_file(ckpt / WEIGHTS))
    with pytest.raises(CheckpointError, match=r"the weights in .* do not fit resnet18: unexpected trunk.layer1.2"):
        load_checkpoint(ckpt)


def test_a_fresh_session_starts_on_the_baseline_not_the_mitigated_checkpoint(tmp_path):
    from agegender.catalog import default_pick

    for name, meta in (("a-balanced", {"balance": {"method": "loss"}}), ("b-plain", {}), ("c-broken", None)):
        (tmp_path / name).mkdir()
        (tmp_path / name / META).write_text("{not json" if meta is None else json.dumps(meta))
    paths = list_checkpoints(tmp_path)
    assert [p.name for p in default_pick(paths)] == ["b-plain"]
    assert [p.name for p in default_pick(paths[:1])] == ["a-balanced"]  # no baseline: the first
    assert default_pick([]) == []
