"""A task's sample for post-task measures, from what a framework user has at hand: a tensor, a dataset or a
dataloader of (inputs, labels) pairs or of dicts (a tokenised batch: input_ids, attention_mask, labels, ...);
and ending a regulariser's task on it."""
from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from clreg.importance.sensitivity import IGNORE_INDEX
from clreg.importance.inputs import Inputs
from clreg.regularizer import Regularizer

LABEL_KEYS = ("labels", "label", "label_ids")  # where dict batches keep their labels (Hugging Face's names)


def take_sample(data: Any, n: int, key: str | None = None, pad: Mapping[str, int] | None = None
                ) -> tuple[Inputs, Tensor | None]:
    """The first `n` inputs (and labels, where batches carry them) of `data`: a tensor of inputs, or an
    iterable of batches, each a tensor, an (inputs, labels, ...) tuple, or a dict. Of a dict, the inputs are
    its `key` entry if given, else every entry but the labels (a dict of keyword inputs); sequences of
    different lengths in different batches are right-padded to the longest, with `pad[entry]` (default 0).
    A shuffling dataloader gives a random sample."""
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
        have += len(y) if y is not None else (len(x) if isinstance(x, Tensor) else len(next(iter(x.values()))))
        if have >= n:
            break
    if not inputs:
        raise ValueError("the data for the task's sample holds no batch")
    y = _padded_cat(labels, IGNORE_INDEX)[:n] if len(labels) == len(inputs) else None  # padded tokens are not scored
    if isinstance(inputs[0], Tensor):
        return torch.cat(inputs)[:n], y
    return {entry: _padded_cat([x[entry] for x in inputs], (pad or {}).get(entry, 0))[:n] for entry in inputs[0]}, y


def end_task(reg: Regularizer, data: Any, samples: int, key: str | None = None,
             forward: Callable[[Inputs], Tensor] | None = None, pad: Mapping[str, int] | None = None,
             labels: Callable[[Tensor], Tensor] | None = None) -> dict[str, Tensor] | None:
    """End `reg`'s task: where its measure needs a sample, on the first `samples` inputs of `data`; `labels`
    maps the sample's labels to those the logits of `forward` are scored against (a causal LM's shift)."""
    if not reg.measure.needs_sample:
        return reg.end_task()
    if data is None:
        raise ValueError(f"method {reg.measure.name!r} measures importance on data: "
                         "give end_task a tensor of inputs or a dataloader")
    inputs, y = take_sample(data, samples, key, pad)
    return reg.end_task(inputs, y if y is None or labels is None else labels(y), forward=forward)


def _split(batch: Any, key: str | None) -> tuple[Inputs, Tensor | None]:
    if isinstance(batch, Tensor):
        return batch, None
    if isinstance(batch, Mapping):
        labels = next((batch[k] for k in LABEL_KEYS if isinstance(batch.get(k), Tensor)), None)
        if key is not None:
            if key not in batch:
                raise ValueError(f"sample_key {key!r} is not in the batches, whose entries are: {', '.join(map(str, batch))}")
            return batch[key], labels
        inputs = {k: v for k, v in batch.items() if k not in LABEL_KEYS and isinstance(v, Tensor)}
        if not inputs:
            raise ValueError(f"the batches' entries ({', '.join(map(str, batch))}) hold no input tensor")
        return inputs, labels
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Tensor):
        return batch[0], batch[1] if len(batch) > 1 and isinstance(batch[1], Tensor) else None
    raise ValueError(f"cannot find the inputs in a batch of type {type(batch).__name__}: give a tensor, "
                     "(inputs, labels) pairs or dicts")


def _padded_cat(parts: list[Tensor], value: int) -> Tensor:
    """Concatenate along the sample dimension, right-padding the second dimension to the longest part."""
    if parts[0].dim() < 2 or len({p.shape[1:] for p in parts}) == 1:
        return torch.cat(parts)
    if len({p.shape[2:] for p in parts}) > 1:
        raise ValueError(f"the sample's batches differ in more than their sequence length: {[tuple(p.shape) for p in parts]}")
    longest = max(p.shape[1] for p in parts)
    tail = (0, 0) * (parts[0].dim() - 2)
    return torch.cat([F.pad(p, tail + (0, longest - p.shape[1]), value=value) for p in parts])


class Cycle:
    """The batches of a callback's own pass over a dataloader (a shuffling loader gives an order independent of
    the training one), started again when it ends: the independent minibatches B'_t."""

    def __init__(self):
        self._batches = None

    def reset(self) -> None:
        """Start the next draw with a new pass (a new fit's dataloader)."""
        self._batches = None

    def next(self, dataloader) -> Any:
        for _ in range(2):
            if self._batches is None:
                self._batches = iter(dataloader)
            try:
                return next(self._batches)
            except StopIteration:
                self._batches = None
        raise ValueError("the training dataloader is empty: no independent minibatch to draw")
