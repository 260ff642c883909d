"""Training throughput: end-to-end training images/s of our pipeline (uint8 cache in RAM, batch
tensor augmentation, channels_last, bf16 autocast) beside (a) the compute step alone on ready-made
tensors and (b) a plain torchvision DataLoader + PIL transforms + fp32 pipeline; peak memory.

    python -m benchmarks.train (--data PATH | --generated) [--arch resnet18] [--steps 15] ...

The dataset is --data, else $AGEGENDER_UTKFACE; --generated times 4 batches of random JPEGs instead
(the same work per image, for a machine without the data). --augment times the batch augmentation
alone instead, today's and with the photo degradations of agegender.models.degrade, one lever at a time and
all together, beside the compute step:

    python -m benchmarks.train --generated --augment --cache-size 144 --input-size 128
"""

from __future__ import annotations

import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from agegender.data.utkface import DatasetError, cached_images, scan
from agegender.models.catalog import DATA_ENV, default_data_path
from agegender.models.model import create_model
from agegender.models.preprocess import Preprocess, preprocess, to_batch
from agegender.models.runtime import cpu_has_bf16, pick_device, set_threads
from agegender.train.config import TrainConfig
from agegender.train.loop import compute_step
from agegender.train.setup import build_optimizer

from .common import median_rate, parser, peak_rss_mb

ERR_NO_DATA = f"give --data PATH (a UTKFace folder, .zip or .tar.gz), set ${DATA_ENV}, or pass --generated"
# --augment: the photo levers as a run in the wild might set them (each on half the images, turns up to ~27°)
PHOTO = {"downscale": 0.5, "blur": 0.5, "jpeg": 0.5, "noise": 0.5, "cast": 0.5, "grayscale": 0.5, "yaw": 0.3}


