"""One training step in one pass: penalty gradient, Adam/AdamW update and trajectory statistic.

`Regularizer.step(optimizer)` uses this when the optimiser is a plain `torch.optim.Adam` or `AdamW`
on float32 CPU tensors and the native kernel is available (`clreg.core.native`); otherwise it runs the
penalty gradient, `optimizer.step()` and the statistic's foreach backend (`StepStatistic.apply_`), which
give the same numbers. The kernel executes a measure's declared `StepStatistic`; it defines none itself. The
optimiser's own state (`exp_avg`, `exp_avg_sq`, `step`) is read and written, so the two paths can
alternate between tasks and `optimizer.state_dict()` stays valid.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from clreg.core import native
from clreg.core.statistic import StepStatistic


_KIND = {"path": 1, "moment": 2}


def _plain_float32_cpu(t: Tensor | None) -> bool:
    return t is not None and t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous() \
        and not t.is_sparse


def supported(optimizer: torch.optim.Optimizer) -> bool:
    """True if the fused kernel can stand in for `optimizer.step()` exactly."""
    if native.load() is None or type(optimizer) not in (torch.optim.Adam, torch.optim.AdamW):
        return False
    if optimizer._optimizer_step_pre_hooks or optimizer._optimizer_step_post_hooks:
        return False
    from torch.optim.optimizer import _global_optimizer_post_hooks, _global_optimizer_pre_hooks

    if _global_optimizer_pre_hooks or _global_optimizer_post_hooks:
        return False
    for group in optimizer.param_groups:
        if group["amsgrad"] or group["maximize"] or group["differentiable"] or group["capturable"]:
            return False
        if any(torch.is_tensor(group[k]) for k in ("lr", "weight_decay", "eps")) or \
                any(torch.is_tensor(b) for b in group["betas"]):
            return False
        for p in group["params"]:
            if p.grad is None:
                continue
            if not (_plain_float32_cpu(p) and _plain_float32_cpu(p.grad)):
                return False
            state = optimizer.state.get(p)
            if state and not all(_plain_float32_cpu(state.get(k)) for k in ("exp_avg", "exp_avg_sq")):
                return False
    return True


def _state(optimizer: torch.optim.Optimizer, p: Tensor) -> dict:
    state = optimizer.state[p]
    if len(state) == 0:  # the same lazy initialisation as torch.optim.Adam
        state["step"] = torch.zeros((), dtype=torch.float32)
        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    return state


def _pointer(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


@torch.no_grad()
def adam_step(optimizer: torch.optim.Optimizer, regularized: dict[Tensor, tuple], penalty: int,
              statistic: StepStatistic | None, task_weight: float, other_weight: float) -> None:
    """One Adam/AdamW step over every parameter with a gradient.

    `regularized` maps a parameter to (anchor, 2P, statistic state, other gradient) — entries None
    where unused; `penalty` is 0 (none), 1 (add ∇R to g) or 2 (g already holds ∇R).
    """
    kernel = native.load().clreg_fused_step
    options = native.StepOptions(threads=torch.get_num_threads(), task_weight=task_weight,
                                 other_weight=other_weight)
    if statistic is not None:
        options.decay = statistic.decay
    for group in optimizer.param_groups:
        beta1, beta2 = group["betas"]
        options.lr, options.beta1, options.beta2 = group["lr"], beta1, beta2
        options.eps, options.weight_decay = group["eps"], group["weight_decay"]
        options.decoupled = int(bool(group.get("decoupled_weight_decay", False)))
        for p in group["params"]:
            if p.grad is None:
                continue
            state = _state(optimizer, p)
            state["step"] += 1
            step = float(state["step"])
            options.bias_correction1 = 1.0 - beta1 ** step
            options.bias_correction2_sqrt = math.sqrt(1.0 - beta2 ** step)
            anchor, twice_precision, stat, other = regularized.get(p, (None, None, None, None))
            options.penalty = penalty if anchor is not None else 0
            options.statistic = _KIND[statistic.kind] if stat is not None else 0
            kernel(p.numel(), options, p.data_ptr(), p.grad.data_ptr(), state["exp_avg"].data_ptr(),
                   state["exp_avg_sq"].data_ptr(), _pointer(anchor), _pointer(twice_precision),
                   _pointer(stat), _pointer(other))
