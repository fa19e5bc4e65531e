"""The Squisher (Li, Dangel, Tam and Raffel, ICML 2025): Adam's own second moment of the training gradient, read at a
task's end as the task's importance, at no cost (docs/algorithms.md §3, "Squisher")."""
from __future__ import annotations

import torch
from torch import Tensor

from clreg.core.options import Option
from clreg.importance.base import ImportanceMeasure, TaskSample

MISSING = ("squisher needs an Adam/AdamW optimiser's exp_avg_sq: pass optimizer= to end_task or use "
           "reg.step(optimizer)")


class Squisher(ImportanceMeasure):
    """ω = v / (1 − β₂ᵗ) (or v), v = the optimiser's `exp_avg_sq` of each parameter at the task's end, t its step
    count, β₂ its group's second beta. The Regularizer hands the optimiser over (`needs_optimizer`): the one given
    to `end_task(optimizer=...)`, else the one `step(optimizer)` last stepped."""

    name = "squisher"
    description = "Squisher: Adam's exp_avg_sq at task end (a running mean of the squared training gradient)"
    needs_optimizer = True
    settings = (Option("squisher_bias_correction", bool, True, "Squisher: divide Adam's exp_avg_sq by 1 - beta2^t",
                       argument="bias_correction", key_when_default=False),)

    def __init__(self, bias_correction: bool = True):
        self.bias_correction = bias_correction
        self.optimizer: torch.optim.Optimizer | None = None  # set by the Regularizer before task_importance

    def options(self) -> dict:  # noqa: D102
        return {"bias_correction": self.bias_correction}

    def begin_task(self, params: list[Tensor]) -> None:  # noqa: D102
        self.optimizer = None

    @torch.no_grad()
    def task_importance(self, params: list[Tensor], sample: TaskSample | None) -> list[Tensor]:  # noqa: D102
        if self.optimizer is None:
            raise ValueError(MISSING)
        return [self._second_moment(p) for p in params]

    def _second_moment(self, p: Tensor) -> Tensor:
        group = next((g for g in self.optimizer.param_groups if any(q is p for q in g["params"])), None)
        state = self.optimizer.state.get(p, {})
        if group is None or "exp_avg_sq" not in state or "betas" not in group:
            why = "is not among its parameters" if group is None else "has no exp_avg_sq (not Adam, or no step yet)"
            raise ValueError(f"{MISSING} ({type(self.optimizer).__name__}: a regularised parameter {why})")
        v = state["exp_avg_sq"].detach().clone()
        if not self.bias_correction:
            return v
        steps = float(state["step"])
        if steps < 1:
            raise ValueError(f"{MISSING} (its step count is {steps:g}: no step to correct for)")
        return v.div_(1.0 - group["betas"][1] ** steps)
