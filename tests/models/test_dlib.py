"""dlib's face-recognition ResNet: the converter (models.dlib_convert), the torch module (agegender.models.dlibnet)
and model.load_trunk.

No dlib and no download: ``dlib_bytes`` below writes dlib's serialisation (dlib/serialize.h, float_details.h,
dnn/core.h, layers.h) of any DlibResNet state dict, so a randomly initialised network goes through the reader
and must come back tensor for tensor. The writer is held to dlib's own output by the one test that needs the
real file (AGEGENDER_DLIB_DAT): it must rewrite that file byte for byte, and the converted network must give
the descriptor dlib itself computed for a fixed image.
"""

from __future__ import annotations

import bz2
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from agegender.models import dlib_convert as dc
from agegender.models import dlibnet
from agegender.models.dlibnet import DLIB_MEAN, DlibInput, DlibResNet, Residual, add_prev
from agegender.models.model import (
    ARCHS,
    ERR_NO_DOWNLOAD,
    ERR_TRUNK_ARCH,
    ERR_TRUNK_MISSING,
    ERR_TRUNK_NO_ARCH,
    ERR_TRUNK_NOT_SAFETENSORS,
    ERR_TRUNK_SHAPES,
    ERR_TRUNK_UNNAMED,
    AgeGenderNet,
    PretrainedUnavailable,
    TrunkFileError,
    create_model,
    load_trunk,
)
from agegender.models.preprocess import IMAGENET_MEAN, IMAGENET_STD

# ---- a writer of dlib's format -------------------------------------------------------------------------------


def _int(v: int) -> bytes:
    """serialize.h pack_int: a control byte (0x80 if negative | byte count, at least 1), magnitude little-endian."""
    mag = abs(v).to_bytes(max(1, (abs(v).bit_length() + 7) // 8), "little")
    return bytes([len(mag) | (0x80 if v < 0 else 0)]) + mag


def _float(v: float, digits: int = 53) -> bytes:
    """float_details: mantissa * 2**exponent with ``digits`` mantissa bits (24: a float, 53: a double), zero low
    bytes shifted off (at most 8 times, so 0.0 is 0 * 2**(64 - digits))."""
    m, e = math.frexp(float(np.float32(v)) if digits == 24 else v)  # a float is rounded to float32 first
    mantissa, exponent = int(m * (1 << digits)), e - digits
    for _ in range(8):
        if mantissa & 0xFF:
            break
        mantissa, exponent = mantissa >> 8, exponent + 8
    return _int(mantissa) + _int(exponent)


def _str(s: str) -> bytes:
    return _int(len(s)) + s.encode()


def _sizes(dims) -> bytes:
    return b"".join(_int(d) for d in dims)


def _tensor(a: np.ndarray, dims) -> bytes:  # version 2: raw little-endian float32
    return _int(2) + _sizes(dims) + np.ascontiguousarray(a, dtype="<f4").tobytes()


def _alias(dims) -> bytes:
    return _int(1) + _sizes(dims)


EMPTY = _tensor(np.zeros(0), (0, 0, 0, 0))  # a cached tensor dlib's clean() left empty


def _details(layer: dc.Layer, sd: dict[str, np.ndarray], variant: str) -> bytes:
    if layer.kind == "con":
        nf, cin, k, stride, pad = layer.shape
        w, b = sd[f"{layer.name}.weight"], sd[f"{layer.name}.bias"]
        params = np.concatenate([w.reshape(-1), b])
        out = (_str("con_5" if variant == "new" else "con_4") + _tensor(params, (params.size, 1, 1, 1)) + _int(nf)
               + _sizes((k, k, stride, stride, pad, pad)) + _alias((nf, cin, k, k)) + _alias((1, nf, 1, 1))
               + b"".join(_float(x) for x in (1, 1, 1, 0)))
        return out + (b"1" if variant == "new" else b"")
    if layer.kind == "affine":
        (c,) = layer.shape
        params = np.concatenate([sd[f"{layer.name}.weight"], sd[f"{layer.name}.bias"]])
        out = (_str("affine_2" if variant == "new" else "affine_") + _tensor(params, (2 * c, 1, 1, 1))
               + _alias((1, c, 1, 1)) + _alias((1, c, 1, 1)) + _int(0))
        return out + (b"0" if variant == "new" else b"")
    if layer.kind == "fc":
        outputs, inputs = layer.shape
        return (_str("fc_2") + _int(outputs) + _int(inputs)
                + _tensor(sd[f"{layer.name}.weight"].T, (inputs, outputs, 1, 1)) + _alias((inputs, outputs, 1, 1))
                + _alias((0, 0, 0, 0)) + _int(1) + b"".join(_float(x) for x in (1, 1, 1, 0)))
    if layer.kind in ("max_pool", "avg_pool"):
        window, stride, pad = layer.shape
        return _str(f"{layer.kind}_2") + _sizes((window, window, stride, stride, pad, pad))
    return _str(f"{layer.kind}_")  # relu_, add_prev_


def dlib_bytes(sd: dict[str, np.ndarray], layers: list[dc.Layer] | None = None, loss: str = "loss_metric_2",
               size: int = 150, variant: str = "old") -> bytes:
    """dlib's serialisation of anet_type (or of ``layers``) holding the DlibResNet state dict ``sd``.
    ``variant`` "old" writes the layer versions of the published file (con_4, affine_), "new" the later con_5 and
    affine_2 (which dlib writes now and the reader accepts too)."""
    layers = dc.anet_layers() if layers is None else layers
    out = [_int(1), _str(loss), _float(0.04, 24), _float(0.6, 24)]  # add_loss_layer: version, loss_metric_
    # every add_layer / tag / skip writes its version before its subnetwork: all versions, outermost first
    out += [_int(1 if layer.kind in ("tag", "skip") else 2) for layer in layers[:-1]] + [_int(3)]
    out += [_str("input_rgb_image_sized"), *(_float(m, 24) for m in DLIB_MEAN), _int(size), _int(size)]
    for i in reversed(range(len(layers))):  # then each layer's details and state, innermost first
        layer = layers[i]
        if layer.kind in ("tag", "skip"):
            continue
        out.append(_details(layer, sd, variant))
        # flags: setup called, gradient stale, output disabled (the relu_ above works in place on it); then
        # x_grad, cached output, params_grad (innermost: grad_final and the sample expansion factor)
        in_place_above = i > 0 and layers[i - 1].kind == "relu"
        out.append(b"11" + (b"1" if in_place_above else b"0") + EMPTY * 3)
        if i == len(layers) - 1:
            out.append(_int(1))
    return b"".join(out)


# ---- fixtures ----------------------------------------------------------------------------------------------------


def random_net(seed: int = 0) -> DlibResNet:
    """A DlibResNet with every parameter random (no zero or one affine that would hide a mix-up)."""
    torch.manual_seed(seed)
    net = DlibResNet()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, 0.05)
    return net


def numpy_state(net: DlibResNet) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in net.state_dict().items()}


