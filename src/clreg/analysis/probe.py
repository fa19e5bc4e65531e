"""A Trainer whose every step can be observed: g_t and g'_t (dropout off, task loss only), the step Δ_t,
and, every k steps, the loss and gradient on the task's whole training set."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..models import MultiHead, task_forward
from ..train import Trainer


class Probe:
    """What an analysis records; every method is optional."""

    full_gradient_every = 0  # > 0: wants checkpoint() every this many steps (and at task start and end)

    def task_started(self, trainer: "ProbeTrainer", task: int) -> None:
        """Training of `task` starts at trainer.reg.params = θ_start."""

    def stepped(self, trainer: "ProbeTrainer", grads: list[Tensor], independent: list[Tensor], delta: list[Tensor]) -> None:
        """One optimiser step was taken: g_t, g'_t at θ_t and Δ_t = θ_{t+1} − θ_t, for `trained_parameters`
        (the shared ones first, then the task's head)."""

    def checkpoint(self, trainer: "ProbeTrainer", step: int, loss: float, full: list[Tensor], batch: list[Tensor] | None
                   ) -> None:
        """At θ_t, before step `step` of the task (and once after its last step, batch None): the training-set
        loss and gradient, and the minibatch gradient g_t of that step."""

    def task_ended(self, trainer: "ProbeTrainer", task: int) -> None:
        """`task` is trained and consolidated; the parameters are θ_end."""


def trained_parameters(trainer: Trainer, task: int) -> list[Tensor]:
    """What training on `task` moves: the shared parameters, then those of the task's head (if any)."""
    model = trainer.model
    head = list(model.heads[task].parameters()) if isinstance(model, MultiHead) else []
    return [*trainer.reg.params, *head]


def full_gradient(trainer: Trainer, task: int, chunk: int = 5000) -> tuple[float, list[Tensor]]:
    """Mean task loss and its gradient (for `trained_parameters`) over the task's training set, dropout off;
    the loss comes to the host once, at the end."""
    n, params = trainer.bench.train_size(task), trained_parameters(trainer, task)
    forward = task_forward(trainer.model, task)
    total = [torch.zeros_like(p) for p in params]
    losses: list[Tensor] = []
    for start in range(0, n, chunk):
        x, y = trainer.bench.batch(task, torch.arange(start, min(n, start + chunk), device=trainer.bench.device))

        def summed_loss(x=x, y=y):
            value = F.cross_entropy(forward(x), y, reduction="sum")
            losses.append(value.detach().double())
            return value
        torch._foreach_add_(total, trainer.reg.gradient(summed_loss, params))
    torch._foreach_div_(total, n)
    return float(sum(losses)) / n, total


class ProbeTrainer(Trainer):
    """Trains like Trainer and hands every step to `probes`; costs one extra pass per step for g_t and one for
    g'_t, plus a pass over the training set at each checkpoint."""

    def __init__(self, config, bench, probes: list[Probe], progress: bool = True):
        super().__init__(config, bench, progress)
        if self.reg.split:
            raise ValueError("analyses take g'_t from an independent minibatch: run them without sos split")
        self.probes = probes
        every = [p.full_gradient_every for p in probes if p.full_gradient_every > 0]
        self.every = min(every) if every else 0
        self.task = 0
        self.task_step = 0

    def wants_independent_batches(self) -> bool:  # noqa: D102
        return True

    def task_started(self, task: int) -> None:  # noqa: D102
        self.task, self.task_step = task, 0
        for probe in self.probes:
            probe.task_started(self, task)

    def task_ended(self, task: int) -> None:  # noqa: D102
        if self.every:
            self._checkpoint(None)
        for probe in self.probes:
            probe.task_ended(self, task)

    def step(self, optimizer, forward, x, y, independent) -> None:  # noqa: D102
        params = trained_parameters(self, self.task)
        grads = self.reg.gradient(lambda: F.cross_entropy(forward(x), y), params)
        xi, yi = independent
        other = self.reg.gradient(lambda: F.cross_entropy(forward(xi), yi), params)
        if self.every and self.task_step % self.every == 0:
            self._checkpoint(grads)
        before = [p.detach().clone() for p in params]
        super().step(optimizer, forward, x, y, independent)
        delta = torch._foreach_sub([p.detach() for p in params], before)
        for probe in self.probes:
            probe.stepped(self, grads, other, delta)
        self.task_step += 1

    def _checkpoint(self, batch: list[Tensor] | None) -> None:
        loss, full = full_gradient(self, self.task)
        for probe in self.probes:
            if probe.full_gradient_every:
                probe.checkpoint(self, self.task_step, loss, full, batch)
