"""The setup of a training run: ``_setup`` makes all the run reads (the data, the model with its checkpoint's
description of itself, meta.json's record of the run in ``run_meta``, bias mitigation, the optimiser, the resume
state) into a ``Run``, so a new training option lands here and not in the loop (train/loop.py)."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data.utkface import (
    FOLD_RULE,
    MANIFEST,
    SPLIT_RULE,
    Images,
    Scan,
    cached_images,
    fold_of,
    scan,
    trained_on,
    write_manifest,
)
from ..labels import AGE_BUCKET_EDGES, GENDERS, RACES, image_key
from ..meta import sha256_file
from ..models.checkpoint import META, Checkpoint
from ..models.model import AgeScaling, create_model, load_trunk
from ..models.preprocess import Preprocess
from ..models.runtime import set_threads
from .balance import CellLosses, describe_loss_weights, groups, parse_by, sampling_weights, strata_of_cells
from .chippose import cached_yaws
from .config import TrainConfig
from .external import ExternalCheck, open_for_run
from .identity import IDENTITY_RULE, split_images
from .runstate import STATE, RunState, load_state, partial_writes, read_info, save_state

log = logging.getLogger(__name__)

# where and how long to run: a resume takes these from its command line, the rest from the saved config. The
# external check's path is one (it never touches training): a resumed run passes --external again to go on.
RUNTIME_KEYS = ("data", "out", "max_minutes", "threads", "cache_dir", "device", "resume", "external")

ERR_EXISTS = "{out} already holds a checkpoint or a run; pass --resume to continue it or pick another --out"
ERR_NO_STATE = "nothing to resume in {out}: {STATE} is missing (the run finished, or never started)"


class TrainingError(Exception):
    pass


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with no weight decay on biases and norm parameters, and the trunk's rate scaled by cfg.trunk_lr
    (each group's ``lr_scale``, which the schedule multiplies in)."""
    trunk = {id(p) for p in model.trunk.parameters()} if hasattr(model, "trunk") else set()
    groups = []
    for in_trunk, scale in ((True, cfg.trunk_lr), (False, 1.0)):
        params = [p for p in model.parameters() if (id(p) in trunk) == in_trunk]
        groups += [{"params": [p for p in params if p.ndim > 1], "weight_decay": cfg.weight_decay, "lr_scale": scale},
                   {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0, "lr_scale": scale}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr)


def _init_trunk(model, cfg: TrainConfig) -> dict:
    """Load --init-trunk into the trunk (a fresh run; a resumed one gets every weight from its state, so the file
    need not be there any more) and say what it was, for meta.json."""
    path = Path(cfg.init_trunk)
    if cfg.resume:
        return {"file": path.name, "sha256": sha256_file(path) if path.is_file() else None}
    source = load_trunk(model, path)
    return {"file": path.name, "sha256": sha256_file(path), "converted_from": source}


ERR_INIT_FROM = "--init-from {path} cannot start this run: {why}"


@dataclass(frozen=True)
class Start:
    """The checkpoint --init-from names: every weight of this run starts from it, and its age head's scaling
    replaces this run's (the head decodes with it)."""

    weights: dict
    record: dict  # what meta.json records of it
    scaling: AgeScaling


def _init_from(cfg: TrainConfig, images: Images) -> Start:
    """The checkpoint --init-from names, checked against this run. A start that trained on this run's val or test
    images is refused: its validation figures would be scores on training data."""
    from ..models.checkpoint import CheckpointError, load_checkpoint

    path = Path(cfg.init_from)
    try:
        src = load_checkpoint(path)
    except CheckpointError as e:
        raise TrainingError(ERR_INIT_FROM.format(path=path, why=e)) from e
    theirs = (src.meta["arch"], int(src.meta.get("age_bins", 0)), src.preprocess.cache_size, src.preprocess.input_size)
    ours = (cfg.arch, cfg.head_bins, cfg.cache_size, cfg.input_size)
    if theirs != ours:
        raise TrainingError(ERR_INIT_FROM.format(path=path, why=(
            f"it is {theirs[0]}, {theirs[1]} age bins, {theirs[2]}/{theirs[3]} px; this run is "
            f"{ours[0]}, {ours[1]} age bins, {ours[2]}/{ours[3]} px (pass --arch, --age-loss, --cache-size and "
            "--input-size to match)")))
    seen = trained_on(path)
    if seen is None:
        raise TrainingError(ERR_INIT_FROM.format(path=path, why=f"it has no {MANIFEST}, so what it trained on is "
                                                 "unknown"))
    held = [s.member for s in images.samples if s.split != "train" and image_key(s.member) in seen]
    if held:
        raise TrainingError(ERR_INIT_FROM.format(path=path, why=(
            f"it trained on {len(held)} of this run's val/test images (e.g. {held[0]}): start from a checkpoint "
            "trained on the same split")))
    record = {"name": path.name, "weights_sha256": src.meta["weights_sha256"],
              "epochs": src.meta.get("train_config", {}).get("epochs")}
    return Start(src.model.state_dict(), record, src.scaling)