@pytest.fixture(scope="module")
def net() -> DlibResNet:
    return random_net()


@pytest.fixture(scope="module")
def dat(net, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("dlib") / dc.SOURCE
    path.write_bytes(dlib_bytes(numpy_state(net)))
    return path


@pytest.fixture(scope="module")
def trunk(dat, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("trunk") / "trunk.safetensors"
    dc.convert(dat, out)
    return out


# ---- the reader: round trip ------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["old", "new"])
def test_a_written_network_reads_back_tensor_for_tensor(net, variant):
    arrays, info = dc.parse(dlib_bytes(numpy_state(net), variant=variant))
    expected = numpy_state(net)
    assert set(arrays) == set(expected)
    for k, v in expected.items():
        np.testing.assert_array_equal(arrays[k], v, err_msg=k)
    assert info["margin"] == pytest.approx(0.04) and info["distance_threshold"] == pytest.approx(0.6)
    assert info["input_mean"] == pytest.approx(DLIB_MEAN, abs=1e-4)


def test_convert_writes_the_trunk_with_its_provenance(net, dat, trunk, capsys):
    loaded = load_file(str(trunk))
    for k, v in net.state_dict().items():
        assert torch.equal(loaded[k], v), k
    with safe_open(str(trunk), framework="pt") as f:
        meta = f.metadata()
    assert meta["arch"] == dc.ARCH == "dlib-resnet29" and meta["format"] == dc.FORMAT
    assert meta["source"] == dc.SOURCE and len(meta["source_sha256"]) == 64
    # the command line: same file, and a one-line error with exit status 2 for a bad one
    again = trunk.with_name("again.safetensors")
    assert dc.main(["--dat", str(dat), "--out", str(again)]) == 0
    assert again.read_bytes() == trunk.read_bytes()  # reproducible to the byte (a sorted header)
    assert dc.main(["--dat", str(dat.with_name("nope.dat")), "--out", str(again)]) == 2
    assert capsys.readouterr().err.strip() == "error: " + dc.ERR_NO_FILE.format(path=dat.with_name("nope.dat"),
                                                                                 SOURCE=dc.SOURCE)


def test_the_bzip2_file_from_dlib_net_is_read_too(dat, tmp_path):
    """dlib.net ships the .dat bzip2-compressed. (The first 2000 bytes only: compressing 22 MB takes seconds; the
    truncation message shows that the decompressed bytes were parsed.)"""
    packed = tmp_path / "model.dat.bz2"
    packed.write_bytes(bz2.compress(dat.read_bytes()[:2000]))
    with pytest.raises(dc.DlibFormatError) as e:
        dc.read_dat(packed)
    assert str(e.value) == dc.ERR_TRUNCATED.format(path=packed, size=2000, what="conv1's parameters")
    packed.write_bytes(b"BZh9" + bytes(100))
    with pytest.raises(dc.DlibFormatError) as e:
        dc.read_dat(packed)
    assert str(e.value).startswith(f"{packed} is not a dlib network file (bad bzip2 data: ")


def test_a_folded_affine_is_the_identity(net):
    """dlib's fuse_layers folds an affine into the convolution below it and disables it (affine_2's last flag)."""
    sd = numpy_state(net)
    layer = dc.Layer("affine", "affine1", (32,))
    enabled = _details(layer, sd, "new")
    data = dlib_bytes(sd, variant="new")
    assert data.count(enabled) == 1 and enabled.endswith(b"0")
    arrays, _ = dc.parse(data.replace(enabled, enabled[:-1] + b"1"))
    assert np.array_equal(arrays["affine1.weight"], np.ones(32))
    assert np.array_equal(arrays["affine1.bias"], np.zeros(32))


# ---- the reader: files it refuses, word for word ---------------------------------------------------------------


def _error(data: bytes, path: str = "x.dat") -> str:
    with pytest.raises(dc.DlibFormatError) as e:
        dc.parse(data, path)
    return str(e.value)


def test_a_missing_file(tmp_path):
    with pytest.raises(dc.DlibFormatError) as e:
        dc.read_dat(tmp_path / "none.dat")
    assert str(e.value) == dc.ERR_NO_FILE.format(path=tmp_path / "none.dat", SOURCE=dc.SOURCE)


@pytest.mark.parametrize("data, detail", [
    (b"", "only 0 bytes"),
    (b"\x89PNG\r\n\x1a\n" + bytes(64), "0x89 is not an integer's control byte, reading the loss layer's version"),
    (b"\x01\x02\x0dloss_metric_2", "the first number is not 1, dlib's loss layer version"),
    (_int(1) + _str("con_5"), "it starts with 'con_5', not a dlib loss layer"),
])
def test_a_file_that_is_not_dlibs(data, detail):
    assert _error(data) == dc.ERR_NOT_DLIB.format(path="x.dat", detail=detail, SOURCE=dc.SOURCE)


def test_a_truncated_file(net):
    data = dlib_bytes(numpy_state(net))
    # the last bytes are the outermost layer's (the fc's) cached tensors
    assert _error(data[:-1]) == dc.ERR_TRUNCATED.format(path="x.dat", size=len(data) - 1,
                                                        what="a layer's cached tensors")
    cut = data.index(_str("con_4")) + 100  # the innermost layer's details come first: conv1's filters
    assert _error(data[:cut]) == dc.ERR_TRUNCATED.format(path="x.dat", size=cut, what="conv1's parameters")


def test_a_damaged_file(net):
    data = bytearray(dlib_bytes(numpy_state(net)))
    at = len(_int(1) + _str("loss_metric_2") + _float(0.04, 24) + _float(0.6, 24))  # the first layer version
    data[at] = 0x71
    assert _error(bytes(data)) == dc.ERR_DAMAGED.format(
        path="x.dat", offset=at + 1, detail="0x71 is not an integer's control byte, reading the layer versions")


def test_trailing_bytes(net):
    assert _error(dlib_bytes(numpy_state(net)) + bytes(5)) == dc.ERR_TRAILING.format(path="x.dat", extra=5,
                                                                                      SOURCE=dc.SOURCE)


def test_another_network_is_named_as_such(net):
    sd = numpy_state(net)
    layers = dc.anet_layers()

    def network_error(data: bytes, detail: str) -> None:
        assert _error(data) == dc.ERR_NETWORK.format(path="x.dat", detail=detail)

    network_error(dlib_bytes(sd, loss="loss_multiclass_log_"),
                  "its loss layer is 'loss_multiclass_log_', expected 'loss_metric_2'")
    network_error(dlib_bytes(sd, size=200), "input has size (200, 200), expected (150, 150)")
    strided = [dc.Layer("con", "conv1", (32, 3, 7, 1, 3)) if x.name == "conv1" else x for x in layers]
    network_error(dlib_bytes(sd, strided), "conv1 has stride (1, 1), expected (2, 2)")
    # one residual block fewer (alevel4's last, 8 layers from its relu): the file's innermost layer, version 3,
    # comes where this topology still has a block's conv2
    at = next(i for i, x in enumerate(layers) if x.name == "alevel4.2.affine2") - 2
    fewer = layers[:at] + layers[at + 8:]
    i = len(fewer) - 1
    network_error(dlib_bytes(sd, fewer), f"layer {i + 1} below the loss ({layers[i].name}) has version 3, "
                                         "expected 1 or 2: the layers are nested differently")


# ---- the torch module ---------------------------------------------------------------------------------------


def test_add_prev_zero_extends_channels_then_bottom_and_right():
    a = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2)
    b = torch.full((1, 2, 3, 3), 10.0)
    expected = torch.tensor([[[11.0, 12.0, 10.0], [13.0, 14.0, 10.0], [10.0, 10.0, 10.0]],
                             [[10.0] * 3] * 3]).view(1, 2, 3, 3)
    assert torch.equal(add_prev(a, b), expected) and torch.equal(add_prev(b, a), expected)
    assert torch.equal(add_prev(a, a), 2 * a)


def test_the_150px_geometry_meets_add_prev_where_dlib_does():
    """alevel1's strided conv gives 3x3 against a 4x4 pooled skip; alevel0 1x1 against 2x2."""
    block = Residual(128, 256, down=True)
    x = torch.randn(1, 128, 8, 8)
    assert block.conv1(x).shape[-2:] == (3, 3) and block.skip(x).shape[-2:] == (4, 4)
    assert block(x).shape == (1, 256, 4, 4)
    assert DlibResNet().feature_map(torch.randn(1, 3, 150, 150)).shape == (1, 256, 2, 2)


def test_dlib_input_maps_imagenet_normalised_pixels_to_dlibs_scaling():
    p = torch.randint(0, 256, (2, 3, 150, 150)).float()
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (IMAGENET_MEAN, IMAGENET_STD))
    out = DlibInput()((p / 255 - mean) / std)
    torch.testing.assert_close(out, (p - torch.tensor(DLIB_MEAN).view(1, 3, 1, 1)) / 256, atol=1e-5, rtol=0)
    assert DlibInput()(torch.zeros(1, 3, 128, 128)).shape == (1, 3, 150, 150)  # brought to the trained size


