"""Statistics over all parameters that never hold more than a chunk of them in float64 at once."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor

CHUNK = 1 << 20  # parameters per float64 block: k measures × 1M × 8 bytes


class StreamingCorrelation:
    """Pearson correlations between k measures over all parameters, fed tensor by tensor.

    Keeps n, Σx and Σxxᵀ in float64 on the device of the first values (no host transfer until `matrix()`),
    centred on a per-measure shift taken from the first block (which keeps the sums accurate when means are
    large against spreads).
    """

    def __init__(self, names: Sequence[str]):
        self.names = list(names)
        self.n = 0
        self.shift: Tensor | None = None  # shift, sum and cross: created with the first block, on its device
        self.sum: Tensor | None = None
        self.cross: Tensor | None = None

    def update(self, values: Sequence[Tensor]) -> None:
        """One parameter tensor's values under each of the k measures (same shape each)."""
        if len(values) != len(self.names):
            raise ValueError(f"expected {len(self.names)} measures, got {len(values)}")
        flat = [v.detach().reshape(-1) for v in values]
        for start in range(0, flat[0].numel(), CHUNK):
            block = torch.stack([f[start:start + CHUNK].to(torch.float64) for f in flat])
            if self.shift is None:
                self.shift = block.mean(1)
                self.sum = torch.zeros_like(self.shift)
                self.cross = self.shift.new_zeros(len(self.names), len(self.names))
            block -= self.shift[:, None]
            self.n += block.shape[1]
            self.sum += block.sum(1)
            self.cross += block @ block.T

    def matrix(self) -> np.ndarray:
        """The k × k Pearson correlation matrix (NaN where a measure is constant)."""
        if self.n < 2:
            raise ValueError("correlations need at least 2 parameters")
        mean = self.sum / self.n
        cov = self.cross / self.n - torch.outer(mean, mean)
        sd = cov.diagonal().clamp_min(0).sqrt()
        return (cov / torch.outer(sd, sd)).cpu().numpy()

    def as_dict(self) -> dict:
        """{name: {name: r}} with NaN as None (JSON)."""
        m = self.matrix()
        return {a: {b: (None if np.isnan(m[i, j]) else float(m[i, j])) for j, b in enumerate(self.names)}
                for i, a in enumerate(self.names)}


class ScatterSample:
    """A fixed, seeded random subset of parameter positions (over all tensors), the same for every measure."""

    def __init__(self, sizes: Sequence[int], count: int, seed: int = 0):
        total = int(sum(sizes))
        count = min(count, total)
        rng = np.random.default_rng(seed)
        self.index = np.sort(rng.choice(total, size=count, replace=False))
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        bounds = np.searchsorted(self.index, offsets)
        self.local = [torch.from_numpy(self.index[a:b] - low) for a, b, low in zip(bounds, bounds[1:], offsets)]
        self.on_device: dict[torch.device, list[Tensor]] = {}  # `local` moved to each device once

    def take(self, tensors: Sequence[Tensor]) -> np.ndarray:
        """The sampled positions' values of one measure, given per parameter tensor: gathered on the tensors'
        device, brought to the host in one transfer."""
        device = tensors[0].device
        if device not in self.on_device:
            self.on_device[device] = [index.to(device) for index in self.local]
        parts = [t.detach().reshape(-1)[index].double() for t, index in zip(tensors, self.on_device[device])]
        return torch.cat(parts).cpu().numpy()


def slope_through_origin(x: np.ndarray, y: np.ndarray) -> float:
    """Least-squares a in y ≈ a·x."""
    denominator = float(np.dot(x, x))
    return float(np.dot(x, y) / denominator) if denominator > 0 else float("nan")
