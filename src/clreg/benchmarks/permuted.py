"""Domain-incremental benchmarks: every task (the first included) is a fixed pixel permutation (SPEC §5)."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import torch
from torch import Tensor

from clreg.data import ImageDataset, load_digits, load_fashion_mnist, load_mnist
from clreg.benchmarks.base import HOLDOUT, Split, check_evaluate_on, derive_seed


class PermutedBenchmark:
    """One shared head; task t's inputs are the same images with pixels permuted by permutation t."""

    multi_head = False
    drop_last = False  # an "epoch" is ⌊epoch_size/b⌋ steps of a stream of consecutive shuffles

    def __init__(self, name: str, train: Split, evaluation: Split, num_tasks: int, seed: int,
                 num_classes: int = 10, epoch_size: int | None = None, validation: Split | None = None):
        if num_tasks < 1:
            raise ValueError(f"tasks must be >= 1, got {num_tasks}")
        self.name, self.train, self.evaluation, self.validation = name, train, evaluation, validation
        self.num_tasks, self.classes = num_tasks, num_classes
        self.in_features = train.x.shape[1]
        self.input_shape = (self.in_features,)
        self._epoch_size = epoch_size or len(train.y)
        self.permutations = [torch.randperm(self.in_features, generator=torch.Generator().manual_seed(
            derive_seed(seed, 1, task))) for task in range(num_tasks)]
        self.subsets: list[Tensor] | None = None  # per task, the training examples it has (subsample)

    def subsample(self, sizes: list[int], seed: int) -> "PermutedBenchmark":
        """Give task t only sizes[t] training examples, a fixed random subset drawn from the run's seed (one
        per task); a task's epoch is then its own size. Tasks of different sizes, in either order, test
        how a measure values tasks trained for fewer steps. Returns self."""
        if len(sizes) != self.num_tasks:
            raise ValueError(f"task_sizes gives {len(sizes)} sizes; {self.name} has {self.num_tasks} tasks here: "
                             "give one size per task")
        available = len(self.train.y)
        if any(not 1 <= n <= available for n in sizes):
            raise ValueError(f"task_sizes must be between 1 and {available} (the training examples), got {sizes}")
        self.subsets = [torch.randperm(available, generator=torch.Generator().manual_seed(derive_seed(seed, 6, t)))[:n]
                        .to(self.device) for t, n in enumerate(sizes)]
        return self

    @property
    def device(self) -> torch.device:
        """Where the data lives."""
        return self.train.x.device

    def to(self, device: torch.device) -> "PermutedBenchmark":
        """Move the splits and permutations to `device`, once per run (in place; returns self)."""
        self.train, self.evaluation = self.train.to(device), self.evaluation.to(device)
        self.validation = None if self.validation is None else self.validation.to(device)
        self.permutations = [p.to(device) for p in self.permutations]
        if self.subsets is not None:
            self.subsets = [s.to(device) for s in self.subsets]
        return self

    def train_size(self, task: int) -> int:
        """Number of training examples of `task`."""
        return len(self.train.y) if self.subsets is None else len(self.subsets[task])

    def epoch_size(self, task: int) -> int:
        """Examples per epoch (60,000 on P-MNIST, as in the authors' code, though 55,000 are trained on; a
        subsampled task's own size)."""
        return self._epoch_size if self.subsets is None else len(self.subsets[task])

    def batch(self, task: int, index: Tensor) -> tuple[Tensor, Tensor]:
        """Training examples `index` of `task` (indices on the data's device): one gather of rows, one of pixels."""
        if self.subsets is not None:
            index = self.subsets[task][index]
        return self.train.x[index][:, self.permutations[task]], self.train.y[index]

    def evaluation_batches(self, task: int, batch_size: int = 2000) -> Iterator[tuple[Tensor, Tensor]]:
        """The evaluation split of `task` (test or validation), in chunks."""
        yield from _permuted_chunks(self.evaluation, self.permutations[task], batch_size)

    @property
    def has_validation(self) -> bool:
        """True if the benchmark keeps a validation split (for lr_schedule plateau and lr_search)."""
        return self.validation is not None

    def validation_batches(self, task: int, batch_size: int = 2000) -> Iterator[tuple[Tensor, Tensor]]:
        """The validation split of `task`, permuted, in chunks, whatever the evaluation split is."""
        if self.validation is None:
            raise ValueError(f"{self.name} keeps no validation split here")
        yield from _permuted_chunks(self.validation, self.permutations[task], batch_size)

    def describe(self) -> dict:
        """Plain-data description for run records."""
        return {"name": self.name, "tasks": self.num_tasks, "multi_head": False, "classes": self.classes,
                "train_size": [self.train_size(t) for t in range(self.num_tasks)] if self.subsets else len(self.train.y),
                "evaluation_size": len(self.evaluation.y),
                "epoch_size": [self.epoch_size(t) for t in range(self.num_tasks)] if self.subsets else self._epoch_size}


