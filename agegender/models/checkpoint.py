"""Checkpoint folders: save, load and validate. Nothing here unpickles anything."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ..meta import (  # noqa: F401 - re-exported: the torch-free part of a checkpoint lives there
    ERR_BAD_META,
    ERR_NO_FOLDER,
    ERR_NO_META,
    FORMAT,
    META,
    REQUIRED_META,
    WEIGHTS,
    Calibration,
    CheckpointError,
    IntervalError,
    atomic_write,
    calibration_of,
    sha256_file,
    write_meta,
)
from ..meta import read_meta as read_meta_json
from .catalog import list_checkpoints  # noqa: F401 - re-exported
from .model import ARCHS, AgeGenderNet, AgeScaling, create_model
from .preprocess import Preprocess

# Error messages are constants so tests can assert them word for word (the meta.json ones are in meta).
ERR_NO_WEIGHTS = "{path}/{WEIGHTS} is missing; restore the folder or retrain"
ERR_NOT_SAFETENSORS = (
    "{path}/{WEIGHTS} is not a safetensors file (a pickle, or a damaged file); "
    "checkpoints are never unpickled: re-save the weights with safetensors"
)
ERR_CHECKSUM = (
    "{path}/{WEIGHTS} does not match the checksum in {META}: "
    "the weights were changed or truncated after training"
)
ERR_SHAPES = "the weights in {path} do not fit {arch}: {detail}"
ERR_NOT_FINITE = ("{path}/{WEIGHTS} holds NaN or infinite values in {n} tensors ({names}): every prediction would be "
                  "NaN; restore the folder or retrain")
# ERR_BAD_META's detail for a meta put together in code (training's); a meta.json read is checked field by field
BAD_SCALING = "age_offset and age_scale must be numbers, and age_range two"


@dataclass
class Checkpoint:
    """A model with its meta.json, and the contract meta.json states, parsed once when the checkpoint is made
    (loaded, or put together by training): the preprocessing, the age head's scaling and age range, and the
    age interval's calibration. Nothing else reads those keys of ``meta``.

    A calibration record that cannot be used (edited, or made for other weights) does not stop the load: the
    model still predicts ages. Its IntervalError is kept and raised, word for word, wherever an interval is
    asked for (``calibration``), as before the record was parsed at load."""

    path: Path
    model: AgeGenderNet
    meta: dict
    scaling: AgeScaling | None = None  # None: parsed from meta (load_checkpoint passes the one it built the model with)
    preprocess: Preprocess = field(init=False)
    _calibration: Calibration | None = field(init=False, repr=False)
    _calibration_error: str | None = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.preprocess = Preprocess.from_dict(self.meta["preprocess"])
        if self.scaling is None:
            self.scaling = parse_scaling(self.meta, self.path)
        try:
            self._calibration, self._calibration_error = calibration_of(self.meta, self.path), None
        except IntervalError as e:
            self._calibration, self._calibration_error = None, str(e)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def age_range(self) -> tuple[float, float]:
        """The youngest and oldest age the checkpoint predicts (agegender.models.model.age_range)."""
        return self.scaling.limits

    @property
    def calibration(self) -> Calibration | None:
        """The age interval's calibration, None when it has none; IntervalError for a record that cannot be used."""
        if self._calibration_error is not None:
            raise IntervalError(self._calibration_error)
        return self._calibration


def parse_scaling(meta: dict, path: Path) -> AgeScaling:
    """meta.json's age scaling and range; CheckpointError (ERR_BAD_META) where they are not numbers."""
    try:
        return AgeScaling.from_meta(meta)
    except (TypeError, ValueError) as e:
        raise CheckpointError(ERR_BAD_META.format(path=path, META=META, detail=BAD_SCALING)) from e


def save_weights(model: torch.nn.Module, path: Path, dtype: torch.dtype = torch.float16) -> str:
    """Write the weights atomically (fp16 by default, enough to ship); returns their sha256."""
    tensors = {k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype).contiguous()
               for k, v in model.state_dict().items()}
    with atomic_write(path) as tmp:
        save_file(tensors, str(tmp))
        digest = sha256_file(tmp)
    return digest


def read_meta(path: str | os.PathLike) -> dict:
    """meta.read_meta (meta.json read within bounds and checked whole against agegender.metaschema) with the
    architecture checked against the registry, in the same one message as any other field that is wrong."""
    return read_meta_json(path, ARCHS)


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> Checkpoint:
    """The one loader: validates meta (agegender.metaschema), the weights' shapes from their header before a byte of
    them is read or hashed (a header may claim gigabytes), their checksum, and that they are finite; returns an
    eval-mode fp32 model."""
    path = Path(path)
    meta = read_meta(path)
    weights = path / WEIGHTS
    if not weights.is_file():
        raise CheckpointError(ERR_NO_WEIGHTS.format(path=path, WEIGHTS=WEIGHTS))
    shapes = _read(path, weights, _header_shapes)
    scaling = parse_scaling(meta, path)
    model = create_model(meta["arch"], dropout=float(meta.get("dropout", 0.0)), age_bins=int(meta.get("age_bins", 0)),
                         age_offset=scaling.offset, age_scale=scaling.scale)
    expected = model.state_dict()
    problems = [f"missing {k}" for k in expected if k not in shapes]
    problems += [f"unexpected {k}" for k in shapes if k not in expected]
    problems += [f"{k} is {shapes[k]}, expected {tuple(v.shape)}"
                 for k, v in expected.items() if k in shapes and shapes[k] != tuple(v.shape)]
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise CheckpointError(
            ERR_SHAPES.format(path=path, arch=meta["arch"], detail="; ".join(problems[:3]) + more)
        )
    if sha256_file(weights) != meta["weights_sha256"]:  # hashed once the header says the file is this model's size
        raise CheckpointError(ERR_CHECKSUM.format(path=path, WEIGHTS=WEIGHTS, META=META))
    tensors = _read(path, weights, lambda f: load_file(str(f)))
    broken = [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if broken:
        raise CheckpointError(ERR_NOT_FINITE.format(path=path, WEIGHTS=WEIGHTS, n=len(broken),
                                                    names=", ".join(broken[:3]) + (", ..." if len(broken) > 3 else "")))
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in tensors.items()})
    model.to(device).eval()
    return Checkpoint(path, model, meta, scaling)


def _header_shapes(weights: Path) -> dict[str, tuple[int, ...]]:
    """Each tensor's shape as the safetensors header states it; no tensor is read."""
    with safe_open(str(weights), framework="pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}


def _read(path: Path, weights: Path, read):
    """``read(weights)``, a file that is no safetensors file (a pickle, a damaged file) refused as such."""
    try:
        return read(weights)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(ERR_NOT_SAFETENSORS.format(path=path, WEIGHTS=WEIGHTS)) from e
