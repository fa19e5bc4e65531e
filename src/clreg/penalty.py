"""The shared quadratic penalty R(θ) = c · Σ_i Ω_i (θ_i − θ*_i)² with its analytic gradient (SPEC §1, §4).

This module implements the *online* combination (SPEC §4, the default): one penalty anchored at the
latest parameters, Ω ← γ·Ω + ω^(k) after each task, plus an optional Gaussian prior precision.
"""
from __future__ import annotations

import torch
from torch import Tensor


class QuadraticPenalty:
    """Ω, the anchor θ* and the precision P = c·Ω + λ_prior; evaluates R and ∇R = 2P ⊙ (θ − θ*).

    Parameters are held as a list of tensors (the regularised, shared parameters in a fixed order).
    """

    def __init__(self, params: list[Tensor], c: float, decay: float = 1.0, prior: float = 0.0):
        if c < 0:
            raise ValueError(f"c must be >= 0, got {c}")
        if not 0 < decay <= 1:
            raise ValueError(f"decay must be in (0, 1], got {decay}")
        if prior < 0:
            raise ValueError(f"prior must be >= 0, got {prior}")
        self.c = float(c)
        self.decay = float(decay)
        self.prior = float(prior)
        self.omega = [torch.zeros_like(p, memory_format=torch.contiguous_format) for p in params]
        self.anchor = [p.detach().clone(memory_format=torch.contiguous_format) for p in params]
        self.tasks_consolidated = 0
        self._twice_precision: list[Tensor] | None = None  # 2P, cached between consolidations
        self.diff = [torch.zeros_like(a) for a in self.anchor]  # θ − θ* at the last evaluation
        self.grad = [torch.zeros_like(a) for a in self.anchor]  # ∇R at the last autograd evaluation
        self.evaluated = False  # True from an evaluation until the step's after_step

    @property
    def active(self) -> bool:
        """True once a task has been consolidated and the penalty has non-zero strength."""
        return self.tasks_consolidated > 0 and (self.c > 0 or self.prior > 0)

    @torch.no_grad()
    def consolidate(self, omega: list[Tensor], params: list[Tensor], cumulative: bool = True) -> None:
        """End of a task: Ω ← γΩ + ω (or Ω ← ω when not cumulative), θ* ← θ."""
        if cumulative:
            if self.decay != 1.0:
                torch._foreach_mul_(self.omega, self.decay)
            torch._foreach_add_(self.omega, omega)
        else:
            torch._foreach_copy_(self.omega, omega)
        torch._foreach_copy_(self.anchor, [p.detach() for p in params])
        self.tasks_consolidated += 1
        self._twice_precision = None

    def twice_precision(self) -> list[Tensor]:
        """2P = 2(c·Ω + λ_prior), per parameter tensor."""
        if self._twice_precision is None:
            with torch.no_grad():
                tp = torch._foreach_mul(self.omega, 2.0 * self.c)
                if self.prior:
                    torch._foreach_add_(tp, 2.0 * self.prior)
            self._twice_precision = tp
        return self._twice_precision

    @torch.no_grad()
    def _difference(self, params: list[Tensor]) -> None:
        for d, p, a in zip(self.diff, params, self.anchor):
            torch.sub(p.detach(), a, out=d)
        self.evaluated = True

    @torch.no_grad()
    def value_and_grad(self, params: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        """R(θ) and ∇R(θ) = 2P ⊙ (θ − θ*), written into preallocated buffers (no allocation)."""
        self._difference(params)
        for g, d, tp in zip(self.grad, self.diff, self.twice_precision()):
            torch.mul(d, tp, out=g)
        value = 0.5 * sum(torch.dot(d.view(-1), g.view(-1)) for d, g in zip(self.diff, self.grad))
        return value, self.grad

    @torch.no_grad()
    def add_gradient_(self, params: list[Tensor]) -> None:
        """The fast path: p.grad += 2P ⊙ (θ − θ*) in place, after the task loss's backward."""
        if not self.active:
            self.evaluated = False
            return
        self._difference(params)
        for p, d, tp in zip(params, self.diff, self.twice_precision()):
            if p.grad is None:
                p.grad = torch.mul(d, tp)
            else:
                p.grad.addcmul_(d, tp)

    @torch.no_grad()
    def task_gradient(self, grads: list[Tensor], out: list[Tensor]) -> list[Tensor]:
        """`out` ← grads − ∇R(θ_t) if the penalty was evaluated this step, else `grads` itself."""
        if not self.evaluated:
            return grads
        for o, g, d, tp in zip(out, grads, self.diff, self.twice_precision()):
            torch.addcmul(g, d, tp, value=-1.0, out=o)
        return out

    def __call__(self, params: list[Tensor]) -> Tensor:
        """R(θ) as a differentiable scalar whose backward is the analytic gradient (no autograd graph)."""
        if not self.active:
            self.evaluated = False
            return params[0].new_zeros(())
        return _AnalyticPenalty.apply(self, *params)


class _AnalyticPenalty(torch.autograd.Function):
    """Forward evaluates R; backward returns the stored 2P ⊙ (θ − θ*) instead of differentiating R."""

    @staticmethod
    def forward(ctx, penalty: QuadraticPenalty, *params: Tensor) -> Tensor:  # noqa: D102
        value, grad = penalty.value_and_grad(list(params))
        ctx.grad = grad
        return value

    @staticmethod
    def backward(ctx, grad_output: Tensor):  # noqa: D102
        grad = ctx.grad
        if not (grad_output.numel() == 1 and grad_output.item() == 1.0):
            grad = torch._foreach_mul(grad, grad_output)
        return (None, *grad)
