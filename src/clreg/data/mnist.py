"""MNIST from its four canonical IDX files, verified by content checksum."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .fetch import RemoteFile, locate
from .idx import DataFileError, parse_idx, read_bytes

MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/")
# md5 of each .gz as served by the mirrors, and of its decompressed content (what is verified locally)
FILES = {
    "train_images": ("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873", "6bbc9ace898e44ae57da46a324031adb"),
    "train_labels": ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432", "a25bea736e30d166cdddb491f175f624"),
    "test_images": ("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3", "2646ac647ad5339dbf082846283269ea"),
    "test_labels": ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c", "27ae3e4e09519cfbb04c329615203637"),
}


@dataclass
class ImageDataset:
    """Images as uint8 arrays (n, ...) and integer labels, for a train and a test split."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def load_mnist(data_dir: str | Path | None = None, verify: bool = True, download: bool = True) -> ImageDataset:
    """Load MNIST; with `verify`, every file's decompressed content must match the canonical md5."""
    remote = [RemoteFile(name, served, MIRRORS) for name, served, _ in FILES.values()]
    paths = locate("mnist", remote, data_dir, download)
    arrays = {}
    for key, path in zip(FILES, paths):
        content = read_bytes(path)
        if verify and hashlib.md5(content).hexdigest() != FILES[key][2]:
            raise DataFileError(f"{path}: content does not match the canonical MNIST file (md5 of the "
                                f"decompressed data differs); the file is corrupt or not MNIST")
        arrays[key] = parse_idx(content, path)
    return _checked(ImageDataset(arrays["train_images"], arrays["train_labels"],
                                 arrays["test_images"], arrays["test_labels"]), paths)


def _checked(data: ImageDataset, paths: list[Path]) -> ImageDataset:
    """Shapes and label ranges must be consistent; errors name the offending file."""
    for images, labels, ipath, lpath in ((data.x_train, data.y_train, paths[0], paths[1]),
                                         (data.x_test, data.y_test, paths[2], paths[3])):
        if images.ndim != 3:
            raise DataFileError(f"{ipath}: expected images of shape (n, rows, cols), got {images.shape}")
        if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
            raise DataFileError(f"{lpath}: {labels.shape[0]} labels for {images.shape[0]} images in {ipath}")
        if labels.size and (labels.min() < 0 or labels.max() > 9):
            raise DataFileError(f"{lpath}: labels must be 0..9, found {labels.min()}..{labels.max()}")
    return data
