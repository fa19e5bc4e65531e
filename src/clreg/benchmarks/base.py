"""What every benchmark shares: in-memory splits, derived seeds, the per-task data of split benchmarks."""
from __future__ import annotations

from dataclasses import dataclass

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
