"""One training step in one pass: penalty gradient, Adam/AdamW update and trajectory statistic.

`Regularizer.step(optimizer)` uses this when the optimiser is a plain `torch.optim.Adam` or `AdamW`
on float32 CPU tensors and the native kernel is available (`clreg.core.native`); otherwise it runs the
penalty gradient, `optimizer.step()` and the statistic's foreach backend (`StepStatistic.apply_`), which
agree to float rounding, not bit for bit (docs/development.md, "Reproducibility"). The kernel executes a
measure's declared `StepStatistic`; it defines none itself. The optimiser's own state (`exp_avg`,
`exp_avg_sq`, `step`) is read and written, so the two paths can alternate between tasks and `optimizer.state_dict()` stays valid.
"""
from __future__ import annotations

import torch
from torch import Tensor

from clreg.core import native, optimizers
from clreg.core.shards import local
from clreg.core.statistic import StepStatistic

KINDS = {"path": 1, "moment": 2}  # the statistic kinds the kernel executes, by its code for them
UPDATES = (optimizers.ADAM, optimizers.ADAMW)  # the optimiser entries it executes


def _plain_float32_cpu(t: Tensor | None) -> bool:
    return t is not None and t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous() \
        and not t.is_sparse


def supported(optimizer: torch.optim.Optimizer, statistic: StepStatistic | None = None) -> bool:
    """True if the kernel can stand in for the "eager" backend's step of `optimizer` (and `statistic`)."""
    entry = optimizers.lookup(optimizer)
    if native.load() is None or entry not in UPDATES or (statistic is not None and statistic.kind not in KINDS):
        return False
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.grad is None:
                continue
            if not (_plain_float32_cpu(local(p)) and _plain_float32_cpu(local(p.grad))):
                return False
            state = optimizer.state.get(p)
            if state and not all(_plain_float32_cpu(local(state.get(k))) for k in entry.state):
                return False
    return True


def _pointer(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


@torch.no_grad()
def adam_step(optimizer: torch.optim.Optimizer, regularized: dict[Tensor, tuple], penalty: int,
              statistic: StepStatistic | None, task_weight: float, other_weight: float,
              penalty_scalars: tuple[float, float] = (1.0, 0.0)) -> None:
    """One Adam/AdamW step over every parameter with a gradient (as clreg.core.step.optimizer_step).

    `regularized` maps a parameter to (centre, weight, statistic state, other gradient) — entries None
    where unused, 2P = weight·penalty_scalars[0] + penalty_scalars[1]; `penalty` is 0 (none), 1 (add ∇R to g)
    or 2 (g already holds ∇R).
    """
    kernel = native.load().clreg_fused_step
    entry = optimizers.lookup(optimizer)
    options = native.StepOptions(threads=torch.get_num_threads(), task_weight=task_weight, other_weight=other_weight,
                                 penalty_scale=penalty_scalars[0], penalty_offset=penalty_scalars[1])
    if statistic is not None:
        for name, value in statistic.scalars().items():
            setattr(options, name, value)
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.grad is None:
                continue
            state = optimizer.state[p]
            for name, value in entry.scalars(group, entry.advance(state, p, group)).items():
                setattr(options, name, value)
            centre, weight, stat, other = regularized.get(p, (None, None, None, None))
            options.penalty = penalty if centre is not None else 0
            options.narrow = int(centre is not None and centre.dtype == torch.bfloat16)  # Ω and θ* stored in bf16
            options.statistic = KINDS[statistic.kind] if stat is not None else 0
            shard = local(p)  # a sharded parameter's local shard, and its gradient's and state's (clreg.core.shards)
            kernel(shard.numel(), options, shard.data_ptr(), local(p.grad).data_ptr(), local(state["exp_avg"]).data_ptr(),
                   local(state["exp_avg_sq"]).data_ptr(), _pointer(centre), _pointer(weight),
                   _pointer(stat), _pointer(other))
