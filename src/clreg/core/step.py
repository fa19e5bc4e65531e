"""One regularised training step, composed from the formulas (clreg.core.formulas) and run by a backend.

Per regularised tensor, with g the gradient in `.grad`:

    penalty 1 (add):      g ← g + ∇R(θ_t)               (the penalty was not in the loss)
    penalty 2 (in grad):  g_task ← g − ∇R(θ_t)           (its backward already put ∇R into g)
    θ, state ← the optimiser's formula on g              (clreg.core.optimizers)
    s ← the statistic kind's formula on u = a·g_task + b·g' and Δ = θ_{t+1} − θ_t   (clreg.core.statistic)

`tensor_step` is that composition, out of place; it runs unchanged on one tensor and on K runs' stacked
tensors with `[K, 1, ...]` scalars. The backends that execute it:

- "eager": `tensor_step` per tensor, results copied into the live buffers (the reference, any device);
- "compiled": the same under `torch.compile` (one fused kernel per tensor where the compiler fuses);
- "native": the C kernel for Adam/AdamW on float32 CPU tensors (clreg.core.fused), a registered fast path held
  to "compiled" bit for bit by the tests (to "eager" within an ulp: torch's eager CPU sqrt is not correctly
  rounded);
- "torch": for any other optimiser, its own `step()`, with the penalty and the statistic from the formulas
  around it (the Regularizer's generic path).
"""
from __future__ import annotations

import functools
from typing import Callable

import torch
from torch import Tensor

from clreg.core import formulas
from clreg.core.shards import local
from clreg.core.optimizers import OptimizerUpdate
from clreg.core.statistic import Kind, StepStatistic

NO_PENALTY, ADD_PENALTY, PENALTY_IN_GRAD = 0, 1, 2
BACKENDS = ("eager", "compiled", "native", "torch")


def check_backend(name: str | None) -> None:
    """ValueError unless `name` is None (chosen per step) or one of BACKENDS."""
    if name is not None and name not in BACKENDS:
        raise ValueError(f"a step backend is one of {', '.join(BACKENDS)}, got {name!r}")


def tensor_step(update: Callable, param: Tensor, grad: Tensor, state: tuple, scalars: dict, penalty: int = NO_PENALTY,
                centre: Tensor | None = None, weight: Tensor | None = None, kind: Kind | None = None,
                stat: Tensor | None = None, other: Tensor | None = None, task_weight=1.0, other_weight=0.0,
                stat_scalars: dict | None = None, penalty_scale=1.0, penalty_offset=0.0) -> tuple[Tensor, tuple, Tensor | None]:
    """The regularised step of one tensor (or one stack of K): returns (θ_{t+1}, optimiser state, statistic).
    The penalty's 2P is weight·penalty_scale + penalty_offset (formulas.penalty_gradient)."""
    theta, g_task, g = param, grad, grad
    if penalty == ADD_PENALTY:
        g = grad + formulas.penalty_gradient(theta, centre, weight, penalty_scale, penalty_offset)
    elif penalty == PENALTY_IN_GRAD:
        g_task = grad - formulas.penalty_gradient(theta, centre, weight, penalty_scale, penalty_offset)
    param, state = update(param, g, *state, **scalars)
    if kind is not None:
        u = formulas.combine(g_task, other, task_weight, other_weight)
        stat = kind.update(stat, u, param - theta if kind.needs_step else None, **(stat_scalars or {}))
    return param, state, stat


def tensor_step_(update: Callable, param: Tensor, grad: Tensor, state: list[Tensor], scalars: dict, penalty: int,
                 centre: Tensor | None, weight: Tensor | None, kind: Kind | None, stat: Tensor | None,
                 other: Tensor | None, task_weight, other_weight, stat_scalars: dict | None, penalty_scale=1.0,
                 penalty_offset=0.0) -> None:
    """`tensor_step` written into the live buffers: the parameter, its optimiser state and its statistic."""
    new_param, new_state, new_stat = tensor_step(update, param, grad, tuple(state), scalars, penalty, centre,
                                                 weight, kind, stat, other, task_weight, other_weight,
                                                 stat_scalars, penalty_scale, penalty_offset)
    param.copy_(new_param)
    for live, new in zip(state, new_state):
        if new is not live:
            live.copy_(new)
    if stat is not None:
        stat.copy_(new_stat)


@functools.cache
def compiled_tensor_step_() -> Callable:
    """`tensor_step_` under torch.compile (dynamic shapes and scalars: one graph per combination of settings)."""
    return torch.compile(tensor_step_, dynamic=True)


@torch.no_grad()
def optimizer_step(entry: OptimizerUpdate, optimizer: torch.optim.Optimizer, regularized: dict, penalty: int,
                   statistic: StepStatistic | None, task_weight: float, other_weight: float,
                   compiled: bool = False, penalty_scalars: tuple[float, float] = (1.0, 0.0)) -> None:
    """One step of every parameter of `optimizer` that has a gradient, through `entry`'s formula.

    `regularized` maps a parameter to (centre, weight, statistic state, other gradient), entries None where
    unused, 2P = weight·penalty_scalars[0] + penalty_scalars[1];
    `penalty` is NO_PENALTY, ADD_PENALTY or PENALTY_IN_GRAD; the statistic reads u = a·g_task + b·other.
    The optimiser's own state is read and written (as its `step()` would)."""
    run = compiled_tensor_step_() if compiled else tensor_step_
    stat_scalars = statistic.scalars() if statistic is not None else None
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.grad is None:
                continue
            state = optimizer.state[p]
            scalars = entry.scalars(group, entry.advance(state, p, group))
            centre, weight, stat, other = regularized.get(p, (None, None, None, None))
            # a sharded parameter steps on its local shard, with its gradient's and state's (clreg.core.shards)
            run(entry.update, local(p.detach()), local(p.grad), [local(state[name]) for name in entry.state], scalars,
                penalty if centre is not None else NO_PENALTY, centre, weight,
                statistic.definition if stat is not None else None, stat, other, task_weight, other_weight,
                stat_scalars, *penalty_scalars)


def stacked_scalars(per_run: list[dict], like: Tensor) -> dict:
    """K runs' scalars as one set for `tensor_step` on stacked tensors shaped like `like` ([K, ...]): a value
    all runs share stays a Python number (as each run alone has it), one that differs becomes a [K, 1, ...]
    column in `like`'s dtype. Flags (bools) must be shared: they choose the formula's branches."""
    merged = {}
    for key in per_run[0]:
        values = [scalars[key] for scalars in per_run]
        if all(v == values[0] for v in values):
            merged[key] = values[0]
        elif isinstance(values[0], bool):
            raise ValueError(f"runs stacked into one step must agree on {key!r}, got {values}")
        else:
            merged[key] = torch.tensor(values, dtype=like.dtype, device=like.device).view(-1, *[1] * (like.dim() - 1))
    return merged
