"""SPEC §7: SI's bias. Per step, the running sums over all parameters of SI's path integral Σ −g_t·Δ_t, SIU's
Σ −g'_t·Δ_t and SIB's Σ −(g_t − g'_t)·Δ_t; every k steps the path integral with the training set's full
gradient between checkpoints c, c': Σ −∇L(θ_c)·(θ_c' − θ_c) (the gradient at the start of each stretch, as SI
sums it; with k = 1 the quantity SI and SIU estimate) and the trapezoid Σ −½(∇L(θ_c) + ∇L(θ_c'))·(θ_c' − θ_c)
(exact for a quadratic loss), beside the actual decrease L(θ_0) − L(θ_c).
Sums run over every parameter the task trains (with a multi-head model: the shared ones and the task's head),
so that they add up to the loss decrease."""
from __future__ import annotations

import torch
from torch import Tensor

from .probe import Probe, trained_parameters

SUMS = ("si", "siu", "sib")


def _dot(a: list[Tensor], b: list[Tensor]) -> Tensor:
    """Σ a·b over both lists in float64, as a 0-dim tensor on their device (summed in list order, no host sync)."""
    return sum(torch.dot(x.reshape(-1).double(), y.reshape(-1).double()) for x, y in zip(a, b))


class BiasProbe(Probe):
    """Records the running sums per step and the full-gradient path integral per checkpoint, per task.

    The running sums stay on the parameters' device; they come to the host, with those of every step since,
    at each checkpoint (every k steps) and at the task's end.
    """

    def __init__(self, every: int):
        if every < 1:
            raise ValueError(f"the full gradient is taken every k >= 1 steps, got {every}")
        self.full_gradient_every = every
        self.tasks: list[dict] = []

    def task_started(self, trainer, task) -> None:  # noqa: D102
        self.current = {"task": task, "si": [], "siu": [], "sib": [], "checkpoints": []}
        self.sums = torch.zeros(len(SUMS), dtype=torch.float64, device=trainer.reg.params[0].device)
        self.pending: list[Tensor] = []  # self.sums after each step not yet brought to the host
        self.last = None  # (θ_c, ∇L(θ_c)) of the last checkpoint
        self.full_path = self.trapezoid = 0.0
        self.start_loss = None

    def stepped(self, trainer, grads, independent, delta) -> None:  # noqa: D102
        delta = [d.double() for d in delta]  # widened once for the three sums
        sib = _dot(torch._foreach_sub(grads, independent), delta)  # computed on its own, not as si − siu
        self.sums = self.sums - torch.stack([_dot(grads, delta), _dot(independent, delta), sib])
        self.pending.append(self.sums)

    def flush(self) -> dict[str, float]:
        """Bring the running sums of the steps since the last flush to the host (one transfer) and append them
        to the task's record; returns the current sums."""
        *steps, sums = torch.stack([*self.pending, self.sums]).tolist()
        self.pending = []
        for i, name in enumerate(SUMS):
            self.current[name] += [row[i] for row in steps]
        return dict(zip(SUMS, sums))

    def checkpoint(self, trainer, step, loss, full, batch) -> None:  # noqa: D102
        theta = [p.detach().clone() for p in trained_parameters(trainer, trainer.current_task)]
        if self.last is None:
            self.start_loss = loss
        else:
            moved = torch._foreach_sub(theta, self.last[0])
            start_term, end_term = (-torch.stack([_dot(self.last[1], moved), _dot(full, moved)])).tolist()
            self.full_path += start_term  # as SI sums it: the gradient where each stretch starts
            self.trapezoid += 0.5 * (start_term + end_term)  # exact for a quadratic loss
        self.last = (theta, [g.clone() for g in full])
        self.current["checkpoints"].append({"step": step, "loss": loss, "loss_decrease": self.start_loss - loss,
                                            "full_gradient_path": self.full_path,
                                            "full_gradient_path_trapezoid": self.trapezoid, **self.flush()})

    def task_ended(self, trainer, task) -> None:  # noqa: D102
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
