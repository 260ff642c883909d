"""Train a multitask age/gender model: python train.py --data PATH --arch resnet18 --out checkpoints/NAME"""

import logging
import sys

from agegender.data.utkface import DatasetError
from agegender.models.model import PretrainedUnavailable
from agegender.train.config import TrainConfig, config_from_args
from agegender.train.loop import TrainingError, train


def main(argv=None) -> int:
    cfg = config_from_args(TrainConfig, argv, __doc__)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    try:
        cfg.validate()
        out = train(cfg)
    except (ValueError, DatasetError, TrainingError, PretrainedUnavailable) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"checkpoint written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
