"""Importances measured along the training trajectory (docs/algorithms.md §2): SI, SIU, SIB and SOS.

Each measure declares its per-step statistic once, as a `StepStatistic` (kind and weights); the
Regularizer's backends execute it (the fused native step, or `torch._foreach_*` kernels on any device).
The measures keep the accumulated state and turn it into ω at the task's end.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from clreg.core.options import Option, number_or
from clreg.importance.base import ImportanceMeasure, TaskSample, clone_all, zeros_like_all
from clreg.core.statistic import StepStatistic


class TrajectoryMeasure(ImportanceMeasure):
    """A measure accumulated from every optimiser step: declare `step_statistic()`, read `state` at task end.

    `state` (one tensor per shared parameter) and `steps` are written by the backend that executes the
    statistic; `accumulate` is the foreach backend, for code that observes steps itself (the analyses).
    """

    trajectory = True
    keeps_start = True  # θ at the task's start is kept (SI's (θ_end − θ_start)²); False frees that copy

    def __init__(self):
        self.state: list[Tensor] = []
        self.start: list[Tensor] = []
        self.steps = 0

    def step_statistic(self) -> StepStatistic:
        """The per-step statistic: its one definition."""
        raise NotImplementedError

    @property
    def needs_independent_gradient(self) -> bool:  # noqa: D102
        return self.step_statistic().needs_independent_gradient

    @property
    def uses_task_gradient(self) -> bool:  # noqa: D102
        return self.step_statistic().uses_task_gradient

    def begin_task(self, params: list[Tensor]) -> None:  # noqa: D102
        self.start = clone_all(params) if self.keeps_start else []
        self.state = zeros_like_all(params)
        self.steps = 0

    def task_state_dict(self) -> dict:  # noqa: D102
        return {"start": self.start, "state": self.state, "steps": self.steps}

    @torch.no_grad()
    def load_task_state_dict(self, state: dict) -> None:  # noqa: D102
        for mine, theirs in ((self.start, state["start"]), (self.state, state["state"])):
            for a, b in zip(mine, theirs):
                a.copy_(b)
        self.steps = int(state["steps"])

    def accumulate(self, task_grads: list[Tensor] | None, independent: list[Tensor] | None,
                   delta: list[Tensor] | None) -> None:
        """One step on the foreach backend: g_t, g'_t (None where unused) and Δ_t = θ_{t+1} − θ_t."""
        self.step_statistic().apply_(self.state, task_grads, independent, delta)
        self.steps += 1


class SynapticIntelligence(TrajectoryMeasure):
    """SI (Zenke et al. 2017): s = Σ_t −g_t ⊙ Δ_t, ω = max(0, s / ((θ_end − θ_start)² + ξ))."""

    name = "si"
    description = "Synaptic Intelligence: path integral -g_t*Delta_t, rescaled by (Delta theta)^2 + xi"
    weights = (1.0, 0.0)  # u = a·g_t + b·g'_t in the path integral −u ⊙ Δ_t
    settings = (Option("xi", float, None, "SI family: damping xi > 0 in (theta_end - theta_start)^2 + xi",
                       minimum=0.0, above=True, default_text="the benchmark's: 0.1 on MNIST, 1e-3 on CIFAR"),)

    def __init__(self, xi: float = 0.1, rescale: bool = True, clip: bool = True):
        super().__init__()
        if not xi > 0:
            raise ValueError(f"xi must be > 0, got {xi}")
        self.xi, self.rescale, self.clip = float(xi), rescale, clip

    def options(self) -> dict:  # noqa: D102
        return {"xi": self.xi, "rescale": self.rescale, "clip": self.clip}

    def step_statistic(self) -> StepStatistic:  # noqa: D102
        return StepStatistic("path", *self.weights)

    def task_importance(self, params: list[Tensor], sample: TaskSample | None) -> list[Tensor]:  # noqa: D102
        return path_importance(self.state, self.start, params, self.xi, self.rescale, self.clip)


