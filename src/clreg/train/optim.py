"""The optimiser and its learning-rate schedule: their settings, declared once, and how a run builds them.

Both restart at every task (docs/algorithms.md §5: a fresh optimiser per task). The default is the paper's: Adam,
β = (0.9, 0.999), ε = 1e-8, a constant learning rate. A schedule is a factor on the learning rate as a
function of the step within the task, set after every optimiser step:

- constant: 1;
- step: γ^⌊e / E⌋ at epoch e (every `lr_step_epochs` E epochs, the rate is multiplied by γ);
- exponential: γ^(t / S) at step t of S steps per epoch (γ per epoch, applied smoothly);
- cosine: m + (1 − m)(1 + cos(π t / T)) / 2 over the task's T steps, from the full rate to m = `lr_min_factor`;
- plateau: × γ after `lr_patience` epochs without a better validation accuracy, the task stopped after more
  than `stop_patience` such epochs and its best epoch's weights kept (De Lange et al. 2019; clreg.train.plateau).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from clreg.core import optimizers
from clreg.core.options import Option, SettingError

OPTIMIZERS = tuple(optimizers.buildable())  # the registered optimisers a run can name (clreg.core.optimizers)
SCHEDULES = ("constant", "step", "exponential", "cosine", "plateau")

OPTIONS = (
    Option("optimizer", str, "adam", "adam (beta = 0.9, 0.999, eps = 1e-8), adamw (decoupled weight decay) or sgd",
           choices=OPTIMIZERS, key_when_default=False),
    Option("momentum", float, 0.0, "sgd: momentum", minimum=0.0, maximum=1.0, key_when_default=False),
    Option("nesterov", bool, False, "sgd: Nesterov momentum (needs momentum > 0)", key_when_default=False),
    Option("weight_decay", float, 0.0, "adam, sgd: L2 term added to the gradient; adamw: decoupled decay",
           minimum=0.0, key_when_default=False),
    Option("lr_schedule", str, "constant", "learning rate over each task, restarting at every task: "
           f"{', '.join(SCHEDULES[:-1])} or {SCHEDULES[-1]}", choices=SCHEDULES, key_when_default=False),
    Option("lr_gamma", float, 0.1, "step: factor every lr-step-epochs epochs; exponential: factor per epoch; "
           "plateau: factor after lr-patience epochs without a better validation accuracy",
           minimum=0.0, above=True, maximum=1.0, key_when_default=False),
    Option("lr_step_epochs", int, 1, "step: epochs between two decays", minimum=1, key_when_default=False),
    Option("lr_min_factor", float, 0.0, "cosine: the rate at the task's end, as a fraction of lr",
           minimum=0.0, maximum=1.0, key_when_default=False),
    Option("lr_patience", int, 5, "plateau: epochs without a better validation accuracy before the rate decays",
           minimum=1, key_when_default=False),
    Option("stop_patience", int, 10, "plateau: a task stops once more epochs than this have not improved; its "
           "best epoch's weights are kept (0: never stop early)", minimum=0, key_when_default=False),
)
DEFAULTS = {option.name: option.default for option in OPTIONS}
BY_NAME = {option.name: option for option in OPTIONS}
# a setting that only some optimisers (as they declare) or schedules read: set for another, it is refused
READ_BY_SOME = {name for entry in optimizers.buildable().values() for name in entry.reads}
APPLIES = {**{name: ("optimizer", tuple(n for n, e in optimizers.buildable().items() if name in e.reads))
              for name in sorted(READ_BY_SOME) if not all(name in e.reads for e in optimizers.buildable().values())},
           "lr_gamma": ("lr_schedule", ("step", "exponential", "plateau")), "lr_step_epochs": ("lr_schedule", ("step",)),
           "lr_min_factor": ("lr_schedule", ("cosine",)), "lr_patience": ("lr_schedule", ("plateau",)),
           "stop_patience": ("lr_schedule", ("plateau",))}


def check(settings: dict) -> None:
    """Raise ValueError for a setting that the chosen optimiser or schedule does not use (a run would
    silently ignore it) and for Nesterov without momentum."""
    for name, (chooser, users) in APPLIES.items():
        if settings[name] != DEFAULTS[name] and settings[chooser] not in users:
            raise SettingError(f"{{0}} applies to {{1}} {', '.join(users)} only, not {settings[chooser]!r}",
                               BY_NAME[name], BY_NAME[chooser])
    if settings["nesterov"] and settings["momentum"] == 0:
        raise SettingError("{0} needs {1} > 0", BY_NAME["nesterov"], BY_NAME["momentum"])


def make_optimizer(model: nn.Module, lr: float, settings: dict | None = None) -> torch.optim.Optimizer:
    """The optimiser `settings` (the OPTIONS by name; missing ones at their defaults) asks for, over all of
    `model`'s parameters, as its registry entry builds it (Adam and AdamW: torch's fused kernel where the device
    has one)."""
    s = {**DEFAULTS, **(settings or {})}
    return optimizers.buildable()[s["optimizer"]].build(model.parameters(), lr, s)


def lr_factor(settings: dict, steps: int, steps_per_epoch: int) -> Callable[[int], float]:
    """The schedule's factor on the learning rate at step t = 0 … steps − 1 of a task."""
    s = {**DEFAULTS, **settings}
    kind, gamma = s["lr_schedule"], s["lr_gamma"]
    if kind == "step":
        return lambda t: gamma ** ((t // steps_per_epoch) // s["lr_step_epochs"])
    if kind == "exponential":
        return lambda t: gamma ** (t / steps_per_epoch)
    if kind == "cosine":
        low = s["lr_min_factor"]
        return lambda t: low + (1 - low) * (1 + math.cos(math.pi * t / steps)) / 2
    return lambda t: 1.0


class Schedule:
    """Sets every parameter group's learning rate to lr · factor(t) after step t of a task. (Not torch's
    LambdaLR: that one warns when the optimiser's own step() was not called, as under the fused step.)"""

    def __init__(self, optimizer: torch.optim.Optimizer, factor: Callable[[int], float]):
        self.optimizer, self.factor, self.t = optimizer, factor, 0
        self.base = [group["lr"] for group in optimizer.param_groups]

    def step(self) -> None:
        """One optimiser step done: the rate for the next one."""
        self.t += 1
        for group, lr in zip(self.optimizer.param_groups, self.base):
            group["lr"] = lr * self.factor(self.t)


def make_schedule(optimizer: torch.optim.Optimizer, settings: dict, steps: int, steps_per_epoch: int) -> Schedule | None:
    """The schedule over one task of `steps` steps (None for a constant rate, and for plateau, which
    follows validation accuracy: clreg.train.plateau); call its step() after every optimiser step."""
    if {**DEFAULTS, **settings}["lr_schedule"] in ("constant", "plateau"):
        return None
    return Schedule(optimizer, lr_factor(settings, steps, steps_per_epoch))