# ---- load_trunk and the model ------------------------------------------------------------------------------------


@pytest.mark.parametrize("age_bins", [0, 117])
def test_load_trunk_gives_the_converted_network(net, trunk, age_bins):
    model = create_model("dlib-resnet29", age_bins=age_bins, age_offset=33.0, age_scale=20.0).eval()
    meta = load_trunk(model, trunk)
    assert meta["arch"] == "dlib-resnet29"
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        torch.testing.assert_close(model.trunk(x), net.eval()(x))


def test_the_dlib_model_trains_a_step_on_cpu(trunk):
    torch.manual_seed(0)
    model = create_model("dlib-resnet29", age_bins=117, age_offset=33.0, age_scale=20.0)
    load_trunk(model, trunk)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    age, logit, bins = model(torch.randn(2, 3, 128, 128), with_age_logits=True)
    loss = torch.nn.functional.cross_entropy(bins, torch.tensor([20, 50])) + \
        torch.nn.functional.binary_cross_entropy_with_logits(logit, torch.tensor([0.0, 1.0]))
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    opt.step()
    after = model.state_dict()
    for k in ("trunk.conv1.weight", "trunk.affine1.weight", "trunk.alevel0.0.affine2.bias", "gender_head.weight"):
        assert not torch.equal(before[k], after[k]), f"{k} did not train"


