"""docs/algorithms.md §9: SI's bias. Per step, the running sums over all parameters of SI's path integral Σ −g_t·Δ_t, SIU's
Σ −g'_t·Δ_t and SIB's Σ −(g_t − g'_t)·Δ_t; every k steps the path integral with the training set's full
gradient between checkpoints c, c': Σ −∇L(θ_c)·(θ_c' − θ_c) (the gradient at the start of each stretch, as SI
sums it; with k = 1 the quantity SI and SIU estimate) and the trapezoid Σ −½(∇L(θ_c) + ∇L(θ_c'))·(θ_c' − θ_c)
(exact for a quadratic loss), beside the actual decrease L(θ_0) − L(θ_c).
The running sums are cumulative, so recording them every r steps (and at each epoch's end and the task's last
step) keeps exact values at those steps: `record_every` thins the record, not the sums.
Sums run over every parameter the task trains (with a multi-head model: the shared ones and the task's head),
so that they add up to the loss decrease."""
from __future__ import annotations

import torch
from torch import Tensor

from clreg import importance
from clreg.analysis.probe import Probe, trained_parameters
from clreg.core import formulas

SUMS = ("si", "siu", "sib")
# each sum's u = a·g_t + b·g'_t: the measures' own declarations (clreg.importance.trajectory)
STATISTICS = {name: importance.measure_class(name)().step_statistic() for name in SUMS}


def path_sum(u: list[Tensor], delta: list[Tensor]) -> Tensor:
    """Σ over all parameters of one step of the path integral, −u ⊙ Δ (clreg.core.formulas.path from s = 0), in
    float64, as a 0-dim tensor on their device (summed in list order, no host sync)."""
    zero = torch.zeros((), dtype=torch.float64, device=u[0].device)
    return sum(formulas.path(zero, x.double(), d.double()).sum() for x, d in zip(u, delta))


def recorded(step: int, record_every: int, steps_per_epoch: int) -> bool:
    """Whether the running sums after `step` (counted from 1 within the task) are recorded: every
    `record_every`-th step and each epoch's last (the task's last step is recorded as well)."""
    return step % record_every == 0 or step % steps_per_epoch == 0


def recorded_steps(task: dict) -> list[int]:
    """The steps (from 1) at which a task's record holds the running sums; records from before `record_every`
    existed hold every step."""
    return task.get("steps") or list(range(1, len(task["si"]) + 1))


def thin_record(task: dict, record_every: int, steps_per_epoch: int) -> dict:
    """A task's record as `BiasProbe(record_every=...)` would have kept it, from a record that kept more steps
    (every one, or those of a divisor of `record_every`): the sums are cumulative, so the kept values are exact."""
    steps = recorded_steps(task)
    keep = [i for i, step in enumerate(steps) if recorded(step, record_every, steps_per_epoch) or i == len(steps) - 1]
    return {**task, "steps_per_epoch": steps_per_epoch, "steps": [steps[i] for i in keep],
            **{name: [task[name][i] for i in keep] for name in SUMS}}


class BiasProbe(Probe):
    """Records the running sums per step (every `record_every`-th, each epoch's last and the task's last) and
    the full-gradient path integral per checkpoint (every `every` steps), per task.

    The running sums stay on the parameters' device; the recorded ones come to the host at each checkpoint
    and at the task's end.
    """

    def __init__(self, every: int, record_every: int = 1):
        if every < 1:
            raise ValueError(f"the full gradient is taken every k >= 1 steps, got {every}")
        if record_every < 1:
            raise ValueError(f"the running sums are recorded every r >= 1 steps, got {record_every}")
        self.full_gradient_every, self.record_every = every, record_every
        self.tasks: list[dict] = []

    def task_started(self, trainer, task) -> None:  # noqa: D102
        self.per_epoch = trainer.steps_per_epoch(task)
        self.current = {"task": task, "steps_per_epoch": self.per_epoch, "steps": [], "si": [], "siu": [],
                        "sib": [], "checkpoints": []}
        self.step = 0
        self.sums = torch.zeros(len(SUMS), dtype=torch.float64, device=trainer.reg.params[0].device)
        self.pending: list[tuple[int, Tensor]] = []  # (step, self.sums) recorded, not yet brought to the host
        self.last = None  # (θ_c, ∇L(θ_c)) of the last checkpoint
        self.full_path = self.trapezoid = 0.0
        self.start_loss = None

    def stepped(self, trainer, grads, independent, delta) -> None:  # noqa: D102
        delta = [d.double() for d in delta]  # widened once for the three sums
        # each sum from its own u (SIB's g − g' computed as such, not as si − siu)
        self.sums = self.sums + torch.stack([path_sum(STATISTICS[name].combine(grads, independent), delta)
                                             for name in SUMS])
        self.step += 1
        if recorded(self.step, self.record_every, self.per_epoch):
            self.pending.append((self.step, self.sums))

    def flush(self) -> dict[str, float]:
        """Bring the recorded running sums since the last flush to the host (one transfer) and append them to
        the task's record; returns the current sums."""
        *rows, sums = torch.stack([*(s for _, s in self.pending), self.sums]).tolist()
        self.current["steps"] += [step for step, _ in self.pending]
        self.pending = []
        for i, name in enumerate(SUMS):
            self.current[name] += [row[i] for row in rows]
        return dict(zip(SUMS, sums))

    def checkpoint(self, trainer, step, loss, full, batch) -> None:  # noqa: D102
        theta = [p.detach().clone() for p in trained_parameters(trainer, trainer.current_task)]
        if self.last is None:
            self.start_loss = loss
        else:
            moved = torch._foreach_sub(theta, self.last[0])
            start_term, end_term = torch.stack([path_sum(self.last[1], moved), path_sum(full, moved)]).tolist()
            self.full_path += start_term  # as SI sums it: the gradient where each stretch starts
            self.trapezoid += 0.5 * (start_term + end_term)  # exact for a quadratic loss
        self.last = (theta, [g.clone() for g in full])
        self.current["checkpoints"].append({"step": step, "loss": loss, "loss_decrease": self.start_loss - loss,
                                            "full_gradient_path": self.full_path,
                                            "full_gradient_path_trapezoid": self.trapezoid, **self.flush()})

    def task_ended(self, trainer, task) -> None:  # noqa: D102
        if self.step and not recorded(self.step, self.record_every, self.per_epoch):
            self.pending.append((self.step, self.sums))  # the last step, where a callback ended the task early
        s = self.flush()
        self.current.update(ratio_si_to_siu=s["si"] / s["siu"] if s["siu"] else None, totals=s,
                            loss_decrease=self.current["checkpoints"][-1]["loss_decrease"],
                            full_gradient_path=self.full_path, full_gradient_path_trapezoid=self.trapezoid)
        self.tasks.append(self.current)
        self.last = None

    def state_dict(self) -> dict:  # noqa: D102
        return {"tasks": self.tasks}

    def load_state_dict(self, state: dict) -> None:  # noqa: D102
        self.tasks = state["tasks"]

    def load_records(self, data: dict) -> None:  # noqa: D102
        self.tasks = list(data["tasks"])
