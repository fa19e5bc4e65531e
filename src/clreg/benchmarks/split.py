"""Task-incremental benchmarks (docs/algorithms.md §6): each task is a group of classes, relabelled 0..k−1, with its own
head; a fixed 90/10 train/validation split per task; task identity known at training and test."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from clreg.data import load_mnist
from clreg.data.cifar import load_cifar10, load_cifar100
from clreg.benchmarks.base import HOLDOUT, Benchmark, Defaults, Split, check_evaluate_on, check_task_count
from clreg.benchmarks.registry import register


@dataclass
class TaskData:
    """One task: its training split, its evaluation split (validation or test), its number of classes and
    its validation split (for validation-based schedules and stopping; never trained on)."""

    train: Split
    evaluation: Split
    classes: int
    validation: Split | None = None


class SplitBenchmark(Benchmark):
    """A sequence of tasks with their own data and heads (multi-head, task-incremental)."""

    multi_head = True
    drop_last = True  # an epoch is ⌊n/b⌋ full batches of one shuffle

    def __init__(self, name: str, tasks: Sequence[TaskData]):
        if not tasks:
            raise ValueError(f"{name}: no tasks")
        self.name, self.tasks = name, list(tasks)
        self.num_tasks = len(self.tasks)
        self.input_shape = tuple(self.tasks[0].train.x.shape[1:])
        self.classes = [t.classes for t in self.tasks]

    def split(self, task: int, which: str) -> Split | None:  # noqa: D102
        return getattr(self.tasks[task], which)

    def to(self, device: torch.device) -> "SplitBenchmark":
        """Move every task's splits to `device`, once per run (in place; returns self)."""
        self.tasks = [TaskData(t.train.to(device), t.evaluation.to(device), t.classes,
                               None if t.validation is None else t.validation.to(device)) for t in self.tasks]
        return self

    def describe(self) -> dict:
        """Plain-data description for run records."""
        return {"name": self.name, "tasks": self.num_tasks, "multi_head": True, "classes": self.classes,
                "train_size": [len(t.train) for t in self.tasks],
                "evaluation_size": [len(t.evaluation) for t in self.tasks]}


def class_tasks(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
                groups: Sequence[Sequence[int]], evaluate_on: str, flatten: bool = False) -> list[TaskData]:
    """One task per group of classes, labels relabelled to their position in the group; the last 10% of a
    task's training examples (file order) are its validation set, used for training never."""
    check_evaluate_on(evaluate_on)
    tasks = []
    for group in groups:
        relabel = np.full(int(max(y_train.max(), y_test.max(), max(group))) + 1, -1, dtype=np.int64)
        relabel[list(group)] = np.arange(len(group))
        train_mask, test_mask = np.isin(y_train, group), np.isin(y_test, group)
        train, validation = Split.from_images(x_train[train_mask], relabel[y_train[train_mask]], flatten).head(HOLDOUT)
        test = Split.from_images(x_test[test_mask], relabel[y_test[test_mask]], flatten)
        tasks.append(TaskData(train, validation if evaluate_on == "validation" else test, len(group), validation))
    return tasks


def split_cifar10_100(num_tasks: int | None = None, evaluate_on: str = "test", data_dir: str | Path | None = None,
                      trust_pickle: bool = False) -> SplitBenchmark:
    """docs/algorithms.md §6: CIFAR-10, then CIFAR-100 fine classes 0–9, 10–19, ..., 40–49, each a 10-way task."""
    count = check_task_count("split-cifar10-100", num_tasks, 6)
    c10 = load_cifar10(data_dir, trust_pickle)
    tasks = class_tasks(c10.x_train, c10.y_train, c10.x_test, c10.y_test, [range(10)], evaluate_on)
    if count > 1:
        c100 = load_cifar100(data_dir, trust_pickle)
        groups = [range(10 * i, 10 * i + 10) for i in range(count - 1)]
        tasks += class_tasks(c100.x_train, c100.y_train, c100.x_test, c100.y_test, groups, evaluate_on)
    return SplitBenchmark("split-cifar10-100", tasks)


def split_cifar10(num_tasks: int | None = None, evaluate_on: str = "test", data_dir: str | Path | None = None,
                  trust_pickle: bool = False) -> SplitBenchmark:
    """CIFAR-10 as 5 tasks of 2 classes (0/1, 2/3, ...), same network and protocol as split-cifar10-100."""
    count = check_task_count("split-cifar10", num_tasks, 5)
    c10 = load_cifar10(data_dir, trust_pickle)
    groups = [(2 * i, 2 * i + 1) for i in range(count)]
    return SplitBenchmark("split-cifar10", class_tasks(c10.x_train, c10.y_train, c10.x_test, c10.y_test, groups,
                                                       evaluate_on))


def split_mnist(num_tasks: int | None = None, evaluate_on: str = "test", data_dir: str | Path | None = None
                ) -> SplitBenchmark:
    """MNIST as 5 tasks of 2 digits (0/1, 2/3, ...), task-incremental, an MLP body with 2-way heads."""
    count = check_task_count("split-mnist", num_tasks, 5)
    mnist = load_mnist(data_dir)
    groups = [(2 * i, 2 * i + 1) for i in range(count)]
    return SplitBenchmark("split-mnist", class_tasks(mnist.x_train, mnist.y_train, mnist.x_test, mnist.y_test,
                                                     groups, evaluate_on, flatten=True))


CIFAR_METHODS = {"si": (5.0, True), "siu": (2.0, False), "sib": (5.0, True), "sos": (500.0, True), "mas": (200.0, True),
                 "af": (1000.0, True), "sqrt-fisher": (10.0, True), "fisher": (5e4, True), "mas-logits": (0.1, True),
                 "finetune": (0.0, False)}
CIFAR = Defaults("cifar-cnn", (32, 64, 512), 1e-3, 500, epochs=60, lr=1e-3)  # lr not scaled with b (§5)
register("split-mnist", lambda r: split_mnist(r.tasks, r.evaluate_on, r.data_dir), Defaults("mlp", (400, 400), 0.1, 1000))
register("split-cifar10-100", lambda r: split_cifar10_100(r.tasks, r.evaluate_on, r.data_dir, r.trust_pickle),
         Defaults(**{**CIFAR.__dict__, "methods": CIFAR_METHODS}), options=("trust_pickle",))
register("split-cifar10", lambda r: split_cifar10(r.tasks, r.evaluate_on, r.data_dir, r.trust_pickle), CIFAR,
         options=("trust_pickle",))
