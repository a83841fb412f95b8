"""Keeping tensors identical on every rank: broadcast from rank 0, average over ranks.

Both are no-ops without an initialised process group of more than one process, so callbacks
call them unconditionally; under DDP every rank must make the same calls in the same order.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor
from torch import distributed as dist


def world_size() -> int:
    """The number of processes in the default group (1 when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


@torch.no_grad()
def broadcast_(tensors: Iterable[Tensor], src: int = 0) -> None:
    """Overwrite each tensor in place with rank ``src``'s value (a collective call)."""
    if world_size() == 1:
        return
    for t in tensors:
        if t.dtype == torch.bool:  # not every backend broadcasts bool
            carrier = t.to(torch.uint8)
            dist.broadcast(carrier, src=src)
            t.copy_(carrier.bool())
        else:
            dist.broadcast(t.data, src=src)


@torch.no_grad()
def average_(tensors: Iterable[Tensor]) -> None:
    """Replace each floating-point tensor in place by its mean over the ranks (collective)."""
    size = world_size()
    if size == 1:
        return
    for t in tensors:
        if not t.is_floating_point():
            raise TypeError(f"average_ needs floating-point tensors, got {t.dtype}")
        dist.all_reduce(t.data, op=dist.ReduceOp.SUM)
        t.data.div_(size)


@torch.no_grad()
def sum_over_ranks(values: list[float] | list[int]) -> list[float]:
    """The element-wise sum of ``values`` over the ranks (collective); ``values`` unchanged
    when not distributed."""
    out = torch.tensor([float(v) for v in values], dtype=torch.float64)
    if world_size() > 1:
        if dist.get_backend() == "nccl":
            out = out.cuda()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out.cpu().tolist()


__all__ = ["average_", "broadcast_", "sum_over_ranks", "world_size"]
