"""Divergence: the first step whose task loss, penalty or parameters become NaN or infinite stops the run.

Each step is watched in the order its values arise: the task loss L(θ_t) and the penalty R(θ_t) before the
optimiser step, the parameters θ_{t+1} after it; the error names the first of them that was not finite.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

WATCHED = ("training loss", "penalty", "parameters")  # the columns of a step's record, in the order they arise


class Diverged(RuntimeError):
    """A step's task loss, penalty or parameters became NaN or infinite: the run stops (a sweep records it as
    diverged). `what` is one of WATCHED; `loss` the value that was not finite (None for the parameters)."""

    def __init__(self, step: int, task: int, what: str = "training loss", value: float | None = None):
        where = f"at step {step} (task {task + 1})"
        if what == "parameters":
            message = f"diverged: the parameters became non-finite {where}, after the optimiser step"
        else:
            message = f"diverged: the {what} became {value} {where}"
        super().__init__(message)
        self.step, self.task, self.what = step, task, what
        self.loss = None if what == "parameters" else value


@torch.no_grad()
def parameters_check(params: Sequence[Tensor]) -> Tensor:
    """0 if every parameter is finite, NaN otherwise (a 0-dim tensor on their device, no host wait): the sum
    of each tensor, times 0. (A tensor's sum also overflows when its |θ| average over 3e38 / size, which no
    forward pass survives.) One read of each parameter: small next to the step, which reads and writes it and
    its optimiser state (the guard's whole cost: perf/results/throughput_guard.json)."""
    return torch.stack([p.detach().sum() for p in params]).mul_(0).sum()


class DivergenceGuard:
    """Finds the first step whose task loss, penalty or parameters are NaN or infinite. On the CPU each value is
    checked at once, as a plain number (the loss and the penalty before the optimiser step); elsewhere the
    values stay on the device and are checked every `every` steps and at task end, so that a GPU never waits
    for the host. The error names the exact first bad step and value either way."""

    def __init__(self, device: torch.device, every: int | None = None):
        self.every = every or (1 if device.type == "cpu" else 50)
        self.values: Tensor | None = None  # [every, 3]: per step, WATCHED (every > 1); allocated at the first step
        self.count = 0  # steps recorded since the last check
        self.first = (0, 0)  # (step, task) of the first of them

    def before_step(self, loss: Tensor, penalty: Tensor | None, step: int, task: int) -> None:
        """Keep (or check) step `step`'s (counted from 1) task loss and penalty (None: not in force)."""
        if self.count == 0:
            self.first = (step, task)
        if self.every == 1:
            self._check([[float(loss), 0.0 if penalty is None else float(penalty), 0.0]])
            return
        if self.values is None:
            self.values = torch.zeros((self.every, len(WATCHED)), dtype=torch.float32, device=loss.device)
        row = self.values[self.count]
        row[0] = loss.detach()
        if penalty is not None:
            row[1] = penalty.detach()

    def after_step(self, params: Sequence[Tensor] | Tensor) -> None:
        """Keep (or check) the parameters after the step: the parameters, or `parameters_check` of them; check
        when the buffer is full."""
        check = params if isinstance(params, Tensor) else parameters_check(params)
        if self.every == 1:
            self._check([[0.0, 0.0, float(check)]])
            return
        self.values[self.count, 2] = check
        self.count += 1
        if self.count == self.every:
            self.check()

    def check(self) -> None:
        """Raise Diverged for the first non-finite value recorded since the last check, then start afresh."""
        if not self.count:
            return
        recorded, self.count = self.values[:self.count], 0
        if not bool(torch.isfinite(recorded).all()):
            rows = recorded.tolist()
            self.values.zero_()  # (a task search goes on after a diverged attempt)
            self._check(rows)
        self.values.zero_()

    def _check(self, rows: list[list[float]]) -> None:
        """Raise Diverged for the first non-finite value of `rows` (the steps from `first` on), row by row: the
        order the values arose."""
        for row, values in enumerate(rows):
            for what, value in zip(WATCHED, values):
                if not math.isfinite(value):
                    self.count = 0
                    step, task = self.first
                    raise Diverged(step + row, task, what, value)