def _permuted_chunks(split: Split, perm: Tensor, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
    """`split` in chunks of `batch_size`, pixels permuted by `perm`."""
    for start in range(0, len(split.y), batch_size):
        stop = start + batch_size
        yield split.x[start:stop][:, perm], split.y[start:stop]


def _mnist_like(name: str, data: ImageDataset, num_tasks: int | None, seed: int, evaluate_on: str) -> PermutedBenchmark:
    """Train on images 5,000..59,999 (the first 5,000 are validation), test on the 10,000 test images; an
    "epoch" is ⌊60000/b⌋ steps, as in the authors' code."""
    check_evaluate_on(evaluate_on)
    train = Split.from_images(data.x_train[5000:], data.y_train[5000:])
    validation = Split.from_images(data.x_train[:5000], data.y_train[:5000])
    test = Split.from_images(data.x_test, data.y_test)
    evaluation = test if evaluate_on == "test" else validation
    return PermutedBenchmark(name, train, evaluation, num_tasks or 10, seed, epoch_size=60000, validation=validation)


def permuted_mnist(num_tasks: int | None = 10, seed: int = 0, evaluate_on: str = "test",
                   data_dir: str | Path | None = None) -> PermutedBenchmark:
    """Permuted MNIST (SPEC §5)."""
    return _mnist_like("permuted-mnist", load_mnist(data_dir), num_tasks, seed, evaluate_on)


def permuted_fashion_mnist(num_tasks: int | None = 10, seed: int = 0, evaluate_on: str = "test",
                           data_dir: str | Path | None = None) -> PermutedBenchmark:
    """Permuted Fashion-MNIST: P-MNIST's protocol on Fashion-MNIST's images."""
    return _mnist_like("permuted-fashion-mnist", load_fashion_mnist(data_dir), num_tasks, seed, evaluate_on)


def permuted_digits(num_tasks: int | None = 5, seed: int = 0, evaluate_on: str = "test") -> PermutedBenchmark:
    """Permuted Digits: scikit-learn's 8×8 digits, permuted like P-MNIST; 20% of the train part is
    held out when evaluating on validation."""
    check_evaluate_on(evaluate_on)
    digits = load_digits(seed=0)
    train = Split.from_images(digits.x_train, digits.y_train)
    test = Split.from_images(digits.x_test, digits.y_test)
    validation = None  # held out only when asked for, so that test runs train on all of the train part
    if evaluate_on == "validation":
        n_val = len(train.y) // 5
        train, test = Split(train.x[n_val:], train.y[n_val:]), Split(train.x[:n_val], train.y[:n_val])
        validation = test
    return PermutedBenchmark("permuted-digits", train, test, num_tasks or 5, seed, validation=validation)


def permuted_split(name: str, train: Split, test: Split, num_tasks: int, seed: int, classes: int,
                   evaluate_on: str) -> PermutedBenchmark:
    """Permuted tasks on a user's data: the last 10% of the training data is the validation set."""
    check_evaluate_on(evaluate_on)
    flat = lambda s: Split(s.x.reshape(len(s), -1), s.y)  # noqa: E731
    train, validation = flat(train).head(HOLDOUT)
    return PermutedBenchmark(name, train, validation if evaluate_on == "validation" else flat(test), num_tasks, seed,
                             num_classes=classes, validation=validation)
