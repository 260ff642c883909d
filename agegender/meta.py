"""A checkpoint's meta.json and its file names, and the one way files are written here (atomically).
Imports no torch: the catalog, the dashboard shell and the model card read checkpoints through it
before, or without, loading a model."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from . import __version__

FORMAT = "agegender-checkpoint/1"
META = "meta.json"  # the file that makes a folder a checkpoint
WEIGHTS = "model.safetensors"
REQUIRED_META = ("format", "arch", "preprocess", "age_offset", "age_scale", "labels", "weights_sha256")

# Error messages are constants so tests can assert them word for word.
ERR_NO_FOLDER = "checkpoint folder {path} does not exist"
ERR_NO_META = "{path} is not a checkpoint folder: {META} is missing"
ERR_BAD_META = "{path}/{META} is corrupt ({detail}); restore the folder or retrain"


class CheckpointError(Exception):
    """A checkpoint folder that cannot be used; the message says which file and why."""


@contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary path beside ``path`` to write to; it replaces ``path`` only when the block
    ends without an error, so a reader (or a run killed mid-write) never sees half a file. The
    temporary name, ``.NAME.tmpXXXXXXXX``, is unique per writer, and training's resume clears any
    a kill left behind."""
    path = Path(path)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the files we write are meant to be read
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_write(path) as tmp:
        tmp.write_text(text)


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def soup_runs(meta: dict) -> list[dict]:
    """The records of the runs a soup averages (agegender.soup writes them); [] for a checkpoint trained as one run."""
    return list((meta.get("soup") or {}).get("runs") or [])


def write_meta(folder: str | os.PathLike, meta: dict) -> None:
    meta = {"format": FORMAT, "code_version": __version__, **meta}
    atomic_write_text(Path(folder) / META, json.dumps(meta, indent=2, sort_keys=False) + "\n")


def read_meta(path: str | os.PathLike) -> dict:
    """A checkpoint's meta.json with its required keys checked. The architecture is checked by
    agegender.checkpoint.read_meta, which knows the model registry (and so imports torch)."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(ERR_NO_FOLDER.format(path=path))
    if not (path / META).is_file():
        raise CheckpointError(ERR_NO_META.format(path=path, META=META))
    try:
        meta = json.loads((path / META).read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(ERR_BAD_META.format(path=path, META=META, detail=f"not JSON: {e}")) from e
    if not isinstance(meta, dict):
        raise CheckpointError(ERR_BAD_META.format(path=path, META=META, detail="not a JSON object"))
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise CheckpointError(ERR_BAD_META.format(path=path, META=META, detail=f"missing {', '.join(missing)}"))
    return meta
