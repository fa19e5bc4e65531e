"""The interface every importance measure implements, and the data a post-task measure looks at."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

from clreg.core.options import Option
from clreg.importance.inputs import Inputs


@dataclass
class TaskSample:
    """What a post-task measure needs: the model, how to get logits, and n inputs (with labels)."""

    model: nn.Module
    inputs: Inputs  # a tensor, or a dict of tensors with a common sample dimension
    labels: Tensor | None = None
    forward: Callable[[Inputs], Tensor] | None = None  # default: model(inputs), model(**inputs) for a dict
    memory_budget: int | None = None  # bytes the per-sample engine may use (None: by device, clreg.core.device)
    group: object = None  # the torch.distributed process group whose ranks each hold a share of the sample


class ImportanceMeasure:
    """Base class: measures ω^(k) ≥ 0 for the shared parameters during or after task k.

    Trajectory measures (SI, SOS, ...; `trajectory.TrajectoryMeasure`) declare a per-step statistic that
    the Regularizer accumulates after every optimiser step; sensitivity measures (Fisher, MAS, ...) look at
    a data sample at task end. Both return ω from `task_importance`.
    """

    name: str = ""
    description: str = ""
    trajectory: bool = False  # accumulates a StepStatistic after every optimiser step
    needs_independent_gradient: bool = False  # the statistic reads g'_t on an independent batch
    uses_task_gradient: bool = False  # the statistic reads g_t
    needs_sample: bool = False  # task_importance needs a TaskSample
    needs_optimizer: bool = False  # task_importance reads the task's optimiser state (set as `optimizer` before it)
    cumulative: bool = True  # Ω ← Ω + ω (False: Ω ← ω, as for l2-const)
    regularizes: bool = True  # False only for fine-tuning (no penalty at all)
    settings: tuple[Option, ...] = ()  # the run settings this measure takes (config, CLI, `clreg methods`)
    from_run: tuple[str, ...] = ()  # other run settings passed to the constructor (batch_size, seed)

    def begin_task(self, params: list[Tensor]) -> None:
        """Reset per-task state; `params` are the shared parameters at the start of the task."""

    def task_importance(self, params: list[Tensor], sample: TaskSample | None) -> list[Tensor]:
        """ω for the task just finished, one tensor per shared parameter."""
        raise NotImplementedError

    def options(self) -> dict:
        """The measure's options, JSON-serialisable, for run records."""
        return {}

    def state_dict(self) -> dict:
        """State that outlives a task (random generators), for checkpoints taken between tasks; per-task
        state is rebuilt by `begin_task`."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict` returned."""

    def task_state_dict(self) -> dict:
        """The statistics of the task so far (after `begin_task`), for checkpoints taken within a task."""
        return {}

    def load_task_state_dict(self, state: dict) -> None:
        """Restore what `task_state_dict` returned (after `begin_task`)."""


def zeros_like_all(params: list[Tensor]) -> list[Tensor]:
    """Contiguous zero tensors shaped like `params`."""
    return [torch.zeros_like(p, memory_format=torch.contiguous_format) for p in params]


def clone_all(params: list[Tensor]) -> list[Tensor]:
    """Detached contiguous copies of `params`."""
    return [p.detach().clone(memory_format=torch.contiguous_format) for p in params]
