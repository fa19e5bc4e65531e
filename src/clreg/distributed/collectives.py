"""clreg under data parallelism (torch.distributed: DistributedDataParallel, Lightning's DDP strategy, torchrun).

What has to agree across ranks, and how it does:
- the penalty and the trajectory statistics read `.grad` after the optimiser step's gradients were averaged
  across ranks (DDP does it during backward), and the parameters, identical on every rank: nothing to do;
- the extra gradients some measures take (g'_t on an independent minibatch, g_t with dropout off) are taken on
  each rank's own batch and averaged across ranks, as DDP averages the training gradient;
- a post-task measure runs on each rank's share of the task's sample; its sums and sample counts are added
  across ranks, so N processes measure N times faster and give the value one process gives on the whole sample.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn


def world_size(group=None) -> int:
    """Processes in `group` (the default group if None); 1 where torch.distributed is not initialised."""
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(group)


def rank(group=None) -> int:
    """This process's rank in `group`; 0 where torch.distributed is not initialised."""
    return dist.get_rank(group) if world_size(group) > 1 else 0


def share(count: int, group=None) -> slice:
    """This rank's contiguous share of `count` items split as evenly as possible (the whole in one process)."""
    size, me = world_size(group), rank(group)
    return slice(me * count // size, (me + 1) * count // size)


def unwrap(model: nn.Module) -> nn.Module:
    """The module a DistributedDataParallel wrapper trains (the regulariser works on its parameters)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def average_(tensors: list[Tensor], group=None) -> None:
    """Average `tensors` in place across the ranks of `group` (nothing to do in one process)."""
    size = world_size(group)
    if size == 1:
        return
    for t in tensors:
        dist.all_reduce(t, group=group)
    torch._foreach_div_(tensors, float(size))


def offset(count: int, group=None) -> int:
    """Where this rank's `count` items start in the ranks' items put together in rank order (0 in one process)."""
    size = world_size(group)
    if size == 1:
        return 0
    counts = [torch.zeros(1, dtype=torch.int64) for _ in range(size)]
    dist.all_gather(counts, torch.tensor([count], dtype=torch.int64), group=group)
    return int(sum(int(c) for c in counts[:rank(group)]))


def sum_(tensors: list[Tensor], count: int, group=None) -> int:
    """Add `tensors` in place across the ranks of `group`; returns the sum of every rank's `count`."""
    if world_size(group) == 1:
        return count
    for t in tensors:
        dist.all_reduce(t, group=group)
    total = torch.tensor([float(count)], dtype=torch.float64, device=tensors[0].device if tensors else "cpu")
    dist.all_reduce(total, group=group)
    return int(total.item())