def _check_out(out: Path, resume: bool) -> None:
    if resume:
        if not (out / STATE).is_file():
            raise TrainingError(ERR_NO_STATE.format(out=out, STATE=STATE))
        for stale in partial_writes(out):
            stale.unlink()
        return
    if (out / STATE).exists() or (out / META).exists():
        raise TrainingError(ERR_EXISTS.format(out=out))
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test{os.getpid()}"
        probe.write_bytes(b"x")
        probe.unlink()
    except OSError as e:
        raise TrainingError(f"cannot write to --out {out}: {e}") from e


def run_meta(cfg: TrainConfig, pp: Preprocess, scaling: tuple[float, float], fingerprint: str, train_images: int,
             **records: dict | None) -> dict:
    """meta.json as the run knows it before its first step: the checkpoint's description of itself (architecture,
    preprocessing, the age head's scaling, labels), the config and the data, then what the options on record
    (``records``: init_from, init_trunk, balance; None where an option is off). A new option records itself here;
    _finish adds what the run itself produced."""
    meta = {
        "arch": cfg.arch,
        "dropout": cfg.dropout,
        "preprocess": pp.to_dict(),
        "age_offset": scaling[0],
        "age_scale": scaling[1],
        "labels": {"gender": list(GENDERS), "race": list(RACES), "age_bucket_edges": list(AGE_BUCKET_EDGES),
                   "gender_head": "logit of P(female)"},
        "train_config": dataclasses.asdict(cfg),
        "dataset_fingerprint": fingerprint,
        "split_rule": IDENTITY_RULE if cfg.split == "identity" else SPLIT_RULE,
    }
    if cfg.head_bins:
        meta["age_bins"] = cfg.head_bins
    if cfg.holdout_fold >= 0:
        meta["holdout"] = {"fold": cfg.holdout_fold, "folds": cfg.folds, "rule": FOLD_RULE,
                           "train_images": train_images}
    return {**meta, **{k: v for k, v in records.items() if v is not None}}


def _run_config(cfg: TrainConfig, dd) -> TrainConfig:
    """Check --out; a resumed run takes its saved config, all but where and how long to run."""
    out = Path(cfg.out)
    if dd.main:
        _check_out(out, cfg.resume)
    dd.barrier()
    if cfg.resume:
        runtime = {k: getattr(cfg, k) for k in RUNTIME_KEYS}
        saved = read_info(out / STATE)["config"]
        if saved.get("external") and not cfg.external and dd.main:
            log.warning("this run scored --external %s before; pass --external again to go on scoring it",
                        saved["external"])
        cfg = TrainConfig(**{**saved, **runtime})
    cfg.validate()
    if cfg.batch_size % dd.world:
        raise TrainingError(f"--batch-size {cfg.batch_size} must divide evenly over {dd.world} processes")
    return cfg


def _load_data(cfg: TrainConfig, dd) -> tuple[Images, Scan, dict | None]:
    """Every image decoded once, in memory; rank 0 builds the disk cache the others then read. With --split
    identity their samples carry that split, and the third value records it (None: the file split)."""
    sc = scan(cfg.data)
    if not dd.main:
        dd.barrier()
    images = cached_images(sc, cfg.cache_size, cfg.cache_dir or None, in_memory=True)
    split = None
    if cfg.split == "identity":  # every rank computes it: the descriptors are cached, the rule deterministic
        try:
            split = split_images(images, sc, cfg.cache_dir or None).record()
        except ValueError as e:
            raise TrainingError(str(e)) from e
    if dd.main:
        dd.barrier()
    train_n, val_n = len(images.indices("train")), len(images.indices("val"))
    if train_n < cfg.batch_size or val_n == 0:
        raise TrainingError(f"too few images: {train_n} train and {val_n} val for batch size {cfg.batch_size}")
    return images, sc, split


def _add_pose(cfg: TrainConfig, dd, sc: Scan, images: Images, idx: np.ndarray, labels: dict) -> None:
    """--balance-by pose: each training chip's |yaw| into labels["abs_yaw"] (agegender.train.chippose); rank 0
    measures and caches, the others read its cache. Only a balanced run needs it: plain runs skip the MTCNN pass."""
    if cfg.balance == "none" or "pose" not in parse_by(cfg.balance_by):
        return
    samples = [images.samples[i] for i in idx]
    if not dd.main:
        dd.barrier()
    labels["abs_yaw"] = cached_yaws(sc, samples, cfg.cache_dir or None)
    if dd.main:
        dd.barrier()


def train_indices(images: Images, cfg: TrainConfig) -> np.ndarray:
    """The train split's images this run trains on: all, or all but fold holdout_fold of cfg.folds (fold_of),
    which agegender.review.audit_run then scores as images this checkpoint never saw."""
    idx = images.indices("train")
    if cfg.holdout_fold < 0:
        return idx
    return np.array([i for i in idx if fold_of(images.samples[i].name, cfg.folds) != cfg.holdout_fold], np.int64)


