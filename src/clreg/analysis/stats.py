"""Statistics over all parameters that never hold more than a chunk of them in float64 at once."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor

CHUNK = 1 << 20  # parameters per float64 block: k measures × 1M × 8 bytes


class StreamingCorrelation:
    """Pearson correlations between k measures over all parameters, fed tensor by tensor.

    Keeps n, Σx and Σxxᵀ in float64, centred on a per-measure shift taken from the first block (which
    keeps the sums accurate when means are large against spreads).
    """

    def __init__(self, names: Sequence[str]):
        self.names = list(names)
        k = len(self.names)
        self.n = 0
        self.shift: Tensor | None = None
        self.sum = torch.zeros(k, dtype=torch.float64)
        self.cross = torch.zeros(k, k, dtype=torch.float64)

    def update(self, values: Sequence[Tensor]) -> None:
        """One parameter tensor's values under each of the k measures (same shape each)."""
        if len(values) != len(self.names):
            raise ValueError(f"expected {len(self.names)} measures, got {len(values)}")
        flat = [v.detach().reshape(-1) for v in values]
        for start in range(0, flat[0].numel(), CHUNK):
            block = torch.stack([f[start:start + CHUNK].to(torch.float64) for f in flat])
            if self.shift is None:
                self.shift = block.mean(1)
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
        with np.errstate(invalid="ignore", divide="ignore"):
            return (cov / torch.outer(sd, sd)).numpy()

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
        self.offsets = np.concatenate([[0], np.cumsum(sizes)])

    def take(self, tensors: Sequence[Tensor]) -> np.ndarray:
        """The sampled positions' values of one measure, given per parameter tensor."""
        out = np.empty(len(self.index))
        for i, t in enumerate(tensors):
            low, high = self.offsets[i], self.offsets[i + 1]
            mask = (self.index >= low) & (self.index < high)
            flat = t.detach().reshape(-1)
            out[mask] = flat[torch.from_numpy(self.index[mask] - low)].double().numpy()
        return out


def slope_through_origin(x: np.ndarray, y: np.ndarray) -> float:
    """Least-squares a in y ≈ a·x."""
    denominator = float(np.dot(x, x))
    return float(np.dot(x, y) / denominator) if denominator > 0 else float("nan")