def test_the_registrys_gradcam_layers_exist_with_spatial_maps():
    model = create_model("dlib-resnet29").eval()
    sizes = {}
    hooks = [m.register_forward_hook(lambda _m, _i, out, name=name: sizes.__setitem__(name, out.shape[-2:]))
             for name, m in model.cam_layers.items()]
    with torch.no_grad():
        model(torch.randn(1, 3, 128, 128))
    for h in hooks:
        h.remove()
    assert sizes == {"alevel1": (4, 4), "alevel0": (2, 2), "alevel2": (8, 8)}
    assert list(model.cam_layers) == list(dlibnet.CAM_LAYERS)


def _trunk_error(model, path) -> str:
    with pytest.raises(TrunkFileError) as e:
        load_trunk(model, path)
    return str(e.value)


def test_load_trunk_refuses_what_is_not_a_trunk_for_this_model(trunk, tmp_path):
    model = create_model("dlib-resnet29")
    assert _trunk_error(model, tmp_path / "none.safetensors") == ERR_TRUNK_MISSING.format(
        path=tmp_path / "none.safetensors")
    pickle = tmp_path / "trunk.pt"
    torch.save({"w": torch.zeros(2)}, pickle)
    assert _trunk_error(model, pickle) == ERR_TRUNK_NOT_SAFETENSORS.format(path=pickle)
    unnamed = tmp_path / "model.safetensors"  # e.g. a checkpoint's weights
    save_file({"w": torch.zeros(2)}, str(unnamed))
    assert _trunk_error(model, unnamed) == ERR_TRUNK_UNNAMED.format(path=unnamed)
    assert _trunk_error(create_model("resnet18"), trunk) == ERR_TRUNK_ARCH.format(
        path=trunk, found="dlib-resnet29", arch="resnet18")
    hand_built = AgeGenderNet(DlibResNet(), dlibnet.FEATURES)
    assert _trunk_error(hand_built, trunk) == ERR_TRUNK_NO_ARCH


