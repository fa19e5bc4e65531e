"""A trajectory measure's per-step statistic, declared once and executed by every backend.

A trajectory measure (SI, SIU, SIB, SOS) accumulates, after each optimiser step t, a statistic of

    u_t = a·g_t + b·g'_t        (g_t: the task-loss gradient of the step, g'_t: one on an independent batch)

and the step Δ_t = θ_{t+1} − θ_t, of one of two kinds:

    path:    s ← s − u_t ⊙ Δ_t                       (SI: a = 1, b = 0; SIU: 0, 1; SIB: 1, −1)
    moment:  v ← β·v + (1 − β)·u_t ⊙ u_t             (SOS: a = 1, b = −α, β = β₂)

The measure declares only (kind, a, b, β). Two backends execute the declaration: the native fused step
(`clreg.core.fused`, CPU float32 with Adam/AdamW, in the optimiser's own pass) and `apply_` below
(`torch._foreach_*` kernels: any device, dtype and memory layout). Tests run the same numbers through both.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

KINDS = ("path", "moment")


@dataclass(frozen=True)
class StepStatistic:
    """What a trajectory measure accumulates per step (see the module docstring)."""

    kind: str
    task_weight: float = 1.0
    independent_weight: float = 0.0
    decay: float = 0.0

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"a step statistic's kind is one of {', '.join(KINDS)}, got {self.kind!r}")

    @property
    def uses_task_gradient(self) -> bool:
        """True if u_t reads g_t."""
        return self.task_weight != 0.0

    @property
    def needs_independent_gradient(self) -> bool:
        """True if u_t reads g'_t (an independent minibatch's gradient)."""
        return self.independent_weight != 0.0

    @property
    def needs_step(self) -> bool:
        """True if the statistic reads Δ_t (then θ_t must be known before the step)."""
        return self.kind == "path"

    @torch.no_grad()
    def combine(self, task_grads: list[Tensor] | None, independent: list[Tensor] | None) -> list[Tensor]:
        """u = a·g + b·g' as new tensors (g or g' may be None where its weight is 0)."""
        a, b = self.task_weight, self.independent_weight
        if not b:
            return torch._foreach_mul(task_grads, a)
        u = torch._foreach_mul(independent, b)
        if a:
            torch._foreach_add_(u, task_grads, alpha=a)
        return u

    @torch.no_grad()
    def apply_(self, state: list[Tensor], task_grads: list[Tensor] | None, independent: list[Tensor] | None,
               delta: list[Tensor] | None) -> None:
        """The foreach backend: update `state` in place for one step (`delta` = Δ_t, path kind only)."""
        u = self.combine(task_grads, independent)
        if self.kind == "path":
            torch._foreach_mul_(u, delta)
            torch._foreach_sub_(state, u)
        else:
            torch._foreach_mul_(state, self.decay)
            torch._foreach_addcmul_(state, u, u, value=1.0 - self.decay)
