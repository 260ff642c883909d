"""What the benchmarks share: timing medians, memory, and where the checkpoint and the app are."""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import dashboard
from agegender.models.catalog import default_root

# the shipped baseline: the figures in the README's Benchmarks table are measured on it
DEFAULT_CHECKPOINT = "dlib-resnet29-utkface"
APP = Path(dashboard.__file__).with_name("app.py")


def median_s(fn: Callable[[], object], runs: int, warmup: int = 2) -> float:
    """Median seconds of ``runs`` timed calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def median_rate(step: Callable[[], object], batch_size: int, steps: int, warmup: int) -> tuple[float, float]:
    """Median images/s over ``steps`` timed calls after ``warmup`` untimed ones, and the median step time."""
    med = median_s(step, steps, warmup)
    return batch_size / med, med


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def rss_mb() -> float:
    """Resident memory now (peak_rss_mb never goes down, so it cannot show a leak's absence)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def checkpoint_path(arg: str | None) -> Path:
    return Path(arg) if arg else default_root() / DEFAULT_CHECKPOINT


def parser(prog: str, doc: str, checkpoint: bool = True, threads: bool = True) -> argparse.ArgumentParser:
    """A benchmark's command line with the options most of them share."""
    p = argparse.ArgumentParser(prog=f"python -m benchmarks.{prog}", description=doc.split("\n")[0])
    if checkpoint:
        p.add_argument("--checkpoint", help=f"checkpoint folder (default: CHECKPOINTS/{DEFAULT_CHECKPOINT})")
    if threads:
        p.add_argument("--threads", type=int, default=0, help="torch threads (0: the library's default)")
    return p
