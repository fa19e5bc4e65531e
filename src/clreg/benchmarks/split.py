"""Task-incremental benchmarks (SPEC §5): each task is a group of classes, relabelled 0..k−1, with its own
head; a fixed 90/10 train/validation split per task; task identity known at training and test."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from clreg.data import load_mnist
from clreg.data.cifar import load_cifar10, load_cifar100
from clreg.benchmarks.base import HOLDOUT, Split, check_evaluate_on, check_task_count


@dataclass
class TaskData:
    """One task: its training split, its evaluation split (validation or test), its number of classes and
    its validation split (for validation-based schedules and stopping; never trained on)."""

    train: Split
    evaluation: Split
    classes: int
    validation: Split | None = None


class SplitBenchmark:
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

    @property
    def device(self) -> torch.device:
        """Where the data lives."""
        return self.tasks[0].train.x.device

    def to(self, device: torch.device) -> "SplitBenchmark":
        """Move every task's splits to `device`, once per run (in place; returns self)."""
        self.tasks = [TaskData(t.train.to(device), t.evaluation.to(device), t.classes,
                               None if t.validation is None else t.validation.to(device)) for t in self.tasks]
        return self

    def train_size(self, task: int) -> int:
        """Number of training examples of `task`."""
        return len(self.tasks[task].train)

    def epoch_size(self, task: int) -> int:
        """Examples per epoch of `task`: its training set."""
        return self.train_size(task)

    def batch(self, task: int, index: Tensor) -> tuple[Tensor, Tensor]:
        """Training examples `index` of `task`."""
        split = self.tasks[task].train
        return split.x[index], split.y[index]

    def evaluation_batches(self, task: int, batch_size: int = 1000) -> Iterator[tuple[Tensor, Tensor]]:
        """The evaluation split of `task` (test or validation), in chunks."""
        yield from _chunks(self.tasks[task].evaluation, batch_size)

    @property
    def has_validation(self) -> bool:
        """True if every task keeps a validation split (for lr_schedule plateau and lr_search)."""
        return all(t.validation is not None for t in self.tasks)

    def validation_batches(self, task: int, batch_size: int = 1000) -> Iterator[tuple[Tensor, Tensor]]:
        """The validation split of `task`, in chunks, whatever the evaluation split is."""
        split = self.tasks[task].validation
        if split is None:
            raise ValueError(f"{self.name} keeps no validation split for task {task + 1}")
        yield from _chunks(split, batch_size)

    def describe(self) -> dict:
        """Plain-data description for run records."""
        return {"name": self.name, "tasks": self.num_tasks, "multi_head": True, "classes": self.classes,
                "train_size": [len(t.train) for t in self.tasks],
                "evaluation_size": [len(t.evaluation) for t in self.tasks]}


def _chunks(split: Split, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
    for start in range(0, len(split), batch_size):
        yield split.x[start:start + batch_size], split.y[start:start + batch_size]


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
    """SPEC §5: CIFAR-10, then CIFAR-100 fine classes 0–9, 10–19, ..., 40–49, each a 10-way task."""
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
