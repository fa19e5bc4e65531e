"""The optimisers clreg steps itself: each a torch.optim class, its formula (clreg.core.formulas), its per-step
scalars and its state, registered once.

An entry says how to execute `optimizer.step()` of that class with the formula: which per-parameter state it
keeps (the same names torch keeps, in `optimizer.state[p]`, so `optimizer.state_dict()` stays valid and the
paths can alternate), the scalars of the coming step derived in float64 from a parameter group and the step
count, and what settings the formula does not cover (then the optimiser's own `step()` runs instead).
`register` adds one: a class, a formula, a `scalars` function. The Regularizer (clreg.core.step) and the
vectorised runs (clreg.vectorized.step) pick the entry of the optimiser they are given.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from clreg.core import formulas


@dataclass(frozen=True)
class OptimizerUpdate:
    """One registered optimiser (see the module docstring)."""

    name: str
    optimizer: type[torch.optim.Optimizer]  # matched exactly (a subclass may change the step)
    update: Callable  # formulas.adam, ...: (param, grad, *state, **scalars) -> (param, state)
    state: tuple[str, ...]  # the per-parameter state tensors, in the formula's order
    scalars: Callable[[dict, int], dict]  # (param group, step t counted from 1) -> the formula's scalars
    unsupported: Callable[[dict], str | None] = lambda group: None  # why a group's settings are not covered
    counts_steps: bool = True  # the state keeps `step` (Adam); else t is 1 until the state exists, then 2 (SGD)
    # for `clreg run --optimizer NAME`: (params, lr, run settings) -> the optimiser, and the run settings it reads
    # beyond lr (clreg.train.optim declares them; one it does not read is refused for this optimiser)
    build: Callable[..., torch.optim.Optimizer] | None = None
    reads: tuple[str, ...] = ()

    def advance(self, state: dict, param: Tensor, group: dict | None = None) -> int:
        """Start `param`'s state as torch does at its first step (zeros; the step count on the parameter's device
        where the group is fused or capturable, as torch keeps it) and count the coming step; returns t."""
        first = any(state.get(name) is None for name in self.state)
        for name in self.state:
            if state.get(name) is None:
                state[name] = torch.zeros_like(param, memory_format=torch.preserve_format)
        if not self.counts_steps:
            return 1 if first else 2
        if "step" not in state:
            state["step"] = new_step(param, group)
        state["step"] += 1
        return int(state["step"])  # (a host read where the count lives on a GPU: the formula's scalars need it)


def new_step(param: Tensor, group: dict | None) -> Tensor:
    """A step count of 0, where torch.optim keeps it: on the parameter's device for a fused or capturable group."""
    on_device = group is not None and (group.get("fused") or group.get("capturable"))
    return torch.zeros((), dtype=torch.float32, device=param.device if on_device else "cpu")


UPDATES: dict[type, OptimizerUpdate] = {}


def register(entry: OptimizerUpdate) -> OptimizerUpdate:
    """Register `entry` for its optimiser class (ValueError if the class or the name is taken)."""
    if entry.optimizer in UPDATES or any(e.name == entry.name for e in UPDATES.values()):
        raise ValueError(f"an optimiser update for {entry.optimizer.__name__} or named {entry.name!r} is registered")
    UPDATES[entry.optimizer] = entry
    return entry


def unregister(entry: OptimizerUpdate) -> None:
    """Remove `entry` (tests register toy optimisers for a while)."""
    UPDATES.pop(entry.optimizer, None)


def lookup(optimizer: torch.optim.Optimizer) -> OptimizerUpdate | None:
    """The entry for `optimizer`'s exact class, if its every group is covered and nothing hooks its step."""
    entry = UPDATES.get(type(optimizer))
    if entry is None or optimizer._optimizer_step_pre_hooks or optimizer._optimizer_step_post_hooks:
        return None
    from torch.optim.optimizer import _global_optimizer_post_hooks, _global_optimizer_pre_hooks

    if _global_optimizer_pre_hooks or _global_optimizer_post_hooks:
        return None
    if any(entry.unsupported(group) for group in optimizer.param_groups):
        return None
    return entry


def _common(group: dict) -> str | None:
    if group.get("maximize") or group.get("differentiable"):
        return "maximize or differentiable"
    if any(torch.is_tensor(group[k]) for k in ("lr", "weight_decay")):
        return "tensor-valued hyperparameters"
    return None


def adam_scalars(group: dict, step: int) -> dict:
    """Adam's scalars at step t: η/(1 − β₁ᵗ), √(1 − β₂ᵗ), 1 − β₁, 1 − β₂, 1 − ηλ, ..."""
    lr, (beta1, beta2), wd = group["lr"], group["betas"], group["weight_decay"]
    return {"weight_decay": wd, "decay_factor": 1.0 - lr * wd,
            "decoupled": bool(group.get("decoupled_weight_decay", False)),
            "one_minus_beta1": 1.0 - beta1, "beta2": beta2, "one_minus_beta2": 1.0 - beta2,
            "step_size": lr / (1.0 - beta1 ** step), "inverse_bias_correction2_sqrt": 1.0 / math.sqrt(1.0 - beta2 ** step),
            "eps": group["eps"]}


def _adam_unsupported(group: dict) -> str | None:
    if group.get("amsgrad") or group.get("capturable"):
        return "amsgrad or capturable"
    if torch.is_tensor(group["eps"]) or any(torch.is_tensor(b) for b in group["betas"]):
        return "tensor-valued hyperparameters"
    return _common(group)


def sgd_scalars(group: dict, step: int) -> dict:
    """SGD's scalars at step t (the first step starts the momentum buffer)."""
    return {"lr": group["lr"], "weight_decay": group["weight_decay"], "momentum": group["momentum"],
            "one_minus_dampening": 1.0 - group["dampening"], "nesterov": bool(group["nesterov"]), "first": step == 1}


def _adam(kind: type) -> Callable[..., torch.optim.Optimizer]:
    """The paper's Adam (β = 0.9, 0.999, ε = 1e-8), torch's fused kernel where the device has one."""
    return lambda params, lr, s: kind(params, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=s["weight_decay"],
                                      fused=True)


ADAM = register(OptimizerUpdate("adam", torch.optim.Adam, formulas.adam, ("exp_avg", "exp_avg_sq"), adam_scalars,
                                _adam_unsupported, build=_adam(torch.optim.Adam), reads=("weight_decay",)))
ADAMW = register(OptimizerUpdate("adamw", torch.optim.AdamW, formulas.adam, ("exp_avg", "exp_avg_sq"),
                                 lambda group, step: {**adam_scalars(group, step), "decoupled": True}, _adam_unsupported,
                                 build=_adam(torch.optim.AdamW), reads=("weight_decay",)))
SGD = register(OptimizerUpdate("sgd", torch.optim.SGD, formulas.sgd, ("momentum_buffer",), sgd_scalars, _common,
                               counts_steps=False, reads=("momentum", "nesterov", "weight_decay"),
                               build=lambda params, lr, s: torch.optim.SGD(params, lr=lr, momentum=s["momentum"],
                                                                           nesterov=s["nesterov"],
                                                                           weight_decay=s["weight_decay"])))


def buildable() -> dict[str, OptimizerUpdate]:
    """The registered optimisers a run can name (`clreg run --optimizer`), by name."""
    return {entry.name: entry for entry in UPDATES.values() if entry.build is not None}
