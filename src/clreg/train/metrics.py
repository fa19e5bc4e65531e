"""Continual-learning metrics of an accuracy matrix A[k, j] (after task k, on task j), docs/algorithms.md §7."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def average_accuracy(a: np.ndarray) -> float:
    """Mean of the last row: accuracy on all tasks after the last one."""
    return float(np.mean(a[-1]))


def average_seen(a: np.ndarray) -> list[float]:
    """After each task k, the mean accuracy over tasks 1..k."""
    return [float(np.mean(a[k, : k + 1])) for k in range(a.shape[0])]


def forgetting(a: np.ndarray) -> list[float]:
    """f_j = max_{k<K} A[k, j] − A[K, j] for every task j < K (empty for a single task)."""
    k_last = a.shape[0] - 1
    return [float(np.max(a[j:k_last, j]) - a[k_last, j]) for j in range(k_last)]


def backward_transfer(a: np.ndarray) -> float:
    """BWT = mean_{j<K} (A[K, j] − A[j, j]); 0 for a single task."""
    k_last = a.shape[0] - 1
    if k_last == 0:
        return 0.0
    return float(np.mean([a[k_last, j] - a[j, j] for j in range(k_last)]))


def summary(a: np.ndarray) -> dict:
    """All metrics of one run as plain data."""
    f = forgetting(a)
    return {"average_accuracy": average_accuracy(a), "average_seen": average_seen(a),
            "forgetting": f, "mean_forgetting": float(np.mean(f)) if f else 0.0,
            "bwt": backward_transfer(a)}


LEARNING_MARGIN = 0.05  # a run "did not learn" below chance + this, in average accuracy (docs/algorithms.md §5)


def chance(classes: int | Sequence[int], tasks: int) -> float:
    """The average accuracy of guessing: mean over the tasks of 1 / (classes of the task's head); `classes` is
    one count for every task (one shared head) or one per task."""
    per_task = [classes] * tasks if isinstance(classes, int) else list(classes)
    return float(np.mean([1.0 / c for c in per_task]))


def did_not_learn(average: float, chance_level: float) -> bool:
    """True if an average accuracy is below chance + LEARNING_MARGIN."""
    return average < chance_level + LEARNING_MARGIN


def mean_and_stderr(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error of the mean over seeds (s.e. 0 for a single value)."""
    x = np.asarray(values, dtype=float)
    if x.size < 2:
        return float(x.mean()), 0.0
    return float(x.mean()), float(x.std(ddof=1) / math.sqrt(x.size))
