"""What both framework adapters (Lightning, the Hugging Face Trainer) do around an optimiser step that is not
theirs to call, and at a task's end: written once here, each adapter only reads its framework's hooks."""
from __future__ import annotations

from typing import Any, Callable

from torch import Tensor, nn

from clreg.integrations.samples import end_task
from clreg.regularizer import Regularizer, has_active_dropout

TaskLoss = Callable[[nn.Module, Any], Tensor]  # (model, batch) -> the task loss


def needs_task_gradient(reg: Regularizer, model: nn.Module) -> bool:
    """True if the measure reads g_t and the model's dropout is on: g_t is then taken again with it off, on the
    step's batches (docs/algorithms.md §2)."""
    measure = reg.measure
    return measure.trajectory and measure.uses_task_gradient and has_active_dropout(model)


def prepare_step(reg: Regularizer, model: nn.Module, task_loss: TaskLoss, window: list,
                 next_independent: Callable[[], Any]) -> None:
    """Just before the framework's optimiser step, gradients in place: the closures the measure needs (g_t on the
    step's micro-batches `window`, where any; g'_t on the batch `next_independent()` draws), then ∇R into .grad."""
    task_closure = independent_closure = None
    if window:
        batches = list(window)
        task_closure = lambda: sum(task_loss(model, b) for b in batches) / len(batches)  # noqa: E731
    if reg.needs_independent_batch:
        other = next_independent()
        independent_closure = lambda: task_loss(model, other)  # noqa: E731
    if task_closure is not None or independent_closure is not None:
        reg.before_step(task_loss=task_closure, independent_loss=independent_closure)
    reg.prepare_step()


def finish_step(reg: Regularizer, stepped: bool) -> None:
    """After the framework's optimiser step: the measure's statistic, or nothing where the step was skipped (a
    mixed-precision overflow)."""
    if stepped:
        reg.after_step()
    else:
        reg.skip_step()


def finish_task(reg: Regularizer | None, data: Any, samples: int, key: str | None = None,
                forward: Callable | None = None, pad: dict | None = None,
                labels: Callable[[Tensor], Tensor] | None = None) -> dict[str, Tensor] | None:
    """An adapter's `end_task`: ω on the first `samples` inputs of `data` where the measure needs a sample,
    Ω ← Ω + ω, θ* ← θ. Returns ω by parameter name."""
    if reg is None:
        raise ValueError("end_task comes after training: the regulariser is built when training starts")
    return end_task(reg, data, samples, key, forward, pad, labels)


def state(reg: Regularizer, tasks_done: int) -> dict:
    """What an adapter's checkpoint holds."""
    return {"regularizer": reg.state_dict(), "tasks_done": tasks_done}


def restore(reg: Regularizer, saved: dict) -> int:
    """Load `state`'s dict into `reg`; returns the tasks done."""
    reg.load_state_dict(saved["regularizer"])
    return int(saved["tasks_done"])
