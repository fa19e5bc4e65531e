"""Divergence: the first step whose training loss is NaN or infinite stops the run."""
from __future__ import annotations

import torch
from torch import Tensor


class Diverged(RuntimeError):
    """The training loss became NaN or infinite: the run stops (a sweep records it as diverged)."""

    def __init__(self, step: int, task: int, loss: float):
        super().__init__(f"diverged: the training loss became {loss} at step {step} (task {task + 1})")
        self.step, self.task, self.loss = step, task, loss


class DivergenceGuard:
    """Finds the first step whose training loss is NaN or infinite. Losses stay on the device and are
    checked every `every` steps and at task end (on the CPU, where a check costs nothing, every step), so
    a GPU never waits for the host; the error names the exact first bad step either way."""

    def __init__(self, device: torch.device, every: int | None = None):
        self.every = every or (1 if device.type == "cpu" else 50)
        self.losses: Tensor | None = None  # allocated at the first loss, with its dtype and device
        self.count = 0

    def record(self, loss: Tensor, step: int, task: int) -> None:
        """Keep step `step`'s loss (counted from 1); check when the buffer is full."""
        if self.losses is None:
            self.losses = loss.new_empty(self.every)
        self.losses[self.count] = loss.detach()
        self.count += 1
        if self.count == self.every:
            self.check(step, task)

    def check(self, step: int, task: int) -> None:
        """Raise Diverged for the first non-finite loss recorded up to step `step`, then start afresh."""
        if not self.count:
            return
        recorded, self.count = self.losses[:self.count], 0
        finite = torch.isfinite(recorded)
        if not bool(finite.all()):
            first = int((~finite).nonzero()[0, 0])
            raise Diverged(step - len(recorded) + 1 + first, task, float(recorded[first]))
