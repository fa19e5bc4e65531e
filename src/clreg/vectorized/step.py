"""One optimiser step for every run of a vectorised job at once: clreg.core.step's `tensor_step` on stacked tensors.

On a GPU a run of a small network is a few dozen kernel launches per step, and each run's own step (penalty
gradient, optimiser, trajectory statistic) is a few dozen more, so K runs stepping one by one would be
launch-bound K times over. `StackedStep` runs the one regularised step of clreg.core.step on the stacked
`[K, ...]` tensors, each run's scalars (learning rate, weight decay, the precision 2P that carries its c, its
statistic's weights) broadcast along the leading dimension as `[K, 1, ...]` columns where they differ
(clreg.core.step.stacked_scalars). The formulas are clreg.core.formulas', and the optimiser's entry is the one
clreg.core.optimizers registers for the runs' optimiser class (Adam, AdamW, SGD, or one registered later).

Each member's slice equals its step alone on the "eager" backend bit for bit (same operations, same order); on
the CPU a run alone takes the "native" kernel, equal to rounding (torch's vectorised sqrt is not the correctly
rounded one). Each run's statistic state is a view of the stacked one, so its measure reads it at the task's end
as usual.
"""
from __future__ import annotations

import torch
from torch import Tensor

from clreg.core import formulas, optimizers
from clreg.core.step import ADD_PENALTY, NO_PENALTY, stacked_scalars, tensor_step_


class StackedStep:
    """The optimiser step of a task for all K runs (members: their Trainers; net: their StackedNetwork)."""

    def __init__(self, members, net):
        self.members, self.net = members, net
        self.regularized = list(members[0].reg.names)
        self.position = {n: i for i, n in enumerate(self.regularized)}

    @staticmethod
    def why_not(members) -> str | None:
        """Why the runs cannot step as one (None: they can): SOS's g_t taken from split halves. (Their optimiser is
        one of the run settings' choices, each a registered formula, and the same for all: clreg.vectorized.trainer
        groups by it.)"""
        if any(m.reg.split for m in members):
            return "sos split takes g_t from the halves of the batch"
        return None

    @torch.no_grad()
    def begin_task(self) -> None:
        """After every run's task start (re-init, consolidation, a fresh optimiser): its optimiser's entry, fresh
        stacked optimiser state, the penalties' 2P and centres stacked, and each run's statistic state made a
        view of a stacked one."""
        self.t = 0
        self.entry = optimizers.lookup(self.members[0].optimizer)
        if self.entry is None:
            raise ValueError(f"the stacked step has no formula for {type(self.members[0].optimizer).__name__}")
        self.state = {n: [torch.zeros_like(p) for _ in self.entry.state] for n, p in self.net.params.items()}
        terms = [m.reg.penalty_term for m in self.members]
        self.penalized = any(term.active for term in terms)
        if self.penalized:
            self.precision = {n: torch.stack([t.twice_precision()[i] if t.active else torch.zeros_like(t.centre[i])
                                              for t in terms]) for i, n in enumerate(self.regularized)}
            self.centre = {n: torch.stack([t.centre[i] for t in terms]) for i, n in enumerate(self.regularized)}
        measures = [m.reg.measure for m in self.members]
        self.statistic = measures[0].step_statistic() if measures[0].trajectory else None
        if self.statistic is not None:
            self.stat = {}
            for i, n in enumerate(self.regularized):
                self.stat[n] = torch.stack([measure.state[i] for measure in measures])
                for k, measure in enumerate(measures):
                    measure.state[i] = self.stat[n][k]
            self.statistics = [measure.step_statistic() for measure in measures]
        self._share_optimizer_state()

    def _share_optimizer_state(self) -> None:
        """Each run's optimiser state made views of the stacked one, so that its own step can take over."""
        for k, member in enumerate(self.members):
            params, group = dict(member.model.named_parameters()), member.optimizer.param_groups[0]
            for name in self.net.params:
                state = {n: self.state[name][j][k] for j, n in enumerate(self.entry.state)}
                if self.entry.counts_steps:
                    state["step"] = optimizers.new_step(params[name], group)
                member.optimizer.state[params[name]] = state

    def hand_over(self) -> None:
        """Before the runs' own steps take over within a task: their step counts brought up to date (their
        moments are views of the stacked ones already)."""
        if not self.entry.counts_steps:
            return
        for member in self.members:
            for group in member.optimizer.param_groups:
                for p in group["params"]:
                    member.optimizer.state[p]["step"].fill_(self.t)

    @torch.no_grad()
    def step(self, task_grads: list[Tensor] | None, independent: list[Tensor] | None) -> None:
        """One step of every run. `.grad` of the stacked parameters holds the task-loss gradients; `task_grads`
        (g_t with dropout off) and `independent` (g'_t), stacked and in `regularized` order, where taken."""
        self.t += 1
        groups = [m.optimizer.param_groups[0] for m in self.members]
        per_run = [self.entry.scalars(group, self.t) for group in groups]
        for name, p in self.net.params.items():
            if p.grad is None:
                continue
            i = self.position.get(name)
            scalars = stacked_scalars(per_run, p)
            penalty = ADD_PENALTY if self.penalized and i is not None else NO_PENALTY
            kind = stat = other = None
            weights, stat_scalars = (1.0, 0.0), None
            grad = p.grad
            if self.statistic is not None and i is not None:
                kind, stat = self.statistic.definition, self.stat[name]
                columns = stacked_scalars([{"a": s.task_weight, "b": s.independent_weight, **s.scalars()}
                                           for s in self.statistics], p)
                weights, stat_scalars = (columns.pop("a"), columns.pop("b")), columns
                other = None if independent is None else independent[i]
                if task_grads is not None:  # g_t taken with dropout off: u = a·g_t + b·g'_t, passed whole
                    other, weights = formulas.combine(task_grads[i], other, *weights), (0.0, 1.0)
            tensor_step_(self.entry.update, p.detach(), grad, self.state[name], scalars, penalty,
                         self.centre.get(name) if penalty else None, self.precision.get(name) if penalty else None,
                         kind, stat, other, *weights, stat_scalars)
        if self.statistic is not None:
            for member in self.members:
                member.reg.measure.steps += 1
