"""An image data set in memory, as every loader returns it."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class ImageDataset:
    """Images as uint8 arrays (n, ...) and integer labels, for a train and a test split."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
