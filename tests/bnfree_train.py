"""train.py with a test-only architecture registered and what each process does recorded; torchrun runs it:

    python -m torch.distributed.run --nproc_per_node=2 -m tests.bnfree_train \
        [--record-steps DIR] [--record-val DIR] --arch bnfree [train.py flags]

The architecture, ``bnfree``, is a small convolutional net without BatchNorm. ResNet's BatchNorm normalises
each process's half of a batch on its own, so a two-process ResNet step is not a one-process step on the
whole batch; without BatchNorm (and with no dropout, no augmentation and a mean loss) DDP's averaged
gradient is the whole batch's, and the two runs can be compared step by step.

With ``--record-steps DIR`` every process writes ``DIR/rank{R}-step{N}.safetensors`` after each optimiser
step: its network's state, the step's loss, learning rate, inputs and targets (a resumed run numbers its
steps on from the files already there). With ``--record-val DIR`` it appends each validation's
(age MAE, gender accuracy) to ``DIR/rank{R}-val.jsonl``; that works with any architecture.
Registering the architecture happens in ``main`` (or through ``register``), never on import, so importing
this module leaves ``agegender.models.model.ARCHS`` as it is.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from agegender.models import model as model_module
from agegender.train import loop as training

NAME = "bnfree"
FEATURES = 16


class BNFreeTrunk(nn.Module):
    """Two strided convolutions and a global average: the trunk interface create_model expects (an ``fc``
    it replaces with the identity), with nothing that couples the images of a batch."""

    def __init__(self, weights=None):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(8, FEATURES, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.fc = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x))


ARCH = model_module.Arch(BNFreeTrunk, FEATURES, None)


def register() -> None:
    model_module.ARCHS[NAME] = ARCH


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def record_steps(folder: Path) -> None:
    """Wrap training's optimiser step so that each writes the network it leaves, and what it trained on."""
    folder.mkdir(parents=True, exist_ok=True)
    step, rank = training.compute_step, _rank()

    def recording_step(step_model, opt, x, age_scaled, female, *args, **kwargs):
        loss, age_raw, logit = step(step_model, opt, x, age_scaled, female, *args, **kwargs)
        net = getattr(step_model, "module", step_model)
        n = len(list(folder.glob(f"rank{rank}-step*.safetensors")))
        tensors = {f"model.{k}": v.detach().clone().contiguous() for k, v in net.state_dict().items()}
        tensors.update(loss=loss.reshape(1), x=x.detach().contiguous(), age_scaled=age_scaled, female=female,
                       lr=torch.tensor([opt.param_groups[0]["lr"]], dtype=torch.float64))
        save_file(tensors, str(folder / f"rank{rank}-step{n:04d}.safetensors"))
        return loss, age_raw, logit

    training.compute_step = recording_step


def record_validations(folder: Path) -> None:
    """Wrap training's validation so that each appends its (age MAE, gender accuracy) to a file per rank."""
    folder.mkdir(parents=True, exist_ok=True)
    validate, rank = training._validate, _rank()

    def recording_validate(*args, **kwargs):
        mae, acc = validate(*args, **kwargs)
        with open(folder / f"rank{rank}-val.jsonl", "a") as f:
            f.write(json.dumps([mae, acc]) + "\n")
        return mae, acc

    training._validate = recording_validate


def main(argv: list[str] | None = None) -> int:
    from train import main as train_main

    argv = list(sys.argv[1:] if argv is None else argv)
    for flag, record in (("--record-steps", record_steps), ("--record-val", record_validations)):
        if flag in argv:
            i = argv.index(flag)
            record(Path(argv[i + 1]))
            del argv[i:i + 2]
    register()
    return train_main(argv)


if __name__ == "__main__":
    sys.exit(main())
