"""Training: one readable loop. Resume state and checkpoint files are written atomically."""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import os
import re
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, safe_open, save_file
from tqdm import tqdm

from .balance import describe_loss_weights, groups, loss_weights, parse_by, sampling_weights, strata_of_cells
from .checkpoint import META, WEIGHTS, save_weights, write_meta
from .config import TrainConfig
from .data import SPLIT_RULE, Images, cached_images, scan, write_manifest
from .distributed import setup as setup_distributed
from .inference import predict_pixels
from .labels import AGE_BUCKET_EDGES, GENDERS, RACES
from .metrics import summary
from .model import age_range, create_model, decode_age
from .preprocess import Preprocess, preprocess, to_batch
from .runtime import autocast, set_threads

log = logging.getLogger(__name__)

STATE = "train_state.safetensors"
HISTORY = "history.csv"
MANIFEST = "manifest.csv"
HISTORY_FIELDS = [
    "epoch", "step", "lr", "train_loss", "train_age_mae", "train_gender_acc",
    "val_age_mae", "val_gender_acc", "val_score", "epoch_seconds", "train_img_per_s",
]
RUNTIME_KEYS = ("data", "out", "max_minutes", "threads", "cache_dir", "device", "resume")

ERR_EXISTS = "{out} already holds a checkpoint or a run; pass --resume to continue it or pick another --out"
ERR_NO_STATE = "nothing to resume in {out}: {STATE} is missing (the run finished, or never started)"


class TrainingError(Exception):
    pass


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    """Linear warm-up then cosine decay to zero: a function of the step alone, so resume needs no
    scheduler state."""
    warm = max(1, int(total * cfg.warmup))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    t = (step - warm) / max(1, total - warm)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def _mean(per_image: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    return per_image.mean() if weights is None else (per_image * weights).sum() / weights.sum()


def compute_step(model, opt, x: torch.Tensor, age_scaled: torch.Tensor, female: torch.Tensor,
                 cfg: TrainConfig, device: torch.device, age_w: torch.Tensor | None = None,
                 gender_w: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One optimiser step on a ready batch; returns the loss and both heads' outputs (detached).
    ``age_w`` and ``gender_w`` weight each image's loss per head (loss balancing); None weighs all alike."""
    with autocast(device, cfg.precision):
        out = model(x, with_age_logits=True) if cfg.age_loss == "dldl" else model(x)
    age_raw, logit = out[0].float(), out[1].float()
    if cfg.age_loss == "dldl":
        head = getattr(model, "module", model).age_head  # under DDP the network is model.module
        soft = head.soft_labels(age_scaled, cfg.age_sigma)
        age_loss = F.cross_entropy(out[2].float(), soft, reduction="none") + (age_raw - age_scaled).abs()
    elif cfg.age_loss == "smooth_l1":  # beta ~1 year: L1 beyond, smooth near zero
        age_loss = F.smooth_l1_loss(age_raw, age_scaled, beta=0.05, reduction="none")
    else:
        age_loss = F.l1_loss(age_raw, age_scaled, reduction="none")
    gender_loss = F.binary_cross_entropy_with_logits(logit, female, reduction="none")
    loss = cfg.age_weight * _mean(age_loss, age_w) + cfg.gender_weight * _mean(gender_loss, gender_w)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach(), age_raw.detach(), logit.detach()


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with no weight decay on biases and norm parameters."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)


def val_score(mae: float, acc: float, cfg: TrainConfig) -> float:
    return mae + cfg.score_gender_weight * (1 - acc)


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 100_003 + epoch)


def _save_state(path: Path, model, opt, aug_gen: torch.Generator, info: dict) -> None:
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    for i, st in opt.state_dict()["state"].items():
        for k, v in st.items():
            tensors[f"opt.{i}.{k}"] = torch.as_tensor(v).cpu().contiguous()
    tensors["rng.aug"] = aug_gen.get_state()
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    save_file(tensors, str(tmp), metadata={"info": json.dumps(info)})
    os.replace(tmp, path)


def _load_state(path: Path, model, opt, aug_gen: torch.Generator) -> dict:
    tensors = load_file(str(path))
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    sd = opt.state_dict()
    state: dict[int, dict] = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, i, name = k.split(".", 2)
            state.setdefault(int(i), {})[name] = v
    sd["state"] = state
    opt.load_state_dict(sd)
    aug_gen.set_state(tensors["rng.aug"])
    with safe_open(str(path), "pt") as f:
        return json.loads(f.metadata()["info"])


def _write_history(path: Path, rows: list[dict]) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=HISTORY_FIELDS)
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


