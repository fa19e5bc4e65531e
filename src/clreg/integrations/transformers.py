"""clreg in the Hugging Face Trainer: a TrainerCallback that regularises a transformer across tasks.

    reg = ContinualRegularizer("ewc", c=1000, heads=("classifier",))
    for task in tasks:                               # one Trainer per task: a fresh optimiser each time
        Trainer(model, args, train_dataset=task.train, callbacks=[reg]).train()
    # each train() ends with the task's importance measured on a sample of its training data

The callback does what the bare loop's `Regularizer` calls do, at the Trainer's events. Before every optimiser
step it adds ∇R to `.grad`; the Trainer has clipped the task gradient to `max_grad_norm` by then, so the
penalty's gradient is not clipped (the bare loop's equivalent: clip, then `reg.step(optimizer)`). After the
step it feeds the trajectory statistic (SI, SOS, ...), or discards the step where the fp16 scaler skipped it.
At the end of training it ends the task. Its state goes into every checkpoint the Trainer saves
(`clreg_regularizer.pt` beside the model's weights) and comes back when training resumes from one.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import Tensor, nn

try:
    from transformers import TrainerCallback
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError("clreg.integrations.transformers needs transformers: pip install 'clreg[transformers]'") from err

from clreg.importance.inputs import to_device
from clreg.regularizer import Regularizer
from clreg.integrations import glue
from clreg.integrations.samples import Cycle

STATE_FILE = "clreg_regularizer.pt"  # in each checkpoint folder the Trainer writes
LossFn = Callable[[nn.Module, Mapping[str, Tensor]], Tensor]  # (model, batch) -> the task loss of that batch


def default_task_loss(model: nn.Module, batch: Mapping[str, Tensor]) -> Tensor:
    """The loss a Hugging Face model computes for a batch that holds its labels."""
    return model(**batch).loss


def default_forward(model: nn.Module, inputs: Mapping[str, Tensor]) -> Tensor:
    """The logits of a Hugging Face classifier for keyword inputs."""
    return model(**inputs).logits


def next_token_logits(model: nn.Module, inputs: Mapping[str, Tensor]) -> Tensor:
    """A causal language model's logits for the tokens after each position but the last: (n, T − 1, vocabulary)."""
    return model(**inputs).logits[:, :-1]