def synthetic_dataset(folder: Path, n: int) -> Path:
    """n random 200 px JPEGs named like UTKFace images (the size of the real ones)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = rng.integers(0, 256, (200, 200, 3), dtype=np.uint8)
        Image.fromarray(img).save(folder / f"{20 + i % 50}_{i % 2}_{i % 5}_2017010915{i:07d}.jpg.chip.jpg")
    return folder


class PlainDataset(torch.utils.data.Dataset):
    """The textbook pipeline: open each JPEG with PIL, torchvision transforms, one image at a time."""

    def __init__(self, root: Path, samples, pp: Preprocess):
        from torchvision import transforms as T

        self.root, self.samples = root, samples
        self.tf = T.Compose([
            T.Resize(pp.cache_size), T.RandomCrop(pp.input_size), T.RandomHorizontalFlip(),
            T.RandomRotation(10), T.ColorJitter(0.25, 0.25, 0.25), T.ToTensor(), T.Normalize(pp.mean, pp.std),
        ])

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        from PIL import Image

        s = self.samples[i]
        with Image.open(self.root / s.member) as im:
            x = self.tf(im.convert("RGB"))
        return x, torch.tensor(float(s.age)), torch.tensor(float(s.gender))


def run(args, data: Path) -> None:
    set_threads(args.threads)
    device = pick_device("auto")
    cfg = TrainConfig(data="-", out="-", arch=args.arch, batch_size=args.batch_size, cache_size=args.cache_size,
                      input_size=args.input_size)
    pp = Preprocess(cache_size=cfg.cache_size, input_size=cfg.input_size)
    sc = scan(data)
    t = time.perf_counter()
    images = cached_images(sc, cfg.cache_size, args.cache_dir, in_memory=True)
    pixels = torch.from_numpy(images.pixels)
    load_s = time.perf_counter() - t
    ages = torch.as_tensor(images.labels()["age"]).float()
    female = torch.as_tensor(images.labels()["gender"])
    offset, scale = float(ages.mean()), float(ages.std())  # the age scaling training derives from its data
    g = torch.Generator().manual_seed(0)
    bs = cfg.batch_size
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}, "
          f"bf16 CPU: {cpu_has_bf16()}, {args.arch}, batch {bs}, {cfg.input_size} px input")
    print(f"cache: {len(images.samples)} images at {cfg.cache_size} px = {pixels.numel() / 2**30:.2f} GiB, "
          f"loaded in {load_s:.1f} s")

    model = create_model(args.arch).to(device).to(memory_format=torch.channels_last).train()
    opt = build_optimizer(model, cfg)
    aug = cfg.augment()

    def ours():
        idx = torch.randint(0, len(pixels), (bs,), generator=g)
        x = preprocess(to_batch(pixels[idx]).to(device), pp, aug, g)
        compute_step(model, opt, x, (ages[idx].to(device) - offset) / scale, female[idx].to(device), cfg, device)

    ready_x = preprocess(to_batch(pixels[:bs]).to(device), pp, aug, g)
    ready_age, ready_f = (ages[:bs].to(device) - offset) / scale, female[:bs].to(device)

    def compute_only():
        compute_step(model, opt, ready_x, ready_age, ready_f, cfg, device)

    rate_a, step_a = median_rate(compute_only, bs, args.steps, args.warmup)
    if args.augment:
        augment_costs(to_batch(pixels[:bs]).to(device), pp, aug, g, step_a, args)
        return
    rate_e2e, step_e2e = median_rate(ours, bs, args.steps, args.warmup)
    peak_ours = peak_rss_mb()
    rate_b = float("nan")
    if args.no_plain:
        pass
    elif sc.kind != "folder":
        print("(b) needs a dataset folder; skipped")
    else:
        rate_b = plain_rate(args, sc, pp, offset, scale, device)

    print(f"\nmedian over {args.steps} steps after {args.warmup} warm-up steps:")
    print(f"  end-to-end (ours)                    {rate_e2e:7.1f} img/s   ({step_e2e * 1000:.0f} ms/step)")
    print(f"  (a) compute step on ready tensors    {rate_a:7.1f} img/s   ({step_a * 1000:.0f} ms/step)")
    print(f"  (b) DataLoader + PIL + fp32 ({args.workers} wkr)  {rate_b:7.1f} img/s")
    print(f"  end-to-end / (a) = {rate_e2e / rate_a:.0%}   (goal >= 85%)")
    print(f"  end-to-end / (b) = {rate_e2e / rate_b:.2f}x  (goal >= 2.5x)")
    print(f"  peak RSS with our pipeline: {peak_ours / 1024:.2f} GiB (cache {pixels.numel() / 2**30:.2f} GiB)")


def augment_costs(batch: torch.Tensor, pp: Preprocess, aug, g: torch.Generator, step_s: float, args) -> None:
    """Median ms of preprocess() on one batch: today's augmentation, with each photo lever alone on every
    image (its cost at most) and with all of them on, beside the compute step. The settings take turns,
    call by call, so a busy spell of a shared machine falls on all of them alike."""
    every = {k: 1.0 if k != "yaw" else v for k, v in PHOTO.items()}
    settings = {"photo levers off (today's)": aug}
    settings |= {f"  + {k} on all" if k != "yaw" else f"  + yaw {v}": dataclasses.replace(aug, **{k: every[k]})
                 for k, v in PHOTO.items()}
    settings |= {"all on, p=0.5, yaw 0.3": dataclasses.replace(aug, **PHOTO),
                 "all on, p=1, yaw 0.3": dataclasses.replace(aug, **every)}
    times: dict[str, list[float]] = {k: [] for k in settings}
    for i in range(2 + args.aug_runs):  # 2 warm-up rounds
        for k, a in settings.items():
            t = time.perf_counter()
            preprocess(batch, pp, a, g)
            if batch.is_cuda:
                torch.cuda.synchronize()
            if i >= 2:
                times[k].append(time.perf_counter() - t)
    ms = {k: statistics.median(v) * 1000 for k, v in times.items()}
    base, step_ms = ms["photo levers off (today's)"], step_s * 1000
    n, _, s, _ = batch.shape
    print(f"\naugmentation alone, batch {n}, {s} -> {pp.input_size} px, median of {args.aug_runs} "
          f"(compute step {step_ms:.0f} ms):")
    for k, v in ms.items():
        extra = f"   {v - base:+7.1f} ms" if k != "photo levers off (today's)" else " " * 13
        print(f"  {k:<28} {v:7.1f} ms{extra}   {v / step_ms:6.1%} of a step")


def plain_rate(args, sc, pp: Preprocess, offset: float, scale: float, device) -> float:
    """(b): images/s of the textbook DataLoader pipeline in fp32."""
    bs = args.batch_size
    fp32 = TrainConfig(data="-", out="-", arch=args.arch, batch_size=bs, precision="fp32")
    model = create_model(args.arch).to(device).train()
    opt = build_optimizer(model, fp32)
    loader = torch.utils.data.DataLoader(PlainDataset(sc.path, sc.samples, pp), batch_size=bs, shuffle=True,
                                         num_workers=args.workers, drop_last=True, persistent_workers=True)
    it = iter(loader)

    def plain():
        nonlocal it
        try:
            x, a, f = next(it)
        except StopIteration:
            it = iter(loader)
            x, a, f = next(it)
        compute_step(model, opt, x.to(device), (a.to(device) - offset) / scale, f.to(device), fp32, device)

    return median_rate(plain, bs, args.steps, args.warmup)[0]


def main(argv: list[str] | None = None) -> int:
    p = parser("train", __doc__, checkpoint=False)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--data", default=default_data_path() or None,
                     help=f"UTKFace folder, .zip or .tar.gz (default ${DATA_ENV})")
    src.add_argument("--generated", action="store_true", help="time on 4 batches of generated 200 px JPEGs")
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=15)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers for (b)")
    p.add_argument("--cache-size", type=int, default=TrainConfig.cache_size)
    p.add_argument("--input-size", type=int, default=TrainConfig.input_size)
    p.add_argument("--no-plain", action="store_true", help="skip (b), e.g. to compare architectures")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--augment", action="store_true",
                   help="time the augmentation alone, photo levers off, one by one and all on, and stop")
    p.add_argument("--aug-runs", type=int, default=20, help="timed calls per --augment setting")
    args = p.parse_args(argv)
    if args.generated:
        with tempfile.TemporaryDirectory() as tmp:
            run(args, synthetic_dataset(Path(tmp) / "UTKFace", 4 * args.batch_size))
        return 0
    if not args.data:
        p.error(ERR_NO_DATA)
    try:
        run(args, Path(args.data))
    except DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