def _partial_writes(out: Path) -> list[Path]:
    """Temporary files a kill cut short; the files they were meant to replace are whole.

    Ours are named `.NAME.tmpPID`; safetensors itself writes through a `.tmpXXXXXX` file (Rust's tempfile crate)
    before it renames into place, so a kill inside `save_file` leaves one of those."""
    return [p for p in out.glob(".*") if p.is_file() and (".tmp" in p.name[1:] or re.fullmatch(r"\.tmp\w{6}", p.name))]


def _check_out(out: Path, resume: bool) -> None:
    if resume:
        if not (out / STATE).is_file():
            raise TrainingError(ERR_NO_STATE.format(out=out, STATE=STATE))
        for stale in _partial_writes(out):
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


def base_meta(cfg: TrainConfig, pp: Preprocess, age_offset: float, age_scale: float, fingerprint: str) -> dict:
    return {
        "arch": cfg.arch,
        "dropout": cfg.dropout,
        "preprocess": pp.to_dict(),
        "age_offset": age_offset,
        "age_scale": age_scale,
        "labels": {"gender": list(GENDERS), "race": list(RACES), "age_bucket_edges": list(AGE_BUCKET_EDGES),
                   "gender_head": "logit of P(female)"},
        "train_config": dataclasses.asdict(cfg),
        "dataset_fingerprint": fingerprint,
        "split_rule": SPLIT_RULE,
    }


def _validate(model, images: Images, idx: np.ndarray, pp, meta: dict, cfg: TrainConfig) -> tuple[float, float]:
    model.eval()
    labels = images.labels(idx)
    ages, pf = predict_pixels(model, images.pixels[idx], pp, meta["age_offset"], meta["age_scale"],
                              tta=False, precision=cfg.precision)
    model.train()
    m = summary(labels["age"], ages, labels["gender"], pf)
    return m["age_mae"], m["gender_accuracy"]


def train(cfg: TrainConfig) -> Path:
    """Train, keep the best weights by val score, then evaluate val and test into the folder.
    Under torchrun each rank trains on its shard of every batch (DDP); rank 0 alone writes."""
    dd, device = setup_distributed(cfg.device)
    try:
        return _train(cfg, dd, device)
    finally:
        dd.close()