class ContinualRegularizer(TrainerCallback):
    """The penalty and importance measure of `clreg.Regularizer(model, method, c, ...)` for a Trainer's model.

    - `heads` (e.g. `("classifier",)`), `shared`, and the measure's options (`xi=`, `alpha=`, ...) as for
      `Regularizer`.
    - `samples`: inputs drawn for post-task measures (EWC, MAS, ...) at the end of each `train()`, from
      `sample_data` if given (a dataloader or iterable of tokenised batches), else from the training
      dataloader. Of each batch, every entry but the labels is an input; shorter sequences are right-padded
      with the model's pad token. `end_task_on_train_end=False` leaves ending tasks to you: `end_task(data)`.
    - `task_loss(model, batch)`: the task loss of a batch (default: the model's own `.loss`), for measures that
      take extra gradients: on an independent minibatch each step (siu, sib, sos with α ≠ 0; drawn from the
      training dataloader), and g_t with dropout off where the model has dropout (SI family; on the
      micro-batches of the step, which the callback sees as they enter the model).
    - `forward(model, inputs)`: inputs to logits for post-task measures (default: the model's `.logits`).
    - `causal_lm=True`, for a causal language model: post-task measures score each sequence's next-token
      predictions, logits `[:, :-1]` against labels `[:, 1:]` (the shift the model's own `.loss` makes inside;
      label −100, the collator's padding, is not scored). A sample is a sequence (docs/algorithms.md §3).
    """

    def __init__(self, method: str = "si", c: float = 1.0, *, heads: Iterable[str] = (), shared=None,
                 samples: int = 1000, sample_data: Any = None, end_task_on_train_end: bool = True,
                 task_loss: LossFn = default_task_loss, forward: Callable[[nn.Module, Any], Tensor] | None = None,
                 causal_lm: bool = False, **options):
        self.method, self.c, self.heads, self.shared, self.options = method, c, tuple(heads), shared, options
        self.samples, self.sample_data, self.end_task_on_train_end = samples, sample_data, end_task_on_train_end
        self.task_loss, self.causal_lm = task_loss, causal_lm
        self.forward = forward or (next_token_logits if causal_lm else default_forward)
        self.reg: Regularizer | None = None
        self.tasks_done = 0
        self._pending: dict | None = None  # a checkpoint's state, applied when training (re)starts
        self._window: list[dict] = []  # the micro-batches of the coming optimiser step
        self._hook = None
        self._independent = Cycle()  # B'_t, from the training dataloader

    # -- set-up -------------------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, model=None, train_dataloader=None, **kwargs):  # noqa: D102
        if self.reg is None:
            self.reg = Regularizer(model, self.method, self.c, heads=self.heads, shared=self.shared, **self.options)
        elif self.reg.model is not model:
            raise ValueError("this ContinualRegularizer belongs to another model: one callback per model")
        if self.reg.split:
            raise ValueError("sos with split=True takes g and g' from the two halves of each batch's loss, which the "
                             "Trainer's training_step does not give apart: use split=False")
        if self._pending is None and state.global_step > 0:  # resumed from a checkpoint in output_dir
            self.load(os.path.join(args.output_dir, f"checkpoint-{state.global_step}"))
        if self._pending is not None:  # here: the Trainer has put the checkpoint's weights into the model
            self.tasks_done = glue.restore(self.reg, self._pending)
            self._pending = None
        self._independent.reset()
        self._window = []
        if self._hook is None:  # see the micro-batches that enter the model in training
            self._hook = model.register_forward_pre_hook(self._see_batch, with_kwargs=True)

    def on_train_end(self, args, state, control, train_dataloader=None, **kwargs):  # noqa: D102
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if self.end_task_on_train_end:
            self.end_task(self.sample_data if self.sample_data is not None else train_dataloader)

    def _see_batch(self, module, args, kwargs) -> None:
        if module.training and glue.needs_task_gradient(self.reg, module) and not args:
            self._window.append(dict(kwargs))

    # -- every step ---------------------------------------------------------------------------------
    def on_step_begin(self, args, state, control, **kwargs):  # noqa: D102
        self._window = []

    def on_pre_optimizer_step(self, args, state, control, model=None, optimizer=None, train_dataloader=None,
                              **kwargs):  # noqa: D102
        _unscale(optimizer)  # where clipping did not unscale the fp16 gradients yet
        self.reg.optimizer = optimizer  # the task's optimiser: squisher reads its exp_avg_sq at the task's end
        if glue.needs_task_gradient(self.reg, model) and not self._window:
            raise ValueError("the model has dropout, so SI-family measures take g_t with it off, on the step's "
                             "batches; none entered the model as keyword inputs (model(**batch))")
        glue.prepare_step(self.reg, model, self.task_loss, self._window,
                          lambda: to_device(self._next_independent(train_dataloader), args.device))

    def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):  # noqa: D102
        glue.finish_step(self.reg, not getattr(optimizer, "step_was_skipped", False))  # accelerate's fp16 scaler
        self._window = []

    def _next_independent(self, dataloader) -> dict:
        """B'_t: the next batch of the callback's own pass over the training dataloader."""
        if dataloader is None:
            raise ValueError(f"method {self.reg.measure.name!r} needs an independent minibatch each step, drawn "
                             "from the training dataloader, which the Trainer did not pass")
        return self._independent.next(dataloader)

    # -- task end -----------------------------------------------------------------------------------
    def end_task(self, data: Any = None) -> dict[str, Tensor] | None:
        """End the current task: measure ω (on the first `samples` inputs of `data` where the measure needs a
        sample), Ω ← Ω + ω, θ* ← θ. Returns ω by parameter name."""
        model = self.reg.model if self.reg is not None else None
        pad = {"input_ids": getattr(getattr(model, "config", None), "pad_token_id", None) or 0}
        omega = glue.finish_task(self.reg, data, self.samples, forward=lambda x: self.forward(model, x), pad=pad,
                                 labels=(lambda y: y[:, 1:]) if self.causal_lm else None)
        self.tasks_done += 1
        return omega

    # -- checkpoints --------------------------------------------------------------------------------
    def on_save(self, args, state, control, **kwargs):  # noqa: D102
        folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if self.reg is not None and os.path.isdir(folder) and args.should_save:
            torch.save(glue.state(self.reg, self.tasks_done), os.path.join(folder, STATE_FILE))

    def load(self, checkpoint: str) -> None:
        """Take the state saved in a Trainer checkpoint folder; it is restored when the next `train()` starts,
        once the Trainer has loaded the checkpoint's weights. A `train()` that resumes from a checkpoint in
        `output_dir` does this by itself; call it before `train(resume_from_checkpoint=...)` for one elsewhere."""
        path = os.path.join(checkpoint, STATE_FILE)
        if not os.path.isfile(path):
            raise ValueError(f"no clreg state in {checkpoint!r} (looked for {STATE_FILE}): resume from a checkpoint "
                             "this callback saved, or call callback.load(folder) with the folder that holds it")
        self._pending = torch.load(path, map_location="cpu", weights_only=True)


def _unscale(optimizer) -> None:
    """Unscale an fp16 GradScaler's gradients before ∇R is added (accelerate's optimizer wrapper keeps the
    scaler as `.scaler`; unscale_ may run once per step, so a second call, after clipping did it, is a no-op)."""
    scaler = getattr(optimizer, "scaler", None)
    if scaler is None or not scaler.is_enabled():
        return
    try:
        scaler.unscale_(optimizer.optimizer)
    except RuntimeError as err:
        if "unscale_() has already been called" not in str(err):
            raise