def _aug_seed(cfg: TrainConfig, epoch: int, rank: int) -> int:
    return cfg.seed * 7919 + epoch + rank * 1_000_003


@dataclass
class Balancing:
    """Bias mitigation: each training image's cell, drawn more often (--balance sampling: ``draw``) or weighted
    by its cell's last-epoch error (loss: the run state's CellLosses). An unbalanced run groups by the default
    cells, which need no pose measured."""

    cfg: TrainConfig
    by: tuple
    cell: np.ndarray
    names: list[str]
    strata: np.ndarray | None = None  # --balance-within: each cell's stratum
    draw: torch.Tensor | None = None  # sampling: each image's weight
    record: dict | None = None  # sampling: meta.json's balance

    @classmethod
    def of(cls, cfg: TrainConfig, labels: dict) -> Balancing:
        by = parse_by(cfg.balance_by) if cfg.balance != "none" else parse_by(TrainConfig.balance_by)
        cell, names = groups(labels, by)
        b = cls(cfg, by, cell, names, strata_of_cells(labels, by, cfg.balance_within) if cfg.balance_within else None)
        if cfg.balance == "sampling":
            weights, b.record = sampling_weights(cell, names, by, cfg.balance_power)
            b.draw = torch.as_tensor(weights)
        return b

    def loss_record(self, cells: CellLosses) -> dict:
        """meta.json's balance for --balance loss: the last weights of each cell."""
        return describe_loss_weights(cells.weights, np.bincount(self.cell, minlength=len(self.names)), self.names,
                                     self.by, self.cfg.balance_power, self.cfg.balance_within)


@dataclass
class Run:
    """What _setup makes and the loop reads: a training option takes effect here, not in the loop."""

    cfg: TrainConfig
    out: Path
    images: Images
    train_idx: np.ndarray
    val_idx: np.ndarray
    ckpt: Checkpoint  # the model being trained and meta.json so far: validation reads it as any reader would
    opt: torch.optim.AdamW
    step_model: torch.nn.Module  # the model, or its DDP wrapper
    balancing: Balancing
    external: ExternalCheck | None
    aug_gen: torch.Generator
    state: RunState
    start: float = 0.0  # when this process began training (time.monotonic)

    def save(self) -> None:
        """The resume state, with the time trained so far."""
        elapsed = self.state.elapsed + time.monotonic() - self.start
        save_state(self.out / STATE, self.ckpt.model, self.opt, self.aug_gen, self.state.to_json(self.cfg, elapsed))


def _setup(cfg: TrainConfig, dd, device: torch.device) -> Run:
    """The data, the model with its checkpoint's description of itself, the optimiser, bias mitigation and the
    resume state. Under DDP every rank starts from rank 0's weights."""
    cfg = _run_config(cfg, dd)
    out = Path(cfg.out)
    set_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    external = open_for_run(cfg, dd)  # the development check's faces (report only), before the heavy part
    images, sc, split = _load_data(cfg, dd)
    train_idx = train_indices(images, cfg)
    labels = images.labels(train_idx)
    _add_pose(cfg, dd, sc, images, train_idx, labels)
    start = _init_from(cfg, images) if cfg.init_from and not cfg.resume else None  # a resumed run has its state
    scaling = ((start.scaling.offset, start.scaling.scale) if start else
               (float(labels["age"].mean()), float(labels["age"].std())))
    if dd.main:
        write_manifest(images, out / MANIFEST)
    model = create_model(cfg.arch, cfg.pretrained, cfg.dropout, cfg.head_bins, *scaling).to(device)
    trunk = _init_trunk(model, cfg) if cfg.init_trunk else None
    if start is not None:
        model.load_state_dict(start.weights)
    model = model.to(memory_format=torch.channels_last)
    balancing = Balancing.of(cfg, labels)
    pp = Preprocess(cache_size=cfg.cache_size, input_size=cfg.input_size)
    meta = run_meta(cfg, pp, scaling, sc.fingerprint, len(train_idx), init_from=start.record if start else None,
                    init_trunk=trunk, balance=balancing.record, identity_split=split)
    opt = build_optimizer(model, cfg)
    step_model = model
    if dd.active:
        step_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda"
                                                               else None)
    aug_gen = torch.Generator()
    state = RunState(cells=CellLosses(len(balancing.names)))
    if cfg.resume:
        state = load_state(out / STATE, model, opt, aug_gen, state.cells)
        if dd.rank > 0:  # the state holds rank 0's augmentation stream; the others restart theirs
            aug_gen.manual_seed(_aug_seed(cfg, state.epoch, dd.rank) + state.step_in_epoch)
        log.info("resuming at epoch %d step %d", state.epoch + 1, state.step_in_epoch)
    return Run(cfg, out, images, train_idx, images.indices("val"), Checkpoint(out, model, meta), opt, step_model,
               balancing, external, aug_gen, state)
