"""MNIST and Fashion-MNIST from their four canonical IDX files, verified by content checksum."""
from __future__ import annotations

import hashlib
from pathlib import Path


from clreg.data.dataset import ImageDataset
from clreg.data.fetch import RemoteFile, locate
from clreg.data.idx import DataFileError, parse_idx, read_bytes

MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/")
# md5 of each .gz as served by the mirrors, and of its decompressed content (what is verified locally)
FILES = {
    "train_images": ("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873", "6bbc9ace898e44ae57da46a324031adb"),
    "train_labels": ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432", "a25bea736e30d166cdddb491f175f624"),
    "test_images": ("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3", "2646ac647ad5339dbf082846283269ea"),
    "test_labels": ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c", "27ae3e4e09519cfbb04c329615203637"),
}


FASHION_MIRRORS = ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",)
FASHION_FILES = {
    "train_images": ("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d", "f4a8712d7a061bf5bd6d2ca38dc4d50a"),
    "train_labels": ("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe", "9018921c3c673c538a1fc5bad174d6f9"),
    "test_images": ("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79", "8181f5470baa50b63fa0f6fddb340f0a"),
    "test_labels": ("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310", "15d484375f8d13e6eb1aabb0c3f46965"),
}
DEBIAN_ROOT = "/usr/share/datasets"  # `apt-get install dataset-fashion-mnist` puts the files in fashion-mnist/ here


def load_mnist(data_dir: str | Path | None = None, verify: bool = True, download: bool = True) -> ImageDataset:
    """Load MNIST; with `verify`, every file's decompressed content must match the canonical md5."""
    return _load_idx_set("mnist", "MNIST", FILES, MIRRORS, data_dir, verify, download)


def load_fashion_mnist(data_dir: str | Path | None = None, verify: bool = True, download: bool = True) -> ImageDataset:
    """Load Fashion-MNIST (also found where Debian's dataset-fashion-mnist package installs it)."""
    return _load_idx_set("fashion-mnist", "Fashion-MNIST", FASHION_FILES, FASHION_MIRRORS, data_dir, verify, download,
                         (DEBIAN_ROOT,))


def _load_idx_set(dataset: str, title: str, files: dict, mirrors: tuple[str, ...], data_dir, verify: bool,
                  download: bool, system_roots: tuple[str, ...] = ()) -> ImageDataset:
    remote = [RemoteFile(name, served, mirrors) for name, served, _ in files.values()]
    paths = locate(dataset, remote, data_dir, download, system_roots)
    arrays = {}
    for key, path in zip(files, paths):
        content = read_bytes(path)
        if verify and hashlib.md5(content).hexdigest() != files[key][2]:
            raise DataFileError(f"{path}: content does not match the canonical {title} file (md5 of the "
                                f"decompressed data differs); the file is corrupt or not {title}")
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
