"""Domain-incremental benchmarks: every task (the first included) is a fixed pixel permutation (docs/algorithms.md §6)."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from clreg.core.sizes import check_memory
from clreg.data import ImageDataset, load_digits, load_fashion_mnist, load_mnist
from clreg.benchmarks.base import HOLDOUT, Benchmark, Defaults, Split, check_evaluate_on, derive_seed
from clreg.benchmarks.registry import Request, register


class PermutedBenchmark(Benchmark):
    """One shared head; task t's inputs are the same images with pixels permuted by permutation t."""

    multi_head = False
    drop_last = False  # an "epoch" is ⌊epoch_size/b⌋ steps of a stream of consecutive shuffles
    chunk = 2000

    def __init__(self, name: str, train: Split, evaluation: Split, num_tasks: int, seed: int,
                 num_classes: int = 10, epoch_size: int | None = None, validation: Split | None = None):
        if num_tasks < 1:
            raise ValueError(f"tasks must be >= 1, got {num_tasks}")
        self.name, self.train, self.evaluation, self.validation = name, train, evaluation, validation
        self.num_tasks, self.classes = num_tasks, num_classes
        self.in_features = train.x.shape[1]
        self.input_shape = (self.in_features,)
        check_memory(f"{num_tasks} permutations of {self.in_features} inputs", num_tasks * self.in_features * 8,
                     "cpu", "tasks")
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

    def split(self, task: int, which: str) -> Split | None:  # noqa: D102
        return getattr(self, which)

    def inputs(self, task: int, x: Tensor) -> Tensor:
        """Pixels permuted by the task's permutation."""
        return x[:, self.permutations[task]]

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
        """Training examples `index` of `task` (of its subset, where subsampled): one gather of rows, one of pixels."""
        return super().batch(task, index if self.subsets is None else self.subsets[task][index])

    def describe(self) -> dict:
        """Plain-data description for run records."""
        return {"name": self.name, "tasks": self.num_tasks, "multi_head": False, "classes": self.classes,
                "train_size": [self.train_size(t) for t in range(self.num_tasks)] if self.subsets else len(self.train.y),
                "evaluation_size": len(self.evaluation.y),
                "epoch_size": [self.epoch_size(t) for t in range(self.num_tasks)] if self.subsets else self._epoch_size}


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
    """Permuted MNIST (docs/algorithms.md §6)."""
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


def sized(bench: PermutedBenchmark, request: Request) -> PermutedBenchmark:
    """`bench` with the task sizes the run asks for (docs/algorithms.md §6), if any."""
    return bench if request.task_sizes is None else bench.subsample(list(request.task_sizes), request.seed)


# the authors' chosen (c, re-init) per method (docs/algorithms.md §10, the paper's appendix)
PMNIST_METHODS = {"si": (0.2, True), "siu": (2.0, True), "sib": (0.5, True), "sos": (1.0, True), "mas": (500.0, False),
                  "af": (200.0, False), "sqrt-fisher": (2.0, False), "fisher": (1000.0, False),
                  "mas-logits": (0.001, True), "finetune": (0.0, False)}
# tuned for `clreg demo` (5 tasks, 5 epochs, 200-200, b = 32, lr 1e-3)
DIGITS_METHODS = {"fisher": (100.0, False), "si": (30.0, False), "sos": (10.0, False), "mas": (10.0, False),
                  "finetune": (0.0, False)}
register("permuted-mnist", lambda r: sized(permuted_mnist(r.tasks, r.seed, r.evaluate_on, r.data_dir), r),
         Defaults("mlp", (2000, 2000), 0.1, 1000, methods=PMNIST_METHODS), options=("task_sizes",))
register("permuted-fashion-mnist",
         lambda r: sized(permuted_fashion_mnist(r.tasks, r.seed, r.evaluate_on, r.data_dir), r),
         Defaults("mlp", (2000, 2000), 0.1, 1000), options=("task_sizes",))
register("permuted-digits", lambda r: sized(permuted_digits(r.tasks, r.seed, r.evaluate_on), r),
         Defaults("mlp", (200, 200), 0.1, 500, epochs=5, batch_size=32, lr=1e-3, methods=DIGITS_METHODS),
         options=("task_sizes",))
