"""clreg in PyTorch Lightning: a Callback that regularises a LightningModule across tasks.

    reg = ContinualRegularizer("sos", c=1.0, heads=("heads",))
    for task_loader in tasks:                       # one fit per task: a fresh optimiser each time
        L.Trainer(max_epochs=5, callbacks=[reg]).fit(module, task_loader)
    # each fit ends with the task's importance measured on a sample of its training data

The callback does what the bare loop's `Regularizer` calls do, at Lightning's hooks: before every optimiser
step (after gradient accumulation and mixed-precision unscaling, before clipping) it adds ∇R to `.grad`;
after the step it feeds the trajectory statistic (SI, SOS, ...), or discards the step where the AMP scaler
skipped it; at the end of training it ends the task. Its state (Ω, anchors, the statistics of the task so
far) travels in Lightning's checkpoints, so a fit resumed from one continues identically.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
from torch import Tensor

try:
    from lightning.pytorch import Callback
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError("clreg.integrations.lightning needs PyTorch Lightning: pip install 'clreg[lightning]'") from err

from clreg.regularizer import Regularizer
from clreg.integrations import glue
from clreg.integrations.samples import Cycle

LossFn = Callable[[Any, Any], Tensor]  # (module, batch) -> the task loss of that batch


class ContinualRegularizer(Callback):
    """The penalty and importance measure of `clreg.Regularizer(module, method, c, ...)` for a LightningModule.

    - `heads`, `shared`, and the measure's options (`xi=`, `alpha=`, ...) as for `Regularizer`.
    - `samples`: inputs drawn for post-task measures (EWC, MAS, ...) at the end of each fit, from
      `sample_data` if given (a tensor or an iterable of batches), else from the fit's training dataloader.
      `end_task_on_train_end=False` leaves ending tasks to you: call `end_task(data)`.
    - `task_loss(module, batch)`: the task loss of a batch. Needed where a measure takes extra gradients:
      an independent minibatch B'_t each step (siu, sib, sos with α ≠ 0; drawn from the training
      dataloader), or g_t with dropout off when the module has dropout (SI family).
    - `forward(module, x)`: inputs to logits for post-task measures (default `module(x)`; `module(**x)` where
      the batches are dicts, whose entries other than the labels are the inputs unless `sample_key` names one).
    """

    def __init__(self, method: str = "si", c: float = 1.0, *, heads: Iterable[str] = (), shared=None,
                 samples: int = 1000, sample_data: Any = None, sample_key: str | None = None,
                 end_task_on_train_end: bool = True, task_loss: LossFn | None = None,
                 forward: Callable[[Any, Tensor], Tensor] | None = None, **options):
        self.method, self.c, self.heads, self.shared, self.options = method, c, tuple(heads), shared, options
        self.samples, self.sample_data, self.sample_key = samples, sample_data, sample_key
        self.end_task_on_train_end, self.task_loss, self.forward = end_task_on_train_end, task_loss, forward
        self.reg: Regularizer | None = None
        self.tasks_done = 0
        self._pending: dict | None = None  # a checkpoint's state, loaded before the regulariser exists
        self._window: list = []  # the micro-batches of the coming optimiser step (for g_t with dropout off)
        self._stepping: bool | None = None  # set by on_before_optimizer_step: will the step be taken?
        self._independent = Cycle()  # B'_t, from the training dataloader

    # -- set-up -------------------------------------------------------------------------------------
    def on_fit_start(self, trainer, pl_module) -> None:  # noqa: D102
        if self.reg is None:  # here, not at setup: the module is on its device now
            self.reg = Regularizer(pl_module, self.method, self.c, heads=self.heads, shared=self.shared,
                                   **self.options)
        if self._pending is not None:
            self._load(self._pending)
            self._pending = None
        if self.reg.split:
            raise ValueError("sos with split=True takes g and g' from the two halves of each batch's loss, which "
                             "Lightning's training_step does not give apart: use split=False with task_loss=...")
        if self.task_loss is None and (self.reg.needs_independent_batch or glue.needs_task_gradient(self.reg, pl_module)):
            why = "an independent minibatch each step" if self.reg.needs_independent_batch else \
                "g_t with dropout off (the module has dropout)"
            raise ValueError(f"method {self.reg.measure.name!r} needs {why}: give "
                             "ContinualRegularizer(task_loss=lambda module, batch: ...)")
        self._independent.reset()

    # -- every step ---------------------------------------------------------------------------------
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: D102
        if self.task_loss is not None and glue.needs_task_gradient(self.reg, pl_module):
            self._window.append(batch)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:  # noqa: D102
        self._stepping = _finite_gradients(optimizer) if getattr(trainer.precision_plugin, "scaler", None) else True
        self.reg.optimizer = optimizer  # the task's optimiser: squisher reads its exp_avg_sq at the task's end
        glue.prepare_step(self.reg, pl_module, self.task_loss, self._window, lambda: self._next_independent(trainer))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: D102
        if self._stepping is None:  # an accumulation micro-batch: no optimiser step yet
            return
        glue.finish_step(self.reg, self._stepping)
        self._stepping, self._window = None, []

    def _next_independent(self, trainer):
        """B'_t: the next batch of the callback's own pass over the training dataloader."""
        return trainer.strategy.batch_to_device(self._independent.next(trainer.train_dataloader))

    # -- task end -----------------------------------------------------------------------------------
    def on_train_end(self, trainer, pl_module) -> None:  # noqa: D102
        if self.end_task_on_train_end:  # (not at on_fit_end: the module has left its device by then)
            self.end_task(self.sample_data if self.sample_data is not None else trainer.train_dataloader)

    def end_task(self, data: Any = None) -> dict[str, Tensor] | None:
        """End the current task: measure ω (on the first `samples` inputs of `data` where the measure needs a
        sample), Ω ← Ω + ω, θ* ← θ. Returns ω by parameter name."""
        module = self.reg.model if self.reg is not None else None
        forward = (lambda x: self.forward(module, x)) if self.forward is not None else None
        omega = glue.finish_task(self.reg, data, self.samples, self.sample_key, forward)
        self.tasks_done += 1
        return omega

    # -- checkpoints --------------------------------------------------------------------------------
    def state_dict(self) -> dict:  # noqa: D102
        if self.reg is None:
            return dict(self._pending or {})
        return glue.state(self.reg, self.tasks_done)

    def load_state_dict(self, state: dict) -> None:  # noqa: D102
        if not state:
            return
        if self.reg is None:
            self._pending = state  # Lightning restores callbacks before the module is on its device
        else:
            self._load(state)

    def _load(self, state: dict) -> None:
        self.tasks_done = glue.restore(self.reg, state)


@torch.no_grad()
def _finite_gradients(optimizer: torch.optim.Optimizer) -> bool:
    """True if every gradient the optimiser holds is finite: a float16 AMP scaler skips the step otherwise."""
    grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    return bool(torch.stack([torch.isfinite(g).all() for g in grads]).all()) if grads else True