def _train(cfg: TrainConfig, dd, device: torch.device) -> Path:
    out = Path(cfg.out)
    if dd.main:
        _check_out(out, cfg.resume)
    dd.barrier()
    saved_info = None
    if cfg.resume:
        with safe_open(str(out / STATE), "pt") as f:
            saved_info = json.loads(f.metadata()["info"])
        runtime = {k: getattr(cfg, k) for k in RUNTIME_KEYS}
        cfg = TrainConfig(**{**saved_info["config"], **runtime})
    cfg.validate()
    if cfg.batch_size % dd.world:
        raise TrainingError(f"--batch-size {cfg.batch_size} must divide evenly over {dd.world} processes")
    set_threads(cfg.threads)
    torch.manual_seed(cfg.seed)

    sc = scan(cfg.data)
    if not dd.main:
        dd.barrier()  # rank 0 builds the cache first
    images = cached_images(sc, cfg.cache_size, cfg.cache_dir or None, in_memory=True)
    if dd.main:
        dd.barrier()
    train_idx, val_idx = images.indices("train"), images.indices("val")
    if len(train_idx) < cfg.batch_size or len(val_idx) == 0:
        raise TrainingError(
            f"too few images: {len(train_idx)} train and {len(val_idx)} val for batch size {cfg.batch_size}"
        )
    train_ages = images.labels(train_idx)["age"]
    pp = Preprocess(cache_size=cfg.cache_size, input_size=cfg.input_size)
    meta = base_meta(cfg, pp, float(train_ages.mean()), float(train_ages.std()), sc.fingerprint)
    if dd.main:
        write_manifest(images, out / MANIFEST)

    if cfg.age_loss == "dldl":
        meta["age_bins"] = cfg.age_bins
    model = create_model(cfg.arch, cfg.pretrained, cfg.dropout, meta.get("age_bins", 0), meta["age_offset"],
                         meta["age_scale"]).to(device)
    model = model.to(memory_format=torch.channels_last)
    opt = build_optimizer(model, cfg)
    step_model = model
    if dd.active:  # same initial weights everywhere: DDP broadcasts rank 0's
        step_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda"
                                                               else None)
    local_bs = cfg.batch_size // dd.world
    aug, aug_gen = cfg.augment(), torch.Generator()
    steps_per_epoch = len(train_idx) // cfg.batch_size
    by = parse_by(cfg.balance_by)
    cell, cell_names = groups(images.labels(train_idx), by)
    cell_t = torch.as_tensor(cell)
    strata = strata_of_cells(images.labels(train_idx), by, cfg.balance_within) if cfg.balance_within else None
    draw = None
    if cfg.balance == "sampling":
        weights, meta["balance"] = sampling_weights(cell, cell_names, by, cfg.balance_power)
        draw = torch.as_tensor(weights)
    total_steps = steps_per_epoch * cfg.epochs

    info = {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "best_score": None, "best_epoch": None,
            "best_sha256": None, "bad_epochs": 0, "history": [], "elapsed": 0.0, "sums": [0.0] * 4,
            "config": dataclasses.asdict(cfg), "stopped_early": False,
            "cell_stats": [[0.0] * 3 for _ in cell_names],  # loss balancing: age error, gender loss, count
            "cell_weights": [[1.0, 1.0] for _ in cell_names]}  # and the weights they gave, per head
    if saved_info is not None:
        info = _load_state(out / STATE, model, opt, aug_gen)
        info["config"] = dataclasses.asdict(cfg)
        if dd.rank > 0:  # the state holds rank 0's augmentation stream; the others restart theirs
            aug_gen.manual_seed(cfg.seed * 7919 + info["epoch"] + dd.rank * 1_000_003 + info["step_in_epoch"])
        log.info("resuming at epoch %d step %d", info["epoch"] + 1, info["step_in_epoch"])

    age_t = torch.as_tensor(images.labels()["age"])
    gender_t = torch.as_tensor(images.labels()["gender"])
    pixels = torch.from_numpy(images.pixels)
    start, last_save = time.monotonic(), time.monotonic()
    budget_s = cfg.max_minutes * 60 if cfg.max_minutes > 0 else math.inf
    out_of_time = False
    model.train()

    while info["epoch"] < cfg.epochs and not info["stopped_early"] and not out_of_time:
        epoch = info["epoch"]
        if info["step_in_epoch"] == 0:
            aug_gen.manual_seed(cfg.seed * 7919 + epoch + dd.rank * 1_000_003)
            info["sums"] = [0.0] * 4  # loss, abs age error, gender correct, images
            info["cell_stats"] = [[0.0] * 3 for _ in cell_names]
        cell_w = torch.tensor(info["cell_weights"]) if cfg.balance == "loss" else None
        if draw is None:
            perm = torch.randperm(len(train_idx), generator=_epoch_generator(cfg.seed, epoch))
        else:  # as many draws as images, with replacement, by the balancing weights
            perm = torch.multinomial(draw, len(train_idx), replacement=True,
                                     generator=_epoch_generator(cfg.seed, epoch))
        epoch_start = time.monotonic()
        bar = tqdm(range(info["step_in_epoch"], steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}",
                   unit="step", dynamic_ncols=True, disable=not dd.main)
        for step in bar:
            chunk = perm[step * cfg.batch_size:(step + 1) * cfg.batch_size][dd.rank * local_bs:(dd.rank + 1) * local_bs]
            batch = torch.as_tensor(train_idx[chunk.numpy()])
            x = preprocess(to_batch(pixels[batch]).to(device), pp, aug, aug_gen)
            age = age_t[batch].to(device)
            female = gender_t[batch].to(device)
            cells = cell_t[chunk]
            w = cell_w[cells].to(device) if cell_w is not None else None
            for g in opt.param_groups:
                g["lr"] = lr_at(info["global_step"], total_steps, cfg)
            loss, age_raw, logit = compute_step(
                step_model, opt, x, (age - meta["age_offset"]) / meta["age_scale"], female, cfg, device,
                *((w[:, 0], w[:, 1]) if w is not None else ()))
            info["global_step"] += 1
            info["step_in_epoch"] = step + 1
            with torch.no_grad():
                pred_age = decode_age(age_raw, meta["age_offset"], meta["age_scale"], age_range(meta))
                s = info["sums"]
                s[0] += loss.item() * len(batch)
                s[1] += (pred_age - age).abs().sum().item()
                s[2] += ((logit >= 0) == (female >= 0.5)).sum().item()
                s[3] += len(batch)
                if cell_w is not None:
                    per = torch.stack([(pred_age - age).abs(), F.binary_cross_entropy_with_logits(
                        logit, female, reduction="none"), torch.ones_like(age)], 1).cpu().double()
                    cs = torch.tensor(info["cell_stats"], dtype=torch.float64).index_add_(0, cells, per)
                    info["cell_stats"] = cs.tolist()
            bar.set_postfix(loss=f"{s[0] / s[3]:.3f}", mae=f"{s[1] / s[3]:.2f}", acc=f"{s[2] / s[3]:.3f}")
            now = time.monotonic()
            if dd.any(now - start > budget_s):
                out_of_time = True
                break
            if dd.main and now - last_save > cfg.save_every_minutes * 60:
                _save_state(out / STATE, model, opt, aug_gen, {**info, "elapsed": info["elapsed"] + now - start})
                last_save = now
        bar.close()
        if out_of_time and info["step_in_epoch"] < steps_per_epoch:
            log.info("time budget of %.1f min reached mid-epoch; state saved for --resume", cfg.max_minutes)
            if dd.main:
                _save_state(out / STATE, model, opt, aug_gen,
                            {**info, "elapsed": info["elapsed"] + time.monotonic() - start})
            break
        dd.sync_buffers(model)
        mae, acc = _validate(model, images, val_idx, pp, meta, cfg)  # every rank: same weights, same answer
        score = val_score(mae, acc, cfg)
        s = dd.sum(list(info["sums"]))
        if cfg.balance == "loss":  # next epoch's weights, from every rank's images
            stats = np.array(dd.sum(sum(info["cell_stats"], []))).reshape(-1, 3)
            info["cell_weights"] = loss_weights(stats, cfg.balance_power, strata=strata).tolist()
        secs = time.monotonic() - epoch_start
        row = {"epoch": epoch + 1, "step": info["global_step"], "lr": f"{opt.param_groups[0]['lr']:.6g}",
               "train_loss": f"{s[0] / s[3]:.5f}", "train_age_mae": f"{s[1] / s[3]:.4f}",
               "train_gender_acc": f"{s[2] / s[3]:.5f}", "val_age_mae": f"{mae:.4f}",
               "val_gender_acc": f"{acc:.5f}", "val_score": f"{score:.4f}", "epoch_seconds": f"{secs:.1f}",
               "train_img_per_s": f"{s[3] / secs:.1f}"}
        info["history"].append(row)
        log.info("epoch %d: train loss %.4f mae %.2f | val mae %.3f acc %.4f score %.3f | %.0f s",
                 epoch + 1, s[0] / s[3], s[1] / s[3], mae, acc, score, secs)
        if info["best_score"] is None or score < info["best_score"]:
            info.update(best_score=score, best_epoch=epoch + 1, bad_epochs=0,
                        best_sha256=save_weights(model, out / WEIGHTS) if dd.main else None)
        else:
            info["bad_epochs"] += 1
            if info["bad_epochs"] >= cfg.patience:
                log.info("early stop: no better val score for %d epochs", cfg.patience)
                info["stopped_early"] = True
        info["epoch"], info["step_in_epoch"] = epoch + 1, 0
        if dd.main:
            _write_history(out / HISTORY, info["history"])
            _save_state(out / STATE, model, opt, aug_gen,
                        {**info, "elapsed": info["elapsed"] + time.monotonic() - start})
        last_save = time.monotonic()

    info["elapsed"] += time.monotonic() - start
    if info["best_epoch"] is None:
        raise TrainingError(f"the time budget ran out before the first epoch finished; run again with --resume "
                            f"--out {out} and a larger --max-minutes")
    finished = info["epoch"] >= cfg.epochs or info["stopped_early"]
    if not dd.main:
        dd.barrier()  # wait for rank 0's final evaluation, then leave together
        return out
    if cfg.balance == "loss":
        meta["balance"] = describe_loss_weights(np.array(info["cell_weights"]), np.bincount(cell, minlength=len(
            cell_names)), cell_names, by, cfg.balance_power, cfg.balance_within)
    meta.update(best_epoch=info["best_epoch"], epochs_run=info["epoch"], finished=finished,
                train_minutes=round(info["elapsed"] / 60, 1), weights_sha256=info["best_sha256"])
    write_meta(out, meta)
    from .evaluate import evaluate_into_checkpoint  # evaluation loads the checkpoint like any user would

    evaluate_into_checkpoint(out, images, tta=cfg.tta)
    if finished:
        (out / STATE).unlink(missing_ok=True)
    else:
        log.info("stopped by the time budget after %d/%d epochs; --resume continues", info["epoch"], cfg.epochs)
    dd.barrier()
    return out
