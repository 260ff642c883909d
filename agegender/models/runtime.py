"""Where and how tensors run: device choice, threads, mixed precision."""

from __future__ import annotations

import contextlib
import functools
import os

import torch


@functools.cache
def cpu_has_bf16() -> bool:
    """True when the CPU runs bf16 matmuls natively (avx512_bf16 or AMX); elsewhere bf16 is slower."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast(device: torch.device, precision: str = "auto") -> contextlib.AbstractContextManager:
    """bf16 autocast on CPUs that have it, AMP on CUDA, plain fp32 otherwise or when asked."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    if precision == "bf16" or (precision == "auto" and cpu_has_bf16()):
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def set_threads(n: int = 0) -> None:
    """Use every core by default: the whole pipeline runs in this one process."""
    torch.set_num_threads(n if n > 0 else max(1, len(os.sched_getaffinity(0))))
