"""A trajectory measure's per-step statistic: declared by the measure, its kinds registered once.

A trajectory measure (SI, SIU, SIB, SOS) accumulates, after each optimiser step t, a statistic of

    u_t = a·g_t + b·g'_t        (g_t: the task-loss gradient of the step, g'_t: one on an independent batch)

and the step Δ_t = θ_{t+1} − θ_t, of one registered kind (docs/algorithms.md §2):

    path:    s ← s − u_t ⊙ Δ_t                       (SI: a = 1, b = 0; SIU: 0, 1; SIB: 1, −1)
    moment:  v ← β·v + (1 − β)·u_t ⊙ u_t             (SOS: a = 1, b = −α, β = β₂)

The measure declares only (kind, a, b, β). A kind is its formula in clreg.core.formulas and whether it reads
Δ_t; `register_kind` adds one. Every backend (clreg.core.step: per tensor, stacked, compiled; the native kernel
for the built-in kinds) executes the declaration through that formula.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from clreg.core import formulas


@dataclass(frozen=True)
class Kind:
    """A statistic kind: `update(state, u, delta, **scalars)` → the new state; `needs_step`: it reads Δ_t;
    `scalars(decay)` → its per-step scalars (derived in float64)."""

    name: str
    update: Callable[..., Tensor]
    needs_step: bool
    scalars: Callable[[float], dict] = lambda decay: {}


KINDS: dict[str, Kind] = {}


def register_kind(kind: Kind) -> Kind:
    """Add a statistic kind under `kind.name` (ValueError if the name is taken)."""
    if not kind.name or kind.name in KINDS:
        raise ValueError(f"a statistic kind needs a name not yet registered, got {kind.name!r}")
    KINDS[kind.name] = kind
    return kind


register_kind(Kind("path", formulas.path, needs_step=True))
register_kind(Kind("moment", formulas.moment, needs_step=False,
                   scalars=lambda decay: {"decay": decay, "one_minus_decay": 1.0 - decay}))


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
    def definition(self) -> Kind:
        """The registered kind."""
        return KINDS[self.kind]

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
        return self.definition.needs_step

    def scalars(self) -> dict:
        """The kind's per-step scalars (float64)."""
        return self.definition.scalars(self.decay)

    @torch.no_grad()
    def combine(self, task_grads: list[Tensor] | None, independent: list[Tensor] | None) -> list[Tensor]:
        """u = a·g + b·g' per tensor, as new tensors (g or g' may be None where its weight is 0)."""
        count = len(task_grads if task_grads is not None else independent)
        return [formulas.combine(None if task_grads is None else task_grads[i],
                                 None if independent is None else independent[i],
                                 self.task_weight, self.independent_weight) for i in range(count)]

    @torch.no_grad()
    def apply_(self, state: list[Tensor], task_grads: list[Tensor] | None, independent: list[Tensor] | None,
               delta: list[Tensor] | None) -> None:
        """Update `state` in place for one step, per tensor (`delta` = Δ_t, for kinds that read it)."""
        scalars, update = self.scalars(), self.definition.update
        for i, u in enumerate(self.combine(task_grads, independent)):
            state[i].copy_(update(state[i], u, None if delta is None else delta[i], **scalars))