@torch.no_grad()
def path_importance(path: list[Tensor], start: list[Tensor], params: list[Tensor], xi: float, rescale: bool = True,
                    clip: bool = True) -> list[Tensor]:
    """SI's ω from its path integral s (docs/algorithms.md §2): s / ((θ_end − θ_start)² + ξ) where `rescale`, then
    clipped at 0 where `clip` (new tensors)."""
    omega = [s.clone() for s in path]
    if rescale:
        denominator = torch._foreach_sub([p.detach() for p in params], start)  # θ_end − θ_start, squared in place
        torch._foreach_mul_(denominator, denominator)
        torch._foreach_add_(denominator, xi)
        torch._foreach_div_(omega, denominator)
    if clip:
        torch._foreach_clamp_min_(omega, 0.0)
    return omega


class SynapticIntelligenceUnbiased(SynapticIntelligence):
    """SIU: SI with g'_t from an independent minibatch, an unbiased estimate of the path integral."""

    name = "siu"
    description = "SI unbiased: path integral with the gradient of an independent minibatch g'_t"
    weights = (0.0, 1.0)


class SynapticIntelligenceBias(SynapticIntelligence):
    """SIB: only SI's bias, −(g_t − g'_t) ⊙ Δ_t."""

    name = "sib"
    description = "SI bias-only: -(g_t - g'_t)*Delta_t, rescaled like SI"
    weights = (1.0, -1.0)


def auto_alpha(batch_size: int) -> float:
    """α = (b − √(2b − 1)) / (b − 1): E[(g − α g')²] ∝ empirical Fisher (paper, appendix C)."""
    if batch_size < 2:
        raise ValueError(f"alpha='auto' needs a batch size >= 2, got {batch_size}")
    return (batch_size - math.sqrt(2 * batch_size - 1)) / (batch_size - 1)


class SecondOrderSynapses(TrajectoryMeasure):
    """SOS: v ← β₂v + (1 − β₂)(g_t − α g'_t)², ω = √v̂ (bias-corrected) or √v."""

    name = "sos"
    description = "Second-Order Synapses: sqrt of a decaying average of (g_t - alpha g'_t)^2"
    settings = (Option("sos_alpha", number_or("auto"), 0.0, "SOS: alpha in (g - alpha g')^2, a number or 'auto' "
                       "((b - sqrt(2b - 1)) / (b - 1))", flag="--alpha", argument="alpha", minimum=0.0),
                Option("sos_bias_correction", bool, True, "SOS: divide v by 1 - beta2^T", flag="--bias-correction",
                       argument="bias_correction"),
                Option("sos_split", bool, False, "SOS: g and g' from the two halves of the minibatch",
                       flag="--split", argument="split"))
    from_run = ("batch_size",)
    keeps_start = False  # ω is the moment alone

    def __init__(self, alpha: float | str = 0.0, beta2: float = 0.999, bias_correction: bool = True,
                 split: bool = False, batch_size: int | None = None):
        super().__init__()
        if alpha == "auto":
            if batch_size is None:
                raise ValueError("alpha='auto' needs the batch size (batch_size=...)")
            alpha = auto_alpha(batch_size // 2 if split else batch_size)
        elif isinstance(alpha, str):
            raise ValueError(f"alpha must be a number or 'auto', got {alpha!r}")
        if not 0 <= beta2 < 1:
            raise ValueError(f"beta2 must be in [0, 1), got {beta2}")
        self.alpha, self.beta2 = float(alpha), float(beta2)
        self.bias_correction, self.split = bias_correction, split

    def options(self) -> dict:  # noqa: D102
        return {"alpha": self.alpha, "beta2": self.beta2, "bias_correction": self.bias_correction,
                "split": self.split}

    def step_statistic(self) -> StepStatistic:  # noqa: D102
        return StepStatistic("moment", 1.0, -self.alpha, self.beta2)

    @torch.no_grad()
    def task_importance(self, params: list[Tensor], sample: TaskSample | None) -> list[Tensor]:  # noqa: D102
        v = [m.clone() for m in self.state]
        if self.bias_correction and self.steps > 0:
            torch._foreach_div_(v, 1.0 - self.beta2 ** self.steps)
        torch._foreach_sqrt_(v)
        return v
