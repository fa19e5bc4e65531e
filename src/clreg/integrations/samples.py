"""A task's sample for post-task measures, from what a framework user has at hand: a tensor, a dataset or a
dataloader of (inputs, labels) pairs or of dicts."""
from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import Tensor


def take_sample(data: Any, n: int, key: str | None = None) -> tuple[Tensor, Tensor | None]:
    """The first `n` inputs (and labels, where batches carry them) of `data`: a tensor of inputs, or an
    iterable of batches, each a tensor, an (inputs, labels, ...) tuple, or a dict whose `key` entry holds
    the inputs (and 'labels' the labels). A shuffling dataloader gives a random sample."""
    if isinstance(data, Tensor):
        return data[:n], None
    if not isinstance(data, Iterable):
        raise ValueError(f"a task's sample must be a tensor of inputs or an iterable of batches, got {type(data).__name__}")
    inputs, labels, have = [], [], 0
    for batch in data:
        x, y = _split(batch, key)
        inputs.append(x)
        if y is not None:
            labels.append(y)
        have += len(x)
        if have >= n:
            break
    if not inputs:
        raise ValueError("the data for the task's sample holds no batch")
    x = torch.cat(inputs)[:n]
    y = torch.cat(labels)[:n] if len(labels) == len(inputs) else None
    return x, y


def _split(batch: Any, key: str | None) -> tuple[Tensor, Tensor | None]:
    if isinstance(batch, Tensor):
        return batch, None
    if isinstance(batch, dict):
        if key is None or key not in batch:
            raise ValueError(f"batches are dicts ({', '.join(map(str, batch))}): name the inputs' entry "
                             "(sample_key=...)")
        return batch[key], batch.get("labels")
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Tensor):
        return batch[0], batch[1] if len(batch) > 1 and isinstance(batch[1], Tensor) else None
    raise ValueError(f"cannot find the inputs in a batch of type {type(batch).__name__}: give a tensor, "
                     "(inputs, labels) pairs or dicts")
