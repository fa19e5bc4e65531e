"""A Trainer callback that observes every step: g_t and g'_t (dropout off, task loss only), the step Δ_t,
and, every k steps, the loss and gradient on the task's whole training set."""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import Tensor

from clreg.train.callbacks import Batch, Callback, Step
from clreg.train.checkpoint import CheckpointError
from clreg.models.build import MultiHead, task_forward
from clreg.train.loop import Trainer


class Probe:
    """What an analysis records; every method is optional."""

    full_gradient_every = 0  # > 0: wants checkpoint() every this many steps (and at task start and end)

    def task_started(self, trainer: "Trainer", task: int) -> None:
        """Training of `task` starts at trainer.reg.params = θ_start."""

    def stepped(self, trainer: "Trainer", grads: list[Tensor], independent: list[Tensor], delta: list[Tensor]) -> None:
        """One optimiser step was taken: g_t, g'_t at θ_t and Δ_t = θ_{t+1} − θ_t, for `trained_parameters`
        (the shared ones first, then the task's head)."""

    def checkpoint(self, trainer: "Trainer", step: int, loss: float, full: list[Tensor], batch: list[Tensor] | None
                   ) -> None:
        """At θ_t, before step `step` of the task (and once after its last step, batch None): the training-set
        loss and gradient, and the minibatch gradient g_t of that step."""

    def task_ended(self, trainer: "Trainer", task: int) -> None:
        """`task` is trained and consolidated; the parameters are θ_end."""

    def state_dict(self) -> dict:
        """The records of the tasks ended so far (plain data and tensors), for a resumed run."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore `state_dict`."""

    def load_records(self, data: dict) -> None:
        """Take the records of the tasks measured in an earlier part of this analysis, from its JSON `data`
        (the tasks of this run come after them)."""
        raise NotImplementedError(f"{type(self).__name__} cannot extend earlier records")


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


class Probes(Callback):
    """Hands every step of a Trainer run to `probes`: g_t and g'_t (dropout off, task loss only) at θ_t,
    Δ_t after the step, and every k steps the training-set loss and gradient. Costs one extra pass per step
    for g'_t (and one for g_t where the training pass is not g_t itself: active dropout, bf16), plus a pass
    over the training set at each checkpoint. Tasks before `first_task` are trained without probes (their
    records come from elsewhere: see `analyze_together(extend=True)`); the run's trajectory is the same."""

    needs_independent_batch = True

    def __init__(self, probes: list[Probe], first_task: int = 0):
        self.probes, self.first_task = probes, first_task
        every = [p.full_gradient_every for p in probes if p.full_gradient_every > 0]
        self.every = min(every) if every else 0
        self.task = self.task_step = 0
        self.grads = self.other = self.before = None
        self.reuse = False
        self.started, self.earlier_seconds = time.perf_counter(), 0.0

    def elapsed(self) -> float:
        """Wall seconds of the run, those before a resume included."""
        return self.earlier_seconds + time.perf_counter() - self.started

    def state_dict(self) -> dict:  # noqa: D102
        return {"elapsed": self.elapsed(), "first_task": self.first_task,
                "probes": [type(probe).__name__ for probe in self.probes],
                "records": [probe.state_dict() for probe in self.probes]}

    def load_state_dict(self, state: dict) -> None:  # noqa: D102
        ours = [type(probe).__name__ for probe in self.probes]
        if state["probes"] != ours:
            raise CheckpointError(f"the checkpoint holds the records of {', '.join(state['probes'])}, this run "
                                  f"has {', '.join(ours)}: resume with the same analyses")
        self.started, self.earlier_seconds = time.perf_counter(), state["elapsed"]
        self.first_task = state.get("first_task", 0)  # older checkpoints lack it: they recorded every task
        for probe, saved in zip(self.probes, state["records"]):
            probe.load_state_dict(saved)

    def on_run_start(self, trainer: Trainer) -> None:  # noqa: D102
        self.started = time.perf_counter()
        if trainer.reg.split:
            raise ValueError("analyses take g'_t from an independent minibatch: run them without sos split")
        # the training pass is g_t itself (task loss, dropout off, float32): read it instead of a pass of our own
        self.reuse = not trainer.dropout and trainer.config.precision != "bf16"

    def recording(self) -> bool:
        """True while the current task is one this run records."""
        return self.task >= self.first_task

    def on_task_start(self, trainer: Trainer, task: int, steps: int) -> None:  # noqa: D102
        self.task, self.task_step = task, 0
        if self.recording():
            for probe in self.probes:
                probe.task_started(trainer, task)

    def on_before_step(self, trainer: Trainer, batch: Batch) -> None:  # noqa: D102
        self.task_step = batch.task_step
        if not self.recording():
            return
        params = trained_parameters(trainer, batch.task)
        if not self.reuse:
            self.grads = trainer.reg.gradient(lambda: F.cross_entropy(batch.forward(batch.x), batch.y), params)
        xi, yi = batch.independent
        self.other = trainer.reg.gradient(lambda: F.cross_entropy(batch.forward(xi), yi), params)

    def on_after_backward(self, trainer: Trainer) -> None:  # noqa: D102
        if not self.recording():
            return
        params = trained_parameters(trainer, self.task)
        if self.reuse:
            self.grads = [torch.zeros_like(p) if p.grad is None else p.grad.detach().clone() for p in params]
        if self.every and self.task_step % self.every == 0:
            self._checkpoint(trainer, self.grads)
        self.before = [p.detach().clone() for p in params]

    def on_step(self, trainer: Trainer, step: Step) -> None:  # noqa: D102
        self.task_step = step.task_step  # steps taken: the end-of-task checkpoint's step
        if not self.recording():
            return
        params = trained_parameters(trainer, step.task)
        delta = torch._foreach_sub([p.detach() for p in params], self.before)
        for probe in self.probes:
            probe.stepped(trainer, self.grads, self.other, delta)

    def on_task_end(self, trainer: Trainer, task: int) -> None:  # noqa: D102
        if not self.recording():
            return
        if self.every:
            self._checkpoint(trainer, None)
        for probe in self.probes:
            probe.task_ended(trainer, task)

    def _checkpoint(self, trainer: Trainer, batch: list[Tensor] | None) -> None:
        loss, full = full_gradient(trainer, self.task)
        for probe in self.probes:
            if probe.full_gradient_every:
                probe.checkpoint(trainer, self.task_step, loss, full, batch)
