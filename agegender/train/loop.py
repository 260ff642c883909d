"""Training: one readable loop, in ``_train``, over the ``Run`` that train/setup.py's ``_setup`` makes (every read
of the run happens there, so a new option lands there and not here): for each epoch, for each step, batch ->
optimiser step -> running figures; at each epoch's end (``_end_epoch``) validate, keep the best weights, save
the resume state (runstate.py). Every file is written atomically, so a kill at any moment can resume."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..data.utkface import Images
from ..fairness.metrics import summary
from ..models.checkpoint import WEIGHTS, Checkpoint, save_weights, write_meta
from ..models.distributed import setup as setup_distributed
from ..models.inference import predict_checkpoint
from ..models.preprocess import preprocess, to_batch
from ..models.runtime import autocast
from .config import TrainConfig
from .external import describe, history_cells
from .runstate import HISTORY, STATE, Stats, history_row, write_history
from .setup import Run, TrainingError, _aug_seed, _setup

log = logging.getLogger(__name__)


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


def val_score(mae: float, acc: float, cfg: TrainConfig) -> float:
    return mae + cfg.score_gender_weight * (1 - acc)


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 100_003 + epoch)


def _validate(ckpt: Checkpoint, images: Images, idx: np.ndarray, cfg: TrainConfig) -> tuple[float, float]:
    """Val age MAE and gender accuracy, predicted as any reader will predict from the checkpoint this
    run is writing (without TTA: cheaper, and the choice of the best epoch needs no more)."""
    ckpt.model.eval()
    ages, pf = predict_checkpoint(ckpt, images.pixels[idx], tta=False, precision=cfg.precision)
    ckpt.model.train()
    labels = images.labels(idx)
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


def _epoch_order(cfg: TrainConfig, epoch: int, n: int, draw: torch.Tensor | None) -> torch.Tensor:
    """The epoch's sequence of training images (positions in the train split): a permutation, or
    with balanced sampling as many draws as images, with replacement, by the balancing weights."""
    if draw is None:
        return torch.randperm(n, generator=_epoch_generator(cfg.seed, epoch))
    return torch.multinomial(draw, n, replacement=True, generator=_epoch_generator(cfg.seed, epoch))


def _train(cfg: TrainConfig, dd, device: torch.device) -> Path:
    run = _setup(cfg, dd, device)
    cfg, out, state, opt, model = run.cfg, run.out, run.state, run.opt, run.ckpt.model
    pp, scaling, aug, loss_cells = run.ckpt.preprocess, run.ckpt.scaling, cfg.augment(), cfg.balance == "loss"
    local_bs = cfg.batch_size // dd.world
    steps_per_epoch = len(run.train_idx) // cfg.batch_size
    total_steps = steps_per_epoch * cfg.epochs
    pixels = torch.from_numpy(run.images.pixels)
    age_t, gender_t = torch.as_tensor(run.images.labels()["age"]), torch.as_tensor(run.images.labels()["gender"])
    cell_t = torch.as_tensor(run.balancing.cell)
    run.start = last_save = time.monotonic()
    budget_s = cfg.max_minutes * 60 if cfg.max_minutes > 0 else math.inf
    out_of_time = False

    model.train()
    for epoch in range(state.epoch, cfg.epochs):
        if state.stopped_early or out_of_time:
            break
        if state.step_in_epoch == 0:  # a fresh epoch, not the rest of one a resume picks up
            run.aug_gen.manual_seed(_aug_seed(cfg, epoch, dd.rank))
            state.train = Stats()
            state.cells.start_epoch()
        order = _epoch_order(cfg, epoch, len(run.train_idx), run.balancing.draw)
        epoch_start = time.monotonic()
        bar = tqdm(range(state.step_in_epoch, steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}",
                   unit="step", dynamic_ncols=True, disable=not dd.main)
        for step in bar:
            whole = order[step * cfg.batch_size:(step + 1) * cfg.batch_size]
            chunk = whole[dd.rank * local_bs:(dd.rank + 1) * local_bs]  # this rank's share of the batch
            batch = torch.as_tensor(run.train_idx[chunk.numpy()])
            x = preprocess(to_batch(pixels[batch]).to(device), pp, aug, run.aug_gen)
            age, female, cells = age_t[batch].to(device), gender_t[batch].to(device), cell_t[chunk]
            image_w = state.cells.image_weights(cells, device) if loss_cells else ()
            for g in opt.param_groups:
                g["lr"] = lr_at(state.global_step, total_steps, cfg) * g.get("lr_scale", 1.0)
            loss, age_raw, logit = compute_step(run.step_model, opt, x, scaling.encode(age), female, cfg, device,
                                                *image_w)
            state.global_step += 1
            state.step_in_epoch = step + 1
            with torch.no_grad():
                pred_age = scaling.decode(age_raw)
                state.train.add(loss, pred_age, age, logit, female)
                if loss_cells:
                    state.cells.add(cells, (pred_age - age).abs(),
                                    F.binary_cross_entropy_with_logits(logit, female, reduction="none"))
            mean_loss, mae, acc = state.train.means()
            bar.set_postfix(loss=f"{mean_loss:.3f}", mae=f"{mae:.2f}", acc=f"{acc:.3f}")
            now = time.monotonic()
            if dd.any(now - run.start > budget_s):
                out_of_time = True
                break
            if dd.main and now - last_save > cfg.save_every_minutes * 60:
                run.save()
                last_save = now
        bar.close()
        if out_of_time and state.step_in_epoch < steps_per_epoch:
            log.info("time budget of %.1f min reached mid-epoch; state saved for --resume", cfg.max_minutes)
            if dd.main:
                run.save()
            break
        _end_epoch(run, dd, epoch, epoch_start)
        last_save = time.monotonic()

    state.elapsed += time.monotonic() - run.start
    if state.best_epoch is None:
        raise TrainingError(f"the time budget ran out before the first epoch finished; run again with --resume "
                            f"--out {out} and a larger --max-minutes")
    if dd.main:
        _finish(run)
    dd.barrier()  # the other ranks wait for rank 0's final evaluation, then all leave together
    return out


def _end_epoch(run: Run, dd, epoch: int, epoch_start: float) -> None:
    """Validate, keep the best weights, score the external check, write the history and the resume state."""
    cfg, state, model = run.cfg, run.state, run.ckpt.model
    dd.sync_buffers(model)
    mae, acc = _validate(run.ckpt, run.images, run.val_idx, cfg)  # every rank: same weights, same answer
    score = val_score(mae, acc, cfg)
    epoch_stats = Stats(*dd.sum(state.train.to_list()))  # every rank's images
    if cfg.balance == "loss":  # next epoch's weights, from every rank's images
        state.cells.end_epoch(cfg.balance_power, run.balancing.strata, dd.sum)
    if state.best_score is None or score < state.best_score:
        state.best_sha256 = save_weights(model, run.out / WEIGHTS) if dd.main else None
        state.best_score, state.best_epoch, state.bad_epochs = score, epoch + 1, 0
    else:
        state.bad_epochs += 1
        if state.bad_epochs >= cfg.patience:
            state.stopped_early = True
    # the external check, after every decision above: it reads the weights and decides nothing
    ext = None
    if run.external is not None and dd.main and run.external.due(epoch + 1,
                                                                 epoch + 1 == cfg.epochs or state.stopped_early):
        ext = run.external.score(run.ckpt, cfg.tta)
        log.info("epoch %d external check (report only): %s", epoch + 1, describe(ext))
    secs = time.monotonic() - epoch_start  # the external check's seconds included
    row = history_row(epoch, state, run.opt.param_groups[0]["lr"], epoch_stats, mae, acc, score, secs)
    state.history.append({**row, **(history_cells(ext) if run.external is not None else {})})
    log.info("epoch %d: train loss %.4f mae %.2f | val mae %.3f acc %.4f score %.3f | %.0f s",
             epoch + 1, *epoch_stats.means()[:2], mae, acc, score, secs)
    if state.stopped_early:
        log.info("early stop: no better val score for %d epochs", cfg.patience)
    state.epoch, state.step_in_epoch = epoch + 1, 0
    if dd.main:
        write_history(run.out / HISTORY, state.history)
        run.save()


def _finish(run: Run) -> None:
    """meta.json (the run's description, then what the run produced), then the final evaluation through the
    checkpoint loader, like any user's; the resume state goes only once the run has nothing left to do."""
    cfg, state, out = run.cfg, run.state, run.out
    finished = state.epoch >= cfg.epochs or state.stopped_early
    produced = {"external": run.external.meta(state.history, cfg.tta) if run.external is not None else None,
                "balance": run.balancing.loss_record(state.cells) if cfg.balance == "loss" else None}
    meta = {**run.ckpt.meta, **{k: v for k, v in produced.items() if v is not None}}
    meta.update(best_epoch=state.best_epoch, epochs_run=state.epoch, finished=finished,
                train_minutes=round(state.elapsed / 60, 1), weights_sha256=state.best_sha256)
    write_meta(out, meta)
    from ..evaluation.evaluate import evaluate_into_checkpoint  # evaluation loads the checkpoint like any user would

    evaluate_into_checkpoint(out, run.images, meta["dataset_fingerprint"], tta=cfg.tta)
    if finished:
        (out / STATE).unlink(missing_ok=True)
    else:
        log.info("stopped by the time budget after %d/%d epochs; --resume continues", state.epoch, cfg.epochs)
