"""docs/algorithms.md §9, figure J.1: gradient noise. Every k steps, at θ_t: ‖g_batch − g_full‖², ‖g_full‖² and their ratio,
where g_batch is the step's minibatch gradient and g_full the training set's (both task loss, dropout off)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from clreg.analysis.probe import Probe

THRESHOLDS = (0.1, 1.0, 10.0, 100.0)


def _squared_norm(tensors: list[Tensor]) -> Tensor:
    """Σ‖t‖² over the list in float64, as a 0-dim tensor on the tensors' device."""
    return torch.stack([t.double().square().sum() for t in tensors]).sum()


class NoiseProbe(Probe):
    """Per checkpoint, the squared norms and their ratio; per task and overall, the fraction above thresholds."""

    def __init__(self, every: int, thresholds: Sequence[float] = THRESHOLDS):
        if every < 1:
            raise ValueError(f"the full gradient is taken every k >= 1 steps, got {every}")
        self.full_gradient_every, self.thresholds = every, tuple(thresholds)
        self.records: list[dict] = []

    def checkpoint(self, trainer, step, loss, full, batch) -> None:  # noqa: D102
        if batch is None:
            return
        difference = [b.double() - f.double() for b, f in zip(batch, full)]
        noise, signal = torch.stack([_squared_norm(difference), _squared_norm(full)]).tolist()  # one transfer
        self.records.append({"task": trainer.current_task, "step": step, "noise": noise, "full": signal,
                             "ratio": noise / signal if signal > 0 else None})

    def state_dict(self) -> dict:  # noqa: D102
        return {"records": self.records}

    def load_state_dict(self, state: dict) -> None:  # noqa: D102
        self.records = state["records"]

    def load_records(self, data: dict) -> None:  # noqa: D102
        self.records = list(data["records"])

    def summary(self) -> dict:
        """Fraction of recorded steps whose ratio exceeds each threshold, overall and per task."""
        def fractions(rows):
            ratios = np.array([r["ratio"] for r in rows if r["ratio"] is not None])
            return {f"{x:g}": float((ratios > x).mean()) if len(ratios) else None for x in self.thresholds}
        tasks = sorted({r["task"] for r in self.records})
        ratios = [r["ratio"] for r in self.records if r["ratio"] is not None]
        return {"fraction_above": fractions(self.records),
                "per_task": {t: fractions([r for r in self.records if r["task"] == t]) for t in tasks},
                "median_ratio": float(np.median(ratios)) if ratios else None, "steps_recorded": len(self.records)}
