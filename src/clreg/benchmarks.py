"""Task sequences: which data each task trains and is evaluated on (SPEC §5)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import Tensor

from .data import load_digits, load_mnist

BENCHMARKS = ("permuted-mnist", "permuted-digits")
EVALUATE_ON = ("test", "validation")


def derive_seed(seed: int, *keys: int) -> int:
    """An independent 63-bit seed for (seed, *keys), e.g. one per task and purpose."""
    return int(np.random.SeedSequence([seed, *keys]).generate_state(2, np.uint64)[0] >> np.uint64(1))


@dataclass
class Split:
    """Inputs (n, features) as float32 in [0, 1] and int64 labels, in memory."""

    x: Tensor
    y: Tensor

    @staticmethod
    def from_images(images: np.ndarray, labels: np.ndarray) -> "Split":
        """Flatten uint8 images and divide by 255 (no other normalisation)."""
        x = torch.from_numpy(images.reshape(len(images), -1).astype(np.float32) / 255.0)
        return Split(x, torch.from_numpy(labels.astype(np.int64)))


class PermutedBenchmark:
    """Domain-incremental tasks: every task (the first included) is a fixed pixel permutation."""

    multi_head = False

    def __init__(self, name: str, train: Split, evaluation: Split, num_tasks: int, seed: int,
                 num_classes: int = 10, epoch_size: int | None = None):
        if num_tasks < 1:
            raise ValueError(f"tasks must be >= 1, got {num_tasks}")
        self.name, self.train, self.evaluation = name, train, evaluation
        self.num_tasks, self.num_classes = num_tasks, num_classes
        self.in_features = train.x.shape[1]
        self.epoch_size = epoch_size or len(train.y)
        self.permutations = [torch.randperm(self.in_features, generator=torch.Generator().manual_seed(
            derive_seed(seed, 1, task))) for task in range(num_tasks)]

    def train_size(self, task: int) -> int:
        """Number of training examples of `task`."""
        return len(self.train.y)

    def batch(self, task: int, index: Tensor) -> tuple[Tensor, Tensor]:
        """Training examples `index` of `task`: one gather of rows, one of pixels."""
        return self.train.x[index][:, self.permutations[task]], self.train.y[index]

    def evaluation_batches(self, task: int, batch_size: int = 2000) -> Iterator[tuple[Tensor, Tensor]]:
        """The evaluation split of `task` (test or validation), in chunks."""
        perm = self.permutations[task]
        for start in range(0, len(self.evaluation.y), batch_size):
            stop = start + batch_size
            yield self.evaluation.x[start:stop][:, perm], self.evaluation.y[start:stop]

    def describe(self) -> dict:
        """Plain-data description for run records."""
        return {"name": self.name, "tasks": self.num_tasks, "train_size": len(self.train.y),
                "evaluation_size": len(self.evaluation.y), "epoch_size": self.epoch_size}


def permuted_mnist(num_tasks: int = 10, seed: int = 0, evaluate_on: str = "test",
                   data_dir: str | Path | None = None) -> PermutedBenchmark:
    """Permuted MNIST: train on images 5,000..59,999 (the first 5,000 are validation), test on the
    10,000 test images; an "epoch" is ⌊60000/b⌋ steps, as in the authors' code."""
    mnist = load_mnist(data_dir)
    train = Split.from_images(mnist.x_train[5000:], mnist.y_train[5000:])
    validation = Split.from_images(mnist.x_train[:5000], mnist.y_train[:5000])
    test = Split.from_images(mnist.x_test, mnist.y_test)
    evaluation = test if evaluate_on == "test" else validation
    return PermutedBenchmark("permuted-mnist", train, evaluation, num_tasks, seed, epoch_size=60000)


def permuted_digits(num_tasks: int = 5, seed: int = 0, evaluate_on: str = "test") -> PermutedBenchmark:
    """Permuted Digits: scikit-learn's 8×8 digits, permuted like P-MNIST; 20% of the train part is
    held out when evaluating on validation."""
    digits = load_digits(seed=0)
    train = Split.from_images(digits.x_train, digits.y_train)
    test = Split.from_images(digits.x_test, digits.y_test)
    if evaluate_on == "validation":
        n_val = len(train.y) // 5
        train, test = Split(train.x[n_val:], train.y[n_val:]), Split(train.x[:n_val], train.y[:n_val])
    return PermutedBenchmark("permuted-digits", train, test, num_tasks, seed)


def build_benchmark(name: str, num_tasks: int, seed: int, evaluate_on: str = "test",
                    data_dir: str | Path | None = None) -> PermutedBenchmark:
    """The benchmark registered under `name`."""
    if evaluate_on not in EVALUATE_ON:
        raise ValueError(f"evaluate_on must be one of {', '.join(EVALUATE_ON)}, got {evaluate_on!r}")
    if name == "permuted-mnist":
        return permuted_mnist(num_tasks, seed, evaluate_on, data_dir)
    if name == "permuted-digits":
        return permuted_digits(num_tasks, seed, evaluate_on)
    raise ValueError(f"unknown benchmark {name!r}; choose one of: {', '.join(BENCHMARKS)}")
