"""What a training run tells the code watching it: the callback protocol of `clreg.train.loop.Trainer`.

A callback overrides the events it wants; every method is optional. Order within one task:
on_run_start, then per task: on_task_start → (on_before_step → on_after_backward → on_step) × steps → on_train_end
→ on_task_end (after consolidation) → on_evaluation. A callback may end a task's steps early by setting `trainer.stop_task = True`.
Values stay tensors on the training device: a callback that turns them into numbers decides how often
the host waits for the device.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from torch import Tensor

if TYPE_CHECKING:
    from clreg.train.loop import Trainer


@dataclass
class Batch:
    """The minibatch of the step about to be taken, at θ_t."""

    task: int
    task_step: int  # steps of this task already taken
    x: Tensor
    y: Tensor
    independent: tuple[Tensor, Tensor] | None  # B'_t where the measure or a callback wants one
    forward: Callable[[Tensor], Tensor]  # inputs → logits of the task's head


@dataclass
class Step:
    """One optimiser step, just taken."""

    step: int  # counted over the run, from 1
    task: int
    task_step: int  # counted within the task, from 1
    loss: Tensor  # the task loss of the step's minibatch at θ_t (0-dim, on the device)
    penalty: Tensor | None  # R(θ_t), where a callback asked for it (`wants_penalty`), else None
    lr: float  # the learning rate the step used


class Callback:
    """Base class: every event is a no-op."""

    needs_independent_batch = False  # True: every Batch carries an independent minibatch B'_t

    def on_run_start(self, trainer: "Trainer") -> None:
        """The trainer is built (model, regulariser, benchmark on its device); no step taken yet. A
        callback that cannot work with this run raises ValueError here."""

    def on_task_start(self, trainer: "Trainer", task: int, steps: int) -> None:
        """Training of `task` starts (after any re-initialisation); it will take `steps` steps."""

    def on_before_step(self, trainer: "Trainer", batch: Batch) -> None:
        """The step on `batch` is about to be taken."""

    def on_after_backward(self, trainer: "Trainer") -> None:
        """The step's backward is done and the optimiser step comes next: each parameter's `.grad` holds the
        gradient of the task loss on the step's minibatch (dropout as in training, averaged across processes),
        without the penalty's (except under sos `split`, whose backward adds it). Read it; do not change it."""

    def wants_penalty(self, step: int) -> bool:
        """True to receive R(θ_t) with step `step` (counted from 1); evaluating it costs a pass over the
        parameters, so ask only on the steps you record."""
        return False

    def on_step(self, trainer: "Trainer", step: Step) -> None:
        """An optimiser step was taken."""

    def on_train_end(self, trainer: "Trainer", task: int) -> None:
        """The steps of `task` are done (all of them, or fewer if a callback set trainer.stop_task); its
        importance is measured next."""

    def on_task_end(self, trainer: "Trainer", task: int) -> None:
        """`task` is trained and consolidated (its importance measured)."""

    def on_evaluation(self, trainer: "Trainer", task: int, accuracy: list[float]) -> None:
        """After training `task`: the accuracy on every task of the sequence."""

    def state_dict(self) -> dict:
        """What a resumed run needs (plain data and tensors), saved in checkpoints between tasks."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore `state_dict`."""


class RunningLoss:
    """The mean of step losses since the last read, summed on the device (one in-place add per step; the
    host waits only when `pop` reads it)."""

    def __init__(self):
        self.total: Tensor | None = None
        self.count = 0

    def add(self, loss: Tensor) -> None:
        """One step's loss."""
        if self.total is None:
            self.total = loss.float().clone()
        else:
            self.total.add_(loss)
        self.count += 1

    def pop(self) -> float:
        """The mean since the last pop, and start afresh."""
        mean = float(self.total) / self.count
        self.total, self.count = None, 0
        return mean
