"""Per-task proxy losses (docs/algorithms.md §4): the quadratic estimate of how much each earlier task's loss has
risen, logged beside the measured rise on a fixed sample of that task's evaluation data."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from clreg.train.callbacks import Callback
from clreg.models.build import task_forward
from clreg.regularizer import Regularizer


class ProxyLog(Callback):
    """Records, every `every` steps, per earlier task t: proxy_t(θ) = Σ_i Λ_t,i (θ_i − θ̃_t,i)², its rise
    since task t ended, and the measured rise L_t(θ) − L_t(θ*_t) of task t's mean cross-entropy."""

    def __init__(self, samples: int, every: int):
        if every < 1:
            raise ValueError(f"the proxy log needs every >= 1, got {every}")
        self.samples, self.every = samples, every
        self.model: nn.Module | None = None
        self.reg: Regularizer | None = None
        self.bench = None
        self.terms: list[int] = []  # penalty term index -> task id
        self.data: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.loss_at_end: list[float] = []
        self.proxy_at_end: list[float] = []
        self.records: list[dict] = []

    @torch.no_grad()
    def loss(self, task: int) -> float:
        """Mean cross-entropy of the model on the fixed evaluation sample of `task` (eval mode)."""
        if task not in self.data:
            self.data[task] = next(self.bench.evaluation_batches(task, batch_size=self.samples))
        x, y = self.data[task]
        was_training = self.model.training
        self.model.eval()
        value = float(F.cross_entropy(task_forward(self.model, task)(x), y))
        self.model.train(was_training)
        return value

    def on_run_start(self, trainer) -> None:  # noqa: D102
        self.model, self.reg, self.bench = trainer.model, trainer.reg, trainer.bench

    def on_step(self, trainer, step) -> None:  # noqa: D102
        if step.step % self.every == 0:
            self.log(step.step, step.task)

    def on_task_end(self, trainer, task: int) -> None:  # noqa: D102
        if self.reg.measure.regularizes:
            self.task_end(task)

    def task_end(self, task: int) -> None:
        """After task `task` was consolidated: its reference loss and proxy at θ*_t."""
        self.terms.append(task)
        self.loss_at_end.append(self.loss(task))
        self.proxy_at_end.append(self.reg.proxy_losses()[-1])

    def log(self, step: int, training: int) -> None:
        """One record while training task `training`, at global step `step`."""
        proxies = self.reg.proxy_losses()
        entries = []
        for term, task in enumerate(self.terms):
            if proxies[term] is None:
                continue
            entries.append({"task": task, "proxy": proxies[term],
                            "proxy_increase": proxies[term] - self.proxy_at_end[term],
                            "loss_increase": self.loss(task) - self.loss_at_end[term]})
        if entries:
            self.records.append({"step": step, "training": training, "tasks": entries})

    def state_dict(self) -> dict:
        """The records so far, as plain data (the evaluation samples are drawn again)."""
        return {"terms": self.terms, "loss_at_end": self.loss_at_end, "proxy_at_end": self.proxy_at_end,
                "records": self.records}

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict` returned."""
        self.terms, self.loss_at_end = list(state["terms"]), list(state["loss_at_end"])
        self.proxy_at_end, self.records = list(state["proxy_at_end"]), list(state["records"])

    def summary(self) -> dict:
        """The series and the Pearson correlation of proxy rise with measured rise over all records."""
        pairs = np.array([(e["proxy_increase"], e["loss_increase"]) for r in self.records for e in r["tasks"]])
        correlation = float(np.corrcoef(pairs.T)[0, 1]) if len(pairs) > 2 else None
        return {"records": self.records, "correlation_proxy_vs_loss_increase": correlation,
                "samples_per_task": self.samples}
