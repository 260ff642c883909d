"""Sources: what a page or a command reads a checkpoint's predictions from.

A source is one of the checkpoint's own held-out splits (predictions.OWN_SPLITS: predictions-val.csv and
predictions-test.csv in its folder, the faces being the UTKFace chips of the data it was trained on) or an
evaluation set registered by name (agegender.evaluation.results: the predictions in the results cache, the faces
the set's aligned crops, agegender.evaluation.evalset). Whatever differs between the two kinds is decided here,
in one place: the pages, the review and the cross-dataset view ask a Source and never branch on the kind.

Imports no torch: the set's aligned crops and the UTKFace listing are read inside the functions that read them.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .. import lookalikes
from ..meta import META, read_meta
from ..predictions import OWN_SPLITS, load_predictions, predictions_path
from .results import ERR_NOT_EVALUATED, EvalSet, ResultsError, get_set, list_sets, lookup, results_dir, set_folder

if TYPE_CHECKING:  # both read images (evalset imports torch); this module stays without it
    from PIL import Image

    from ..data.utkface import Scan
    from .evalset import Crops

OWN_LABEL = "UTKFace {split}"  # how an own split is named to a reader
REVIEW_FILE = "label-review-{name}.csv"
REVIEWS_FOLDER = "reviews"  # <results>/reviews/<checkpoint key>/label-review-<split>.csv
IN_CHECKPOINT_ENV = "AGEGENDER_REVIEW_IN_CHECKPOINT"  # 1: keep verdicts in the checkpoint folder (to ship them)
OWN_CLI = "--checkpoint {checkpoint} --split {split}"
SET_CLI = "--predictions PREDICTIONS.csv"  # the report reads a set's predictions from the file the reader saves


def names(keep: Callable[[EvalSet], bool] | None = None) -> list[str]:
    """What a predictions picker offers: a checkpoint's own val and test, then each registered set (those
    ``keep`` keeps, e.g. the ones a shared dashboard may read)."""
    return [*OWN_SPLITS, *(s.name for s in list_sets() if keep is None or keep(s))]


def label(name: str) -> str:
    """How a source is named to a reader: "UTKFace val", or the set's name."""
    return OWN_LABEL.format(split=name) if name in OWN_SPLITS else name


def data_fingerprint(name: str) -> str | None:
    """What a source's predictions depend on besides the checkpoint: a registered set's dataset fingerprint (the
    set read now: ResultsError for an unknown set, DatasetError for one that can no longer be read); None for an
    own split, whose files are the checkpoint's own."""
    return None if name in OWN_SPLITS else get_set(name).read().fingerprint


def checkpoint_key(checkpoint: str | os.PathLike) -> str:
    """A checkpoint folder's name and a digest of its absolute path: readable, and distinct for two folders of
    one name."""
    where = Path(checkpoint).expanduser().resolve()
    return f"{where.name}-{hashlib.sha256(str(where).encode()).hexdigest()[:12]}"


@dataclass(frozen=True)
class Source:
    """One checkpoint's predictions on one source (``name``: "val", "test" or a registered set's name)."""

    checkpoint: Path
    name: str
    tta: bool = True  # which of a set's cached results: with test-time augmentation or without

    @property
    def _own(self) -> bool:
        return self.name in OWN_SPLITS

    @property
    def label(self) -> str:
        return label(self.name)

    def predictions_path(self, fingerprint: str | None = None) -> Path | None:
        """Where the predictions table is: the checkpoint's own predictions-<split>.csv, else the results cache's
        file for the set as the dataset is now (``fingerprint``: data_fingerprint, when the caller has read it
        already); None when not evaluated yet. Raises CheckpointError for a folder that is no checkpoint,
        ResultsError for an unknown set, DatasetError for a set that can no longer be read."""
        if self._own:
            read_meta(self.checkpoint)  # a clear error for a folder that is no checkpoint
            p = predictions_path(self.checkpoint, self.name)
            return p if p.is_file() else None
        found = lookup(self.checkpoint, self.name, self.tta, fingerprint)
        return None if found is None else found.predictions

    def load(self) -> pd.DataFrame:
        """The predictions table. Not evaluated yet: for an own split the ValueError of
        predictions.load_predictions (it names the evaluate command), for a set ResultsError (ERR_NOT_EVALUATED:
        evaluate it on the Evaluation sets page)."""
        if self._own:
            return load_predictions(self.checkpoint, self.name)
        p = self.predictions_path()
        if p is None:
            raise ResultsError(ERR_NOT_EVALUATED.format(checkpoint=self.checkpoint.name, source=self.label))
        return load_predictions(path=p)

    def stamp_files(self) -> tuple[Path, ...]:
        """The files whose change means the predictions may have changed (a cache's key, with dashboard.caches'
        stamp): the checkpoint's meta.json, and its predictions file or the set's results folder (written to
        whenever a result is); the dataset under a set is checked by predictions_path, not by a stamp."""
        where = predictions_path(self.checkpoint, self.name) if self._own else set_folder(self.name)
        return self.checkpoint / META, where

    def review_path(self, in_checkpoint: bool | None = None) -> Path:
        """Where a reviewer's verdicts on this source's labels are kept (agegender.review.verdicts), beside the
        evaluation results (results_dir), never in the repository or the dataset:

        - an evaluation set: its results folder, one file for every checkpoint reviewed on it (a verdict is on
          the set's label, so a label judged once counts for each checkpoint);
        - an own split: a folder of this checkpoint folder's own (checkpoint_key), since the split is its own; in
          the checkpoint folder instead when asked (``in_checkpoint``, else $AGEGENDER_REVIEW_IN_CHECKPOINT=1), to
          ship the verdicts with it."""
        name = REVIEW_FILE.format(name=self.name)
        if not self._own:
            return set_folder(self.name) / name
        if in_checkpoint is None:
            in_checkpoint = os.environ.get(IN_CHECKPOINT_ENV, "").strip().lower() in ("1", "true", "yes")
        return self.checkpoint / name if in_checkpoint else \
            results_dir() / REVIEWS_FOLDER / checkpoint_key(self.checkpoint) / name

    def leakage_path(self) -> Path:
        """Where the look-alike check of this source against the checkpoint's training faces is kept
        (agegender.lookalikes): an own split, the checkpoint's leakage.json (val and test together, shipped with
        it); an evaluation set, its results folder, one file per checkpoint (the check depends on what that
        checkpoint trained on)."""
        if self._own:
            return lookalikes.leakage_path(self.checkpoint)
        return set_folder(self.name) / f"leakage-{checkpoint_key(self.checkpoint)}.json"

    def earlier_review_path(self) -> Path | None:
        """Where versions before review_path kept the verdicts (the checkpoint folder), None where they never did
        (an evaluation set)."""
        return self.checkpoint / REVIEW_FILE.format(name=self.name) if self._own else None

    def faces(self, data: Callable[[], str]) -> Faces:
        """Where the faces of the predictions are: an own split's are the UTKFace chips at ``data()`` (asked only
        here, so the UTKFace folder is looked for only where it is needed), a set's its aligned crops."""
        return Faces(data(), utkface=True) if self._own else Faces(self.name, utkface=False)

    def data_location(self, utkface: str | os.PathLike) -> tuple[str, str | None, str | None]:
        """(images, labels file, format) of the faces behind this source, as a command takes them: an own split's
        UTKFace chips at ``utkface`` (where the caller knows them to be), or a set's as it was registered."""
        if self._own:
            return str(utkface), None, None
        es = get_set(self.name)
        return es.path, es.labels, es.format

    def cli_args(self) -> str:
        """The arguments of python -m agegender.report that read the same predictions."""
        return OWN_CLI.format(checkpoint=self.checkpoint, split=self.name) if self._own else SET_CLI


