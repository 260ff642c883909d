"""Typed training config: defaults in one place, each with the reason; the CLI overrides it."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path

from ..metaschema import MAX_AGE_BINS, MAX_PIXELS, MIN_PIXELS
from ..models.preprocess import Augment

ERR_SIZES = "--input-size and --cache-size must each be from {lo} to {hi} pixels"


@dataclass
class TrainConfig:
    data: str = ""  # UTKFace folder, .zip or .tar.gz
    out: str = ""  # checkpoint folder to write
    arch: str = "resnet18"  # a name in agegender.models.model.ARCHS: resnet18, resnet34, resnet50 or dlib-resnet29
    pretrained: bool = False  # torchvision ImageNet weights: needs internet, so off by default
    # a converted trunk file (python -m agegender.dlib_convert) the trunk starts from, for an arch without
    # downloadable weights (dlib-resnet29); read at the start only: a resumed run has it in its state
    init_trunk: str = ""
    # a trained checkpoint folder every weight starts from (fine-tuning: e.g. the shipped baseline with the photo
    # degradations on); same arch, head and crop, and none of this run's val or test images in its train split
    init_from: str = ""
    trunk_lr: float = 1.0  # the trunk's learning rate as a multiple of --lr (below 1: keep more of a start)
    cache_size: int = 128  # decoded cache resolution; ~1 GB for UTKFace at 128 px
    input_size: int = 112  # crop the model sees; 112 px trains ~1.5x faster than 128 on CPU
    epochs: int = 24  # ~45 minutes for resnet18 at 112 px on 2 CPU cores (bf16)
    batch_size: int = 128
    lr: float = 2e-3  # peak of the warm-up + cosine schedule (AdamW)
    warmup: float = 0.15  # fraction of all steps spent warming up
    weight_decay: float = 0.05
    dropout: float = 0.0  # before both heads
    # smooth_l1 | l1 on age scaled by the train split's mean/std, or dldl: a distribution over whole
    # years learnt from Gaussian soft labels (cross-entropy) plus L1 on its expectation (DLDL-v2)
    age_loss: str = "smooth_l1"
    age_sigma: float = 2.0  # dldl: width of the soft label, years
    age_bins: int = 121  # dldl: ages 0..120
    age_weight: float = 1.0
    gender_weight: float = 1.0
    score_gender_weight: float = 10.0  # val score = age MAE + this x gender error rate (lower is better)
    patience: int = 5  # early stopping: epochs without a better val score
    max_minutes: float = 0.0  # training time budget; 0 = none. A stopped run can --resume
    save_every_minutes: float = 5.0  # resume state written at least this often, and each epoch
    seed: int = 0  # data order, augmentation and init follow from it
    # out-of-fold label audit (agegender.review.audit --folds): leave out the train images of fold holdout_fold of
    # ``folds`` (agegender.data.utkface.fold_of); -1 trains on the whole train split
    holdout_fold: int = -1
    folds: int = 5
    # file: UTKFace's split by a hash of each file name (the shipped checkpoints'); identity: whole groups of
    # look-alikes and duplicates to one split (agegender.train.identity), so held-out faces have no look-alike
    # in train
    split: str = "file"
    precision: str = "auto"  # auto (bf16 where the CPU has it, AMP on CUDA) | bf16 | fp32
    device: str = "auto"  # auto | cpu | cuda
    tta: bool = True  # horizontal-flip test-time augmentation in the final evaluation
    # a labelled dataset (read_dataset: e.g. the FairFace sample) scored every external_every epochs and at
    # the last, into history.csv: a development check, reported only, never used for training or selection
    external: str = ""
    external_every: int = 5
    threads: int = 0  # torch CPU threads; 0 = all cores
    cache_dir: str = ""  # decoded image cache; default $AGEGENDER_CACHE or ~/.cache/agegender
    aug_scale: float = Augment.scale
    aug_rotate: float = Augment.rotate
    aug_shift: float = Augment.shift
    aug_flip: bool = Augment.flip
    aug_brightness: float = Augment.brightness
    aug_contrast: float = Augment.contrast
    aug_saturation: float = Augment.saturation
    aug_erase: float = Augment.erase
    # photo degradations (agegender.models.degrade), all off: the share of images each applies to, but for
    # aug_yaw, the largest head turn t (~ tan(angle) / sqrt(3): 0.3 is ~27 degrees)
    aug_downscale: float = Augment.downscale
    aug_blur: float = Augment.blur
    aug_jpeg: float = Augment.jpeg
    aug_noise: float = Augment.noise
    aug_cast: float = Augment.cast
    aug_grayscale: float = Augment.grayscale
    aug_yaw: float = Augment.yaw
    aug_yaw_realign: bool = Augment.yaw_realign
    # none | sampling (draw rare cells more often) | loss (weight each cell by its last-epoch error, per head)
    balance: str = "none"
    balance_by: str = "race,gender,age_bucket"  # the cells: any of race, gender, age_bucket, pose (chippose)
    # sampling: weight = cell count ** -power (1 fully balances, 0.5 halfway);
    # loss: weight = (cell's mean loss / overall mean) ** power (0 is plain training)
    balance_power: float = 0.5
    # loss: measure each cell against the mean of its own value of this factor (one of balance_by),
    # e.g. age_bucket, so that the weights act on ethnicity within each age and not on age itself
    balance_within: str = ""
    resume: bool = False  # continue the run whose state is in --out

    @property
    def head_bins(self) -> int:
        """The age head's bins: a DLDL head has one per whole year, a regression head none (0)."""
        return self.age_bins if self.age_loss == "dldl" else 0

    def augment(self) -> Augment:
        """Every Augment field from its aug_ flag: a lever added there cannot be left out here."""
        return Augment(**{f.name: getattr(self, "aug_" + f.name) for f in dataclasses.fields(Augment)})

    def validate(self) -> None:
        from ..models.model import ARCHS, ERR_TRUNK_MISSING
        from .balance import check_within, parse_by

        if not self.data or not self.out:
            raise ValueError("both --data and --out are required")
        self.augment()  # Augment refuses an out-of-range lever (a probability of 1.5) before any data loads
        if self.arch not in ARCHS:
            raise ValueError(f"unknown --arch {self.arch!r}; known: {', '.join(ARCHS)}")
        if self.init_trunk and self.pretrained:
            raise ValueError("--init-trunk and --pretrained both set the trunk's start: pass one")
        if self.init_from and (self.init_trunk or self.pretrained):
            raise ValueError("--init-from sets every weight: pass it without --init-trunk or --pretrained")
        if self.init_from and not self.resume and not (Path(self.init_from) / "meta.json").is_file():
            raise ValueError(f"--init-from {self.init_from} is not a checkpoint folder (no meta.json there)")
        if self.init_trunk and not self.resume and not Path(self.init_trunk).is_file():
            raise ValueError(ERR_TRUNK_MISSING.format(path=self.init_trunk))
        if self.trunk_lr <= 0:
            raise ValueError(f"--trunk-lr is a positive multiple of --lr, not {self.trunk_lr}")
        if self.age_loss not in ("smooth_l1", "l1", "dldl"):
            raise ValueError(f"--age-loss must be smooth_l1, l1 or dldl, not {self.age_loss!r}")
        if self.age_loss == "dldl" and (self.age_sigma <= 0 or self.age_bins < 2):
            raise ValueError("--age-sigma must be positive and --age-bins at least 2")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ValueError(f"--precision must be auto, bf16 or fp32, not {self.precision!r}")
        if self.balance not in ("none", "sampling", "loss"):
            raise ValueError(f"--balance must be none, sampling or loss, not {self.balance!r}")
        by = parse_by(self.balance_by)
        if self.balance_within:
            check_within(self.balance, by, self.balance_within)
        if not 0 <= self.aug_erase <= 1:
            raise ValueError(f"--aug-erase is a probability, not {self.aug_erase}")
        if self.input_size > self.cache_size:
            raise ValueError("--input-size cannot exceed --cache-size")
        # what meta.json's reader accepts (agegender.metaschema): a run never writes a checkpoint it refuses
        if not all(MIN_PIXELS <= v <= MAX_PIXELS for v in (self.input_size, self.cache_size)):
            raise ValueError(ERR_SIZES.format(lo=MIN_PIXELS, hi=MAX_PIXELS))
        if self.age_loss == "dldl" and self.age_bins > MAX_AGE_BINS:
            raise ValueError(f"--age-bins is at most {MAX_AGE_BINS}, not {self.age_bins}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"--dropout is a probability below 1, not {self.dropout}")
        if self.holdout_fold != -1 and not (self.folds >= 2 and 0 <= self.holdout_fold < self.folds):
            raise ValueError(f"--holdout-fold must be -1 (none) or one of 0..{self.folds - 1}, with --folds at least 2")
        if self.split not in ("file", "identity"):
            raise ValueError(f"--split must be file or identity, not {self.split!r}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("--epochs and --batch-size must be at least 1")


def parser_for(cls: type, description: str) -> argparse.ArgumentParser:
    """An argparse parser with one --flag per dataclass field; unknown flags are errors."""
    p = argparse.ArgumentParser(description=description)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        if f.type in (bool, "bool"):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default)
        else:
            typ = {"int": int, "float": float, "str": str}.get(f.type, f.type)
            p.add_argument(flag, type=typ, default=f.default)
    return p


def config_from_args(cls: type, argv: list[str] | None, description: str):
    return cls(**vars(parser_for(cls, description).parse_args(argv)))
