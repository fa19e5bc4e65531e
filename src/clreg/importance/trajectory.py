"""Importances measured along the training trajectory (SPEC §2): SI, SIU, SIB and SOS.

All state is kept as lists of tensors updated in place with `torch._foreach_*` kernels, so a step
costs a handful of passes over the parameters and no Python per element.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..fused import StepStatistic
from .base import ImportanceMeasure, TaskSample, clone_all, zeros_like_all


class SynapticIntelligence(ImportanceMeasure):
    """SI (Zenke et al. 2017): s = Σ_t −g_t ⊙ Δ_t, ω = max(0, s / ((θ_end − θ_start)² + ξ))."""

    name = "si"
    description = "Synaptic Intelligence: path integral -g_t*Delta_t, rescaled by (Delta theta)^2 + xi"
    trajectory = True
    weights = (1.0, 0.0)  # u = a·g_t + b·g'_t in the path integral −u ⊙ Δ_t

    def __init__(self, xi: float = 0.1, rescale: bool = True, clip: bool = True):
        if not xi > 0:
            raise ValueError(f"xi must be > 0, got {xi}")
        self.xi, self.rescale, self.clip = float(xi), rescale, clip
        self.start: list[Tensor] = []
        self.previous: list[Tensor] = []
        self.path: list[Tensor] = []

    def options(self) -> dict:  # noqa: D102
        return {"xi": self.xi, "rescale": self.rescale, "clip": self.clip}

    def begin_task(self, params: list[Tensor]) -> None:  # noqa: D102
        self.start = clone_all(params)
        self.previous = clone_all(params)
        self.path = zeros_like_all(params)

    def contribution(self, grads: list[Tensor], independent: list[Tensor] | None) -> list[Tensor]:
        """The gradient estimate multiplied with the step: g_t for SI."""
        return grads

    def step_statistic(self) -> StepStatistic:
        """For the fused step (clreg.fused), which accumulates the path integral in its own pass."""
        self.previous = []  # θ_{t+1} is no longer tracked here
        return StepStatistic("path", self.path, *self.weights)

    @torch.no_grad()
    def observe_step(self, params, grads, independent) -> None:  # noqa: D102
        if not self.previous:
            raise ValueError("a task cannot mix Regularizer.step(optimizer) with optimizer.step() + after_step(); "
                             "use one of the two from the task's start")
        g = self.contribution(grads, independent)
        theta = [p.detach() for p in params]
        torch._foreach_sub_(self.previous, theta)  # previous = θ_t − θ_{t+1} = −Δ_t
        torch._foreach_addcmul_(self.path, g, self.previous)  # s += −g ⊙ Δ
        torch._foreach_copy_(self.previous, theta)

    @torch.no_grad()
    def task_importance(self, params: list[Tensor], sample: TaskSample | None) -> list[Tensor]:  # noqa: D102
        omega = [s.clone() for s in self.path]
        if self.rescale:
            moved = torch._foreach_sub([p.detach() for p in params], self.start)
            denominator = torch._foreach_mul(moved, moved)
            torch._foreach_add_(denominator, self.xi)
            torch._foreach_div_(omega, denominator)
        if self.clip:
            torch._foreach_clamp_min_(omega, 0.0)
        return omega


class SynapticIntelligenceUnbiased(SynapticIntelligence):
    """SIU: SI with g'_t from an independent minibatch, an unbiased estimate of the path integral."""

    name = "siu"
    description = "SI unbiased: path integral with the gradient of an independent minibatch g'_t"
    needs_independent_gradient = True
    uses_task_gradient = False
    weights = (0.0, 1.0)

    def contribution(self, grads, independent):  # noqa: D102
        return independent


class SynapticIntelligenceBias(SynapticIntelligence):
    """SIB: only SI's bias, −(g_t − g'_t) ⊙ Δ_t."""

    name = "sib"
    description = "SI bias-only: -(g_t - g'_t)*Delta_t, rescaled like SI"
    needs_independent_gradient = True
    weights = (1.0, -1.0)

    def begin_task(self, params: list[Tensor]) -> None:  # noqa: D102
        super().begin_task(params)
        self.scratch = zeros_like_all(params)

    def contribution(self, grads, independent):  # noqa: D102
        for out, g, g2 in zip(self.scratch, grads, independent):
            torch.sub(g, g2, out=out)
        return self.scratch


def auto_alpha(batch_size: int) -> float:
    """α = (b − √(2b − 1)) / (b − 1): E[(g − α g')²] ∝ empirical Fisher (paper, appendix C)."""
    if batch_size < 2:
        raise ValueError(f"alpha='auto' needs a batch size >= 2, got {batch_size}")
    return (batch_size - math.sqrt(2 * batch_size - 1)) / (batch_size - 1)


class SecondOrderSynapses(ImportanceMeasure):
    """SOS: v ← β₂v + (1 − β₂)(g_t − α g'_t)², ω = √v̂ (bias-corrected) or √v."""

    name = "sos"
    description = "Second-Order Synapses: sqrt of a decaying average of (g_t - alpha g'_t)^2"
    trajectory = True

    def __init__(self, alpha: float | str = 0.0, beta2: float = 0.999, bias_correction: bool = True,
                 split: bool = False, batch_size: int | None = None):
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
        self.needs_independent_gradient = self.alpha != 0.0
        self.second_moment: list[Tensor] = []
        self.steps = 0

    def options(self) -> dict:  # noqa: D102
        return {"alpha": self.alpha, "beta2": self.beta2, "bias_correction": self.bias_correction,
                "split": self.split}

    def begin_task(self, params: list[Tensor]) -> None:  # noqa: D102
        self.second_moment = zeros_like_all(params)
        self.scratch = zeros_like_all(params) if self.alpha != 0.0 else []
        self.steps = 0

    def step_statistic(self) -> StepStatistic:
        """For the fused step (clreg.fused): v ← β₂v + (1 − β₂)(g_t − α g'_t)² in its own pass."""
        self.steps += 1
        return StepStatistic("moment", self.second_moment, 1.0, -self.alpha, self.beta2)

    @torch.no_grad()
    def observe_step(self, params, grads, independent) -> None:  # noqa: D102
        d = grads
        if self.alpha != 0.0:
            for out, g, g2 in zip(self.scratch, grads, independent):
                torch.add(g, g2, alpha=-self.alpha, out=out)
            d = self.scratch
        torch._foreach_mul_(self.second_moment, self.beta2)
        torch._foreach_addcmul_(self.second_moment, d, d, value=1.0 - self.beta2)
        self.steps += 1

    @torch.no_grad()
    def task_importance(self, params: list[Tensor], sample: TaskSample | None) -> list[Tensor]:  # noqa: D102
        v = [m.clone() for m in self.second_moment]
        if self.bias_correction and self.steps > 0:
            torch._foreach_div_(v, 1.0 - self.beta2 ** self.steps)
        torch._foreach_sqrt_(v)
        return v
