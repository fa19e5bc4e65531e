"""A sample's inputs as the per-sample engine sees them: one tensor, or a dict of tensors that share their first
(sample) dimension, as a Hugging Face model takes them (input_ids, attention_mask, ...)."""
from __future__ import annotations

from typing import Mapping, Union

import torch
from torch import Tensor

Inputs = Union[Tensor, Mapping[str, Tensor]]


def check_inputs(inputs: Inputs) -> int:
    """The number of samples in `inputs`; ValueError where it is neither a tensor nor a dict of tensors with one
    common first dimension."""
    if isinstance(inputs, Tensor):
        if inputs.dim() == 0:
            raise ValueError("a sample's inputs need a first (sample) dimension; got a 0-d tensor")
        return inputs.shape[0]
    if not isinstance(inputs, Mapping) or not inputs:
        raise ValueError(f"a sample's inputs must be a tensor or a non-empty dict of tensors, got {type(inputs).__name__}")
    sizes = {}
    for key, value in inputs.items():
        if not isinstance(value, Tensor) or value.dim() == 0:
            raise ValueError(f"the sample's entry {key!r} must be a tensor with a sample dimension, "
                             f"got {type(value).__name__}")
        sizes[key] = value.shape[0]
    if len(set(sizes.values())) > 1:
        raise ValueError(f"the sample's entries differ in their number of samples: {sizes}")
    return next(iter(sizes.values()))


def take(inputs: Inputs, start: int, stop: int | None = None) -> Inputs:
    """Samples start..stop of `inputs`."""
    if isinstance(inputs, Tensor):
        return inputs[start:stop]
    return {key: value[start:stop] for key, value in inputs.items()}


def to_device(inputs: Inputs, device: torch.device) -> Inputs:
    """`inputs` on `device`."""
    if isinstance(inputs, Tensor):
        return inputs.to(device)
    return {key: value.to(device) for key, value in inputs.items()}


def one(inputs: Inputs) -> Inputs:
    """A single sample (as vmap gives it, without the sample dimension) made a batch of one."""
    if isinstance(inputs, Tensor):
        return inputs[None]
    return {key: value[None] for key, value in inputs.items()}

