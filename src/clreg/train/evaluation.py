"""Accuracy of a model on one task's evaluation or validation split."""
from __future__ import annotations

import torch
from torch import nn

from clreg.benchmarks import Benchmark
from clreg.models import task_forward


@torch.no_grad()
def evaluate(model: nn.Module, bench: Benchmark, task: int, split: str = "evaluation") -> float:
    """Accuracy of `model` (through head `task` if it has heads) on the evaluation split of `task` (or its
    validation split: split="validation")."""
    was_training = model.training
    model.eval()
    forward = task_forward(model, task)
    correct, total = 0, 0
    for x, y in getattr(bench, f"{split}_batches")(task):
        correct = correct + (forward(x).argmax(1) == y).sum()  # stays on the device: one transfer per task
        total += len(y)
    model.train(was_training)
    return int(correct) / total