def test_load_trunk_names_the_tensors_that_do_not_fit(trunk, tmp_path):
    tensors = load_file(str(trunk))
    tensors["conv1.weight"] = tensors["conv1.weight"][:16]
    del tensors["affine1.bias"]
    tensors["extra.weight"] = torch.zeros(1)
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), {"arch": "dlib-resnet29"})
    assert _trunk_error(create_model("dlib-resnet29"), bad) == ERR_TRUNK_SHAPES.format(
        path=bad, arch="dlib-resnet29",
        detail="missing affine1.bias; unexpected extra.weight; conv1.weight is (16, 3, 7, 7), expected (32, 3, 7, 7)")


# ---- the real file -----------------------------------------------------------------------------------------------

# dlib 20.0's face_recognition_model_v1(...).compute_face_descriptor(PATTERN, 0): its first 8 values and its norm
DLIB_DESCRIPTOR_HEAD = [-0.107136, 0.107973, 0.102656, -0.02156, -0.096325, -0.050917, -0.073899, 0.03651]
DLIB_DESCRIPTOR_NORM = 1.307631


def pattern() -> np.ndarray:
    """A fixed 150 x 150 RGB image, computed (no JPEG decoder or resampler between us and dlib)."""
    yy, xx = np.mgrid[:150, :150]
    return ((xx[..., None] * np.array([3, 5, 7]) + yy[..., None] * np.array([11, 2, 5]) + (xx * yy)[..., None] // 7)
            % 256).astype(np.uint8)


def test_the_real_file_converts_to_dlibs_network(tmp_path):
    dat = os.environ.get("AGEGENDER_DLIB_DAT")
    if not dat or not Path(dat).is_file():
        pytest.skip("set AGEGENDER_DLIB_DAT to dlib_face_recognition_resnet_model_v1.dat (PyPI sdist of "
                    "face_recognition_models) to check the converter against dlib's own file")
    data = Path(dat).read_bytes()
    arrays, _ = dc.parse(data, dat)
    assert dlib_bytes(arrays) == data  # the test's writer is dlib's format, byte for byte
    dc.convert(dat, tmp_path / "trunk.safetensors")
    net = DlibResNet().eval()
    net.load_state_dict(load_file(str(tmp_path / "trunk.safetensors")))
    x = torch.from_numpy(pattern()).permute(2, 0, 1)[None].float() / 255
    x = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        d = net.embedding(x)[0]
    np.testing.assert_allclose(d[:8].numpy(), DLIB_DESCRIPTOR_HEAD, atol=1e-4)
    assert d.norm().item() == pytest.approx(DLIB_DESCRIPTOR_NORM, abs=1e-4)


def test_pretrained_points_to_the_converter():
    """No torchvision download exists for dlib's network: --pretrained says what to do instead."""
    with pytest.raises(PretrainedUnavailable) as e:
        create_model("dlib-resnet29", pretrained=True)
    instead = ARCHS["dlib-resnet29"].pretrained_instead
    assert str(e.value) == ERR_NO_DOWNLOAD.format(arch="dlib-resnet29", instead=instead)
    assert "python -m agegender.dlib_convert --dat FILE --out TRUNK.safetensors" in str(e.value)
