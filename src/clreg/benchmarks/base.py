"""What every benchmark shares: in-memory splits, derived seeds, the base class of task sequences, and the
defaults a benchmark declares when it registers (clreg.benchmarks.registry)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch
from torch import Tensor

EVALUATE_ON = ("test", "validation")
HOLDOUT = 0.1  # split benchmarks: the last 10% of each task's training data (file order) is its validation set


def derive_seed(seed: int, *keys: int) -> int:
    """An independent 63-bit seed for (seed, *keys), e.g. one per task and purpose."""
    return int(np.random.SeedSequence([seed, *keys]).generate_state(2, np.uint64)[0] >> np.uint64(1))


@dataclass
class Split:
    """Inputs as float32 (n, ...) and int64 labels, in memory."""

    x: Tensor
    y: Tensor

    @staticmethod
    def from_images(images: np.ndarray, labels: np.ndarray, flatten: bool = True) -> "Split":
        """uint8 images ÷ 255 (no other normalisation; float inputs are kept as they are), optionally
        flattened to (n, features)."""
        x = images.reshape(len(images), -1) if flatten else images
        x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
        return Split(torch.from_numpy(x), torch.from_numpy(labels.astype(np.int64)))

    def __len__(self) -> int:
        return len(self.y)

    def to(self, device: torch.device) -> "Split":
        """This split on `device` (itself if it is there already)."""
        if self.x.device == torch.device(device):
            return self
        return Split(self.x.to(device), self.y.to(device))

    def head(self, fraction: float) -> tuple["Split", "Split"]:
        """(the first 1 − fraction, the last fraction) of the examples, in order."""
        cut = len(self) - int(round(fraction * len(self)))
        return Split(self.x[:cut], self.y[:cut]), Split(self.x[cut:], self.y[cut:])


def check_evaluate_on(evaluate_on: str) -> None:
    """Raise ValueError unless `evaluate_on` is test or validation."""
    if evaluate_on not in EVALUATE_ON:
        raise ValueError(f"evaluate_on must be one of {', '.join(EVALUATE_ON)}, got {evaluate_on!r}")


def check_task_count(name: str, asked: int | None, available: int) -> int:
    """The number of tasks to run: all `available` (asked None) or the first `asked` of them."""
    if asked is None:
        return available
    if not 1 <= asked <= available:
        raise ValueError(f"{name} has {available} tasks; --tasks must be 1..{available}, got {asked}")
    return asked


GENERIC_C = 1.0  # c where no good value is known for a benchmark and method: choose one with `clreg sweep`


@dataclass(frozen=True)
class Defaults:
    """What a benchmark implies unless a run says otherwise: network and widths, epochs, batch size and
    learning rate, SI's ξ, n for post-task measures, and (c, re-init) per method where a good value is known."""

    network: str
    widths: tuple[int, ...]
    xi: float
    samples: int
    epochs: int = 20
    batch_size: int = 256
    lr: float | None = None  # None: 1e-3 · b / 256 (docs/algorithms.md §5)
    methods: dict = field(default_factory=dict, hash=False)  # method → (c, re-init)

    def method(self, name: str) -> tuple[float, bool, bool]:
        """(c, re-init, known) for method `name`: the benchmark's value, else (GENERIC_C, off, False)."""
        if name in self.methods:
            return (*self.methods[name], True)
        return (0.0 if name == "finetune" else GENERIC_C), False, name == "finetune"


class Benchmark:
    """A task sequence as the training loop reads it. A subclass says where each task's splits are (`split`)
    and how a task sees raw inputs (`inputs`: a permutation, or nothing); the rest is shared."""

    name: str
    num_tasks: int
    multi_head: bool
    drop_last: bool  # True: an epoch is ⌊n/b⌋ full batches of one shuffle; False: steps of a stream of shuffles
    chunk = 1000  # evaluation batch size

    def split(self, task: int, which: str) -> Split | None:
        """Task `task`'s "train", "evaluation" (test or validation) or "validation" split (None: not kept)."""
        raise NotImplementedError

    def inputs(self, task: int, x: Tensor) -> Tensor:
        """Raw inputs as task `task` sees them."""
        return x

    @property
    def device(self) -> torch.device:
        """Where the data lives."""
        return self.split(0, "train").x.device

    def train_size(self, task: int) -> int:
        """Number of training examples of `task`."""
        return len(self.split(task, "train"))

    def epoch_size(self, task: int) -> int:
        """Examples per epoch of `task`: its training set."""
        return self.train_size(task)

    def batch(self, task: int, index: Tensor) -> tuple[Tensor, Tensor]:
        """Training examples `index` of `task` (indices on the data's device)."""
        split = self.split(task, "train")
        return self.inputs(task, split.x[index]), split.y[index]

    def evaluation_batches(self, task: int, batch_size: int | None = None) -> Iterator[tuple[Tensor, Tensor]]:
        """The evaluation split of `task` (test or validation), in chunks."""
        yield from self._chunks(task, self.split(task, "evaluation"), batch_size)

    @property
    def has_validation(self) -> bool:
        """True if every task keeps a validation split (for lr_schedule plateau and lr_search)."""
        return all(self.split(t, "validation") is not None for t in range(self.num_tasks))

    def validation_batches(self, task: int, batch_size: int | None = None) -> Iterator[tuple[Tensor, Tensor]]:
        """The validation split of `task`, in chunks, whatever the evaluation split is."""
        split = self.split(task, "validation")
        if split is None:
            raise ValueError(f"{self.name} keeps no validation split for task {task + 1}")
        yield from self._chunks(task, split, batch_size)

    def _chunks(self, task: int, split: Split, batch_size: int | None) -> Iterator[tuple[Tensor, Tensor]]:
        size = batch_size or self.chunk
        for start in range(0, len(split), size):
            yield self.inputs(task, split.x[start:start + size]), split.y[start:start + size]
