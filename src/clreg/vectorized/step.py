"""One optimiser step for every run of a vectorised job at once: the elementwise half of clreg.vectorized.trainer.

On a GPU a run of a small network is a few dozen kernel launches per step, and each run's own step (penalty
gradient, Adam, trajectory statistic) is a few dozen more, so K runs stepping one by one would be launch-bound
K times over. `StackedStep` does the same arithmetic once on the stacked tensors, with each run's own scalars
(learning rate, weight decay, the precision 2P that carries its c, its statistic's weights) broadcast along
the leading dimension:

    g ← g + 2P ⊙ (θ − m)                         (the penalty, where the run's penalty is active)
    g ← g + λθ  (Adam)      θ ← θ(1 − ηλ)  (AdamW)
    Adam:  m ← β₁m + (1 − β₁)g,  v ← β₂v + (1 − β₂)g²,  θ ← θ − η/(1 − β₁ᵗ) · m / (√v / √(1 − β₂ᵗ) + ε)
    then the statistic of clreg.core.statistic on u = a·g_t + b·g'_t and Δ = θ_new − θ_old.

These are torch.optim.Adam's, QuadraticPenalty's and StepStatistic's formulas; the numbers agree with each
run's own step to float rounding (not bit for bit: the operations are grouped differently). Each run's
statistic state is a view of the stacked one, so its measure reads it at the task's end as usual. The CPU
keeps each run's own step (the fused native kernel, bit for bit the run alone).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

OPTIMIZERS = ("adam", "adamw")
BETAS, EPS = (0.9, 0.999), 1e-8  # clreg.train.optim's Adam


class StackedStep:
    """The optimiser step of a task for all K runs (members: their Trainers; net: their StackedNetwork)."""

    def __init__(self, members, net):
        self.members, self.net = members, net
        self.names = list(net.params)
        self.regularized = list(members[0].reg.names)
        self.position = {n: i for i, n in enumerate(self.regularized)}
        self.optimizer = members[0].config.optimizer
        self.columns: dict[tuple, Tensor] = {}  # per-run scalars on the device, made once per distinct value

    @staticmethod
    def supported(members) -> bool:
        """True if every run steps with Adam or AdamW (clreg.train.optim), with g_t not taken from split halves."""
        return all(m.config.optimizer in OPTIMIZERS and not m.reg.split for m in members)

    @torch.no_grad()
    def begin_task(self) -> None:
        """After every run's task start (re-init, consolidation): fresh Adam moments, the penalties' 2P and
        centres stacked, and each run's statistic state made a view of a stacked one."""
        self.t = 0
        self.exp_avg = {n: torch.zeros_like(p) for n, p in self.net.params.items()}
        self.exp_avg_sq = {n: torch.zeros_like(p) for n, p in self.net.params.items()}
        terms = [m.reg.penalty_term for m in self.members]
        self.penalized = any(term.active for term in terms)
        if self.penalized:
            self.precision = {n: torch.stack([t.twice_precision()[i] if t.active else torch.zeros_like(t.centre[i])
                                              for t in terms]) for i, n in enumerate(self.regularized)}
            self.centre = {n: torch.stack([t.centre[i] for t in terms]) for i, n in enumerate(self.regularized)}
        measures = [m.reg.measure for m in self.members]
        self.statistic = measures[0].step_statistic() if measures[0].trajectory else None
        if self.statistic is not None:
            self.state = {}
            for i, n in enumerate(self.regularized):
                self.state[n] = torch.stack([measure.state[i] for measure in measures])
                for k, measure in enumerate(measures):
                    measure.state[i] = self.state[n][k]
            stats = [measure.step_statistic() for measure in measures]
            self.weights = [(s.task_weight, s.independent_weight, s.decay) for s in stats]

    def _column(self, values: list[float], like: Tensor) -> Tensor:
        """The runs' values as a [K, 1, ...] tensor beside `like`; cached, so a step copies nothing to the device
        unless a value changed (a schedule's learning rate)."""
        key = (tuple(values), like.dim(), like.dtype, like.device)
        if key not in self.columns:
            if len(self.columns) > 256:  # a schedule changes the rate every step: keep the cache small
                self.columns.clear()
            self.columns[key] = torch.tensor(values, dtype=like.dtype, device=like.device).view(-1, *([1] * (like.dim() - 1)))
        return self.columns[key]

    @torch.no_grad()
    def step(self, task_grads: list[Tensor] | None, independent: list[Tensor] | None) -> None:
        """One step of every run. `.grad` of the stacked parameters holds the task-loss gradients; `task_grads`
        (g_t with dropout off) and `independent` (g'_t), stacked and in `regularized` order, where taken."""
        self.t += 1
        beta1, beta2 = BETAS
        correction1, correction2 = 1 - beta1 ** self.t, math.sqrt(1 - beta2 ** self.t)
        groups = [m.optimizer.param_groups[0] for m in self.members]
        lr_values = [g["lr"] for g in groups]
        decay_values = [g["weight_decay"] for g in groups]
        position = self.position
        for name, p in self.net.params.items():
            grad = p.grad
            if grad is None:
                continue
            lr = self._column(lr_values, p)
            before = p.clone() if self.statistic is not None and self.statistic.needs_step and name in position else None
            total = grad
            if self.penalized and name in position:
                total = grad + self.precision[name] * (p - self.centre[name])
            if any(decay_values):
                decay = self._column(decay_values, p)
                if self.optimizer == "adamw":
                    p.mul_(1 - lr * decay)
                else:
                    total = total + decay * p
            self.exp_avg[name].lerp_(total, 1 - beta1)
            self.exp_avg_sq[name].mul_(beta2).addcmul_(total, total, value=1 - beta2)
            denominator = (self.exp_avg_sq[name].sqrt() / correction2).add_(EPS)
            p.sub_(lr / correction1 * self.exp_avg[name] / denominator)
            if self.statistic is not None and name in position:
                i = position[name]
                g = grad if task_grads is None else task_grads[i]
                self._statistic(name, p, g, None if independent is None else independent[i], before)
        for member in self.members:
            if self.statistic is not None:
                member.reg.measure.steps += 1

    def _statistic(self, name: str, p: Tensor, g: Tensor, other: Tensor | None, before: Tensor | None) -> None:
        a = self._column([w[0] for w in self.weights], p)
        u = a * g
        if other is not None:
            u = u + self._column([w[1] for w in self.weights], p) * other
        if self.statistic.kind == "path":
            self.state[name].sub_(u * (p - before))
        else:
            decay = self._column([w[2] for w in self.weights], p)
            self.state[name].mul_(decay).add_((1 - decay) * u * u)