def source(checkpoint: str | os.PathLike, name: str, tta: bool = True) -> Source:
    return Source(Path(checkpoint), name, tta)


def sources(checkpoint: str | os.PathLike, keep: Callable[[EvalSet], bool] | None = None) -> list[Source]:
    """The checkpoint's sources, as names() lists them."""
    return [source(checkpoint, n) for n in names(keep)]


@dataclass(frozen=True)
class Faces:
    """A source's faces and how their pixels are read: the chips of a UTKFace folder, .zip or .tar.gz (``where``,
    ``utkface``) or an evaluation set's aligned crops (``where``: the set's name). load() gives what the others
    read (the dataset's listing, or the crops at a size): callers cache it, keyed by stamp_files()."""

    where: str  # the UTKFace data path, or the set's name: what a message about a missing face names
    utkface: bool

    def stamp_files(self) -> tuple[Path, ...]:
        return (Path(self.where),) if self.utkface else (set_folder(self.where),)

    def load(self, size: int) -> Scan | Crops:
        """The UTKFace listing (DatasetError when it cannot be read), or the set's crops at ``size`` px from the
        crop cache its evaluation wrote (DatasetError or ResultsError when the set can no longer be read)."""
        if self.utkface:
            from ..data.utkface import scan

            return scan(self.where)
        from .evalset import dataset_crops

        return dataset_crops(get_set(self.where).read(), size)

    def chips(self, loaded: Scan | Crops, files: list[str]) -> dict[str, Image.Image]:
        """The faces of ``files`` as images, by file; unreadable ones, and a set's photos without a face found,
        left out."""
        return utkface_chips(loaded, files) if self.utkface else set_chips(loaded, files)

    def pixels(self, loaded: Scan | Crops, files: list[str], size: int) -> tuple[list[str], np.ndarray]:
        """(the files read, their faces at ``size`` px), as agegender.review.audit.audit_faces reads faces."""
        if self.utkface:
            from ..data.utkface import load_images

            wanted = set(files)
            images = load_images(loaded, [s for s in loaded.samples if s.member in wanted], size, progress=False)
            return [s.member for s in images.samples], images.pixels
        return set_faces(loaded, files)


def utkface_chips(scan: Scan, members: list[str]) -> dict[str, Image.Image]:
    """The listed chips of a UTKFace scan, by member path; missing or unreadable ones are left out."""
    from PIL import Image

    from ..data.utkface import iter_bytes

    wanted = {s.member: s for s in scan.samples}
    out = {}
    for s, raw in iter_bytes(scan, [wanted[m] for m in members if m in wanted]):
        if raw is None:
            continue
        try:
            with Image.open(io.BytesIO(raw)) as im:
                out[s.member] = im.convert("RGB")
        except OSError:
            continue
    return out


def set_chips(crops: Crops, files: list[str]) -> dict[str, Image.Image]:
    """The aligned faces of an evaluation set's photos (its cached crops), by file; files without a face found
    are left out, as are files the crops do not hold."""
    from PIL import Image

    index = {f: i for i, f in enumerate(crops.files)}
    return {f: Image.fromarray(crops.pixels[index[f]]) for f in files if f in index and crops.found[index[f]]}


def set_faces(crops: Crops, files: list[str]) -> tuple[list[str], np.ndarray]:
    """The found faces of ``files`` among an evaluation set's cached crops, in the order asked: (the files found,
    their pixels)."""
    index = {f: i for i, f in enumerate(crops.files)}
    kept = [f for f in files if f in index and crops.found[index[f]]]
    return kept, crops.pixels[[index[f] for f in kept]]
