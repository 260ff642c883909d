"""The split by person (train.py --split identity): no look-alike pair or duplicate straddles train/val/test.

UTKFace's default split hashes each file's name, so photos of one person (and re-uploads of one photo) fall on
both sides of it and the held-out figures are optimistic (docs/leakage.md measures by how much). Here images
are joined when their dlib descriptors are a look-alike or a duplicate by evaluation.leakage's rule (the
younger face of a pair sets the limit; under 10 only the same picture joins), the joined images chain into
groups (connected components), and each group goes whole to one split by the file rule applied to its first
image key. So an image that joins nothing keeps exactly its file-hash split, and a group kept whole in a
subset of the data keeps its split.

A chain of look-alikes can run through many people: on UTKFace three components hold 230, 335 and 1,250
chips, no one person's photos. Sent by hash, the largest alone would make half of the test split, so a group
over MAX_GROUP images goes to train, which holds 80% anyway: no test face has a look-alike in train either way.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from ..data.utkface import Images, Scan
from ..evaluation.descriptors import utkface_descriptors
from ..evaluation.leakage import DEFAULT, Thresholds, classify, correlation, look_alike_limits, pairs_within
from ..labels import image_key

log = logging.getLogger(__name__)

MAX_GROUP = 100  # images; a larger group is a chain through many people (see above) and goes to train
IDENTITY_RULE = ("identity: images whose dlib descriptors are a look-alike or a duplicate (evaluation.leakage's "
                 "thresholds) chain into groups; a group goes whole to the split that sha1 of its first image_key "
                 "gives by the file rule (< 0.8 train, < 0.9 val, else test), a group of more than "
                 f"{MAX_GROUP} images to train")
ERR_NO_DESCRIPTOR = ("--split identity needs a descriptor for every image, and {n} have none (e.g. {example}): "
                     "the descriptor cache does not match this dataset")


@dataclass
class IdentitySplit:
    """What the rule did: each member's split, and the groups behind it (recorded in meta.json)."""

    splits: dict[str, str]  # member -> train | val | test
    pairs: int  # joined pairs (look-alikes and duplicates)
    groups: int  # groups of two or more images
    largest: int  # images in the largest group
    to_train: int  # images in groups over MAX_GROUP, sent to train whole

    def record(self) -> dict:
        return {"rule": IDENTITY_RULE, "pairs": self.pairs, "groups": self.groups, "largest": self.largest,
                "to_train_for_size": self.to_train,
                "counts": {s: sum(v == s for v in self.splits.values()) for s in ("train", "val", "test")}}


def file_rule(key: str) -> str:
    """data.utkface.split_of's rule on an image key."""
    u = int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) / 2**32
    return "train" if u < 0.8 else "val" if u < 0.9 else "test"


def joined_pairs(vectors: np.ndarray, ages: np.ndarray, pixels: np.ndarray | None = None,
                 t: Thresholds = DEFAULT) -> tuple[np.ndarray, np.ndarray]:
    """The pairs (rows i, rows j) that are a look-alike or a duplicate. ``pixels`` (N x S x S x 3) tell the
    same picture from a look-alike under t.duplicate; without them the distance alone decides (classify)."""
    ages = np.asarray(ages, np.float64)
    i, j, d = pairs_within(vectors, np.maximum(look_alike_limits(ages, t), t.duplicate))
    corr = None
    if pixels is not None:
        corr = np.full(len(d), np.nan)
        close = np.flatnonzero(d < t.duplicate)
        corr[close] = [correlation(pixels[i[k]], pixels[j[k]]) for k in close]
    kind = classify(d, np.minimum(ages[i], ages[j]), corr, t)
    keep = kind != ""
    return i[keep], j[keep]


def identity_split(keys: list[str], i: np.ndarray, j: np.ndarray) -> IdentitySplit:
    """Each of ``keys`` (image keys, one per row) to a split so that no pair (i[k], j[k]) straddles."""
    n = len(keys)
    _, label = connected_components(coo_matrix((np.ones(len(i)), (i, j)), shape=(n, n)), directed=False)
    size = np.bincount(label, minlength=1)
    first: dict[int, str] = {}
    for row, g in enumerate(label):
        if g not in first or keys[row] < first[g]:
            first[g] = keys[row]
    split = {g: "train" if size[g] > MAX_GROUP else file_rule(k) for g, k in first.items()}
    return IdentitySplit({keys[row]: split[g] for row, g in enumerate(label)}, len(i), int((size > 1).sum()),
                         int(size.max()) if n else 0, int(size[size > MAX_GROUP].sum()))


def split_images(images: Images, scan_: Scan, cache_dir: str | os.PathLike | None = None) -> IdentitySplit:
    """The identity split of every decoded image; their samples are reassigned in place (Sample.assigned), so
    Images.indices and the manifest follow it. The split is keyed by member."""
    desc = utkface_descriptors(scan_, cache_dir)
    row = {f: k for k, f in enumerate(desc.files)}
    members = [s.member for s in images.samples]
    missing = [m for m in members if m not in row or not desc.found[row[m]]]
    if missing:
        raise ValueError(ERR_NO_DESCRIPTOR.format(n=len(missing), example=missing[0]))
    vectors = desc.vectors[[row[m] for m in members]]
    ages = np.array([s.age for s in images.samples], np.float64)
    i, j = joined_pairs(vectors, ages, images.pixels)
    by_key = identity_split([image_key(m) for m in members], i, j)
    splits = {m: by_key.splits[image_key(m)] for m in members}
    images.samples = [dataclasses.replace(s, assigned=splits[s.member]) for s in images.samples]
    result = dataclasses.replace(by_key, splits=splits)
    log.info("identity split: %d joined pairs, %d groups (largest %d images), splits %s", result.pairs,
             result.groups, result.largest, result.record()["counts"])
    return result
