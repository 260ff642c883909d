"""The little DDP needs beyond PyTorch itself: who am I under torchrun, and a few collectives.

Without torchrun (no WORLD_SIZE), everything here is a no-op for a single process, and torch is imported only
by what a process group needs: a torch-free module (evaluation.evalset, which review.audit_run imports) can take
a Dist for its one-process default.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this object started the process group, so it ends it

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as dist

            dist.barrier()

    def any(self, flag: bool) -> bool:
        """True on every rank when it is true on any (e.g. one rank ran out of time)."""
        if not self.active:
            return flag
        import torch
        import torch.distributed as dist

        t = torch.tensor([1.0 if flag else 0.0])
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def sum(self, values: list[float]) -> list[float]:
        if not self.active:
            return values
        import torch
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t)
        return t.tolist()

    def sync_buffers(self, model: torch.nn.Module) -> None:
        """Every rank takes rank 0's buffers (BatchNorm running statistics). DDP broadcasts them
        before each training forward, so after the last step of an epoch each rank holds the
        statistics of its own share of the batch: without this the ranks validate differently and
        take different best-epoch and early-stopping decisions."""
        if self.active:
            import torch.distributed as dist

            for b in model.buffers():
                dist.broadcast(b, 0)

    def gather(self, obj) -> list | None:
        """Every rank's ``obj`` on rank 0 (None elsewhere)."""
        if not self.active:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world if self.main else None
        dist.gather_object(obj, out, dst=0)
        return out

    def close(self) -> None:
        if not self.owns_group:
            return
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def setup(device_name: str = "auto") -> tuple[Dist, torch.device]:
    """Join torchrun's process group when there is one: gloo on CPU, NCCL on GPUs."""
    import torch
    import torch.distributed as dist

    from .runtime import pick_device

    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_name)
    cuda = device.type == "cuda"
    if cuda:
        device = torch.device("cuda", local)  # one GPU per process under torchrun
    if world <= 1:
        return Dist(), device
    owns = not dist.is_initialized()
    if owns:
        if cuda:
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if cuda else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), local, owns), device
