"""Held-out faces whose look-alike (or the same picture) is in a checkpoint's training data: where the leakage
check's result is kept beside the checkpoint, how it is read, and the predictions without those faces.

``python -m agegender.leakage --checkpoint DIR`` writes DIR/leakage.json for the checkpoint's own val and test
faces; with ``--set NAME --checkpoint DIR --against UTKFACE`` it checks a registered set against the faces the
checkpoint trained on, kept where that set's results are (evaluation.sources.Source.leakage_path). The bias
page, the report (--exclude-look-alikes), the model card, the Checkpoints and Evaluation sets pages read them
here, so they agree on which faces leave. Torch-free: a contract, like predictions.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from .labels import image_key, printable

LEAKAGE = "leakage.json"
KINDS = ("duplicate", "look-alike")
MAX_BYTES = 64 * 2**20  # a leakage file lists at most every face once: far below this
ERR_UNREADABLE = ("{path} is not a leakage file agegender.leakage wrote ({detail}); write it again with "
                  "python -m agegender.leakage")
ERR_NONE = ("no leakage file for {what} at {path}: write it with python -m agegender.leakage --data DATA "
            "--checkpoint {checkpoint}")


class LeakageError(ValueError):
    """A leakage file that is missing or cannot be read; the message says what to run."""


def leakage_path(checkpoint: str | os.PathLike) -> Path:
    """Where the check of a checkpoint's own val and test faces is kept."""
    return Path(checkpoint) / LEAKAGE


def read_leakage(path: str | os.PathLike) -> dict:
    """The leakage file's content; LeakageError when it is not one."""
    path = Path(path)
    try:
        if not path.is_file() or path.stat().st_size > MAX_BYTES:
            raise ValueError("not a regular file of a leakage file's size")
        out = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(out, dict) or not isinstance(out.get("pairs"), list):
            raise ValueError("no list of pairs")
        if any(not isinstance(p, dict) or not isinstance(p.get("file"), str) or p.get("kind") not in KINDS
               for p in out["pairs"]):
            raise ValueError("a pair without a file or a known kind")
        if not isinstance(out.get("n"), int):
            raise ValueError("no count of faces checked")
    except (OSError, ValueError, RecursionError) as e:
        raise LeakageError(ERR_UNREADABLE.format(path=printable(str(path)), detail=e)) from e
    return out


def read_if_any(path: str | os.PathLike) -> dict | None:
    """The check at ``path`` when one was written, else None (a damaged one: LeakageError)."""
    return read_leakage(path) if Path(path).exists() else None


def flagged(leak: dict) -> dict[str, str]:
    """Image key -> kind (duplicate or look-alike) of every flagged face."""
    return {image_key(p["file"]): p["kind"] for p in leak["pairs"]}


def without(df: pd.DataFrame, leak: dict) -> pd.DataFrame:
    """The predictions without the flagged faces (matched by image key, so chips and their photos agree)."""
    keys = set(flagged(leak))
    return df[~df["file"].map(image_key).isin(keys)].reset_index(drop=True)


def without_text(n_before: int, n_after: int, leak: dict) -> str:
    """What leaving the flagged faces out did, in words."""
    kinds = pd.Series([p["kind"] for p in leak["pairs"]], dtype=object)
    return (f"without {n_before - n_after} of {n_before} faces whose look-alike or copy is in the training data "
            f"({int((kinds == 'duplicate').sum())} duplicates, {int((kinds == 'look-alike').sum())} look-alikes "
            f"flagged in the whole check, agegender.leakage)")


OVERLAP = ("{k:,} of the {n:,} faces of {name} checked have a look-alike among the faces {checkpoint} trained on "
           "({d:,} of them the same picture): its figures on them are optimistic. The Bias page can leave them out.")
NO_OVERLAP = "None of the {n:,} faces of {name} checked has a look-alike among the faces {checkpoint} trained on."
NOT_CHECKED = ("Not checked for faces {checkpoint} trained on: python -m agegender.leakage --set {name} "
               "--checkpoint {path} --against UTKFACE (the UTKFace folder it trained on)")


def overlap_text(leak: dict | None, name: str, checkpoint: str | os.PathLike) -> tuple[bool, str]:
    """(whether to warn, the sentence) for an evaluation set checked against a checkpoint's training faces."""
    ck = Path(checkpoint).name
    if leak is None:
        return False, NOT_CHECKED.format(checkpoint=ck, name=name, path=checkpoint)
    kinds = [p["kind"] for p in leak["pairs"]]
    if not kinds:
        return False, NO_OVERLAP.format(n=leak["n"], name=name, checkpoint=ck)
    return True, OVERLAP.format(k=len(kinds), n=leak["n"], name=name, checkpoint=ck, d=kinds.count("duplicate"))
