"""Parameters sharded by FSDP2 (`torch.distributed.fsdp.fully_shard`): DTensors whose local shard each rank holds.

clreg keeps every piece of per-parameter state (Ω, θ*, a measure's statistics) as a plain tensor shaped like the
rank's local shard and computes on local shards only: the penalty, its gradient and the step are elementwise, so
each rank's shard is exact without communication. `local` gives a parameter's (or a gradient's, or an optimiser
state's) local shard, sharing its storage; `shard_of` cuts a full-size tensor (a post-task measure, summed over
the ranks) into the local shard of a parameter, as the parameter is cut.
"""
from __future__ import annotations

import torch
from torch import Tensor

try:
    from torch.distributed.tensor import DTensor, distribute_tensor
except ImportError:  # a torch built without distributed support has no DTensor
    DTensor = distribute_tensor = None


def is_sharded(t: Tensor | None) -> bool:
    """True for a DTensor."""
    return DTensor is not None and isinstance(t, DTensor)


def local(t: Tensor | None) -> Tensor | None:
    """`t`'s local shard (the same storage) for a DTensor, `t` itself otherwise."""
    if not is_sharded(t):
        return t
    with torch.no_grad():
        return t.to_local()


def shard_of(full: Tensor, like: Tensor) -> Tensor:
    """The local shard of `full` (a tensor of `like`'s global shape, the same on every rank) as `like` is cut;
    `full` itself where `like` is not sharded. No communication."""
    if not is_sharded(like):
        return full
    return distribute_tensor(full, like.device_mesh, like.placements, src_data_rank=None).to_local()


def full_shape_zeros(like: Tensor) -> Tensor:
    """Zeros of `like`'s global shape, a plain tensor on its local device."""
    return torch.zeros(like.shape, dtype=like.dtype, device=local(like).device)


def as_global(t: Tensor | None, like: Tensor) -> Tensor | None:
    """State shaped like `like`'s local shard as a DTensor cut as `like` is (sharing `t`'s storage), for checkpoints:
    `torch.distributed.checkpoint` saves and reshards DTensors. `t` itself where `like` is not sharded."""
    if t is None or not is_sharded(like):
        return t
    return DTensor.from_local(t, like.device_mesh, like.placements, shape=like.shape, stride=like.stride())


def as_local(t: Tensor | None, like: Tensor, name: str) -> Tensor | None:
    """A checkpoint's state for the parameter `like` (named `name`) as this rank's local shard: a DTensor
    redistributed to `like`'s placements, a plain tensor of `like`'s whole shape cut as `like` is, a plain tensor of
    the local shard's shape as it is. Any other shape is refused (copying it would broadcast or fail deep down)."""
    if t is None:
        return None
    whole, mine = tuple(like.shape), tuple(local(like).shape)
    if tuple(t.shape) not in ((whole,) if is_sharded(t) else (whole, mine)):  # (a DTensor's shape is its whole one)
        shard = f" (this rank's shard: {list(mine)})" if mine != whole else ""
        raise ValueError(f"the checkpoint's state for parameter {name!r} has shape {list(t.shape)}, but the "
                         f"parameter's shape is {list(whole)}{shard}: the checkpoint is from another model")
    if is_sharded(t):
        if not is_sharded(like):
            return t.full_tensor()
        return t.redistribute(like.device_mesh, like.placements).to_local()
    if tuple(t.shape) == whole and is_sharded(like):
        return shard_of(t.to(local(like).device), like)
    return t
