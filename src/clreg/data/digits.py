"""scikit-learn's bundled 8×8 digits: a tiny stand-in for MNIST that needs no download."""
from __future__ import annotations

import numpy as np

from clreg.core.extras import need
from clreg.data.dataset import ImageDataset


def load_digits(test_fraction: float = 0.2, seed: int = 0) -> ImageDataset:
    """The 1,797 digits (pixel values 0..16, rescaled to 0..255), split into train and test."""
    bunch = need("sklearn.datasets", "Permuted Digits (scikit-learn's 8x8 digits)").load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    labels = bunch.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(labels))
    n_test = int(round(test_fraction * len(labels)))
    test, train = order[:n_test], order[n_test:]
    return ImageDataset(images[train], labels[train], images[test], labels[test])
