"""Tiny ImageNet (tiny-imagenet-200, the canonical download layout): 200 classes of 64×64 JPEGs.

    tiny-imagenet-200/wnids.txt                     the 200 class ids, one per line
    tiny-imagenet-200/train/<wnid>/images/*.JPEG    500 training images per class
    tiny-imagenet-200/val/images/*.JPEG             50 labelled images per class ...
    tiny-imagenet-200/val/val_annotations.txt       ... labelled here: file <tab> wnid <tab> box
    tiny-imagenet-200/classes.txt                   optional: a class order (De Lange et al.'s survey order)

The labelled validation images serve as the test set (as in De Lange et al. 2019). JPEGs are decoded
once with Pillow (`pip install 'clreg[images]'`) and cached as arrays.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from clreg.data.fetch import RemoteFile, cached_arrays, download_archive, search_roots
from clreg.data.idx import DataFileError
from clreg.data.dataset import ImageDataset

ARCHIVE = RemoteFile("tiny-imagenet-200.zip", "90528d7ca1a48142e341f4ef8d21d0de", ("http://cs231n.stanford.edu/",))
FOLDER = "tiny-imagenet/tiny-imagenet-200"
SIZE = 64


def find_folder(data_dir: str | Path | None, download: bool = True) -> Path:
    """The tiny-imagenet-200 folder under a search root, downloaded and unpacked into the cache if absent."""
    for root in search_roots(data_dir):
        if (root / FOLDER / "wnids.txt").is_file():
            return root / FOLDER
    if download:
        return download_archive("tiny-imagenet", ARCHIVE) / "tiny-imagenet-200"
    where = " or ".join(str(r / "tiny-imagenet") for r in search_roots(data_dir))
    raise DataFileError(f"Tiny ImageNet not found: unpack {ARCHIVE.name} so that tiny-imagenet-200/ is in {where}")


def class_order(folder: Path) -> list[str]:
    """The class ids in task order: classes.txt if present, else wnids.txt; each must list 200 distinct ids."""
    wnids = _lines(folder / "wnids.txt")
    order_file = folder / "classes.txt"
    order = _lines(order_file) if order_file.is_file() else wnids
    if len(set(order)) != len(order) or set(order) != set(wnids):
        raise DataFileError(f"{order_file}: must list each of the {len(wnids)} classes of wnids.txt exactly once")
    return order


def load_tiny_imagenet(data_dir: str | Path | None = None, download: bool = True) -> tuple[ImageDataset, list[str]]:
    """Training images and the labelled validation images (as test), uint8 (n, 3, 64, 64); labels are
    positions in `class_order`. Returns the data and the class order."""
    folder = find_folder(data_dir, download)
    order = class_order(folder)
    index = {wnid: i for i, wnid in enumerate(order)}
    train = [(f, index[w]) for w in order for f in sorted((folder / "train" / w / "images").glob("*.JPEG"))]
    test = [(folder / "val" / "images" / name, index[_known(w, index, folder)])
            for name, w in _annotations(folder / "val" / "val_annotations.txt")]
    if not train:
        raise DataFileError(f"{folder}/train: no JPEG images found under train/<wnid>/images/")
    files = [folder / "wnids.txt", *(f for f, _ in train), *(f for f, _ in test)]

    def build() -> ImageDataset:
        return ImageDataset(_decode([f for f, _ in train]), np.array([y for _, y in train]),
                            _decode([f for f, _ in test]), np.array([y for _, y in test]))
    return cached_arrays("tiny-imagenet-" + "-".join(order[:2]), files, build), order


def _lines(path: Path) -> list[str]:
    if not path.is_file():
        raise DataFileError(f"{path}: missing (expected one class id per line)")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def _annotations(path: Path) -> list[tuple[str, str]]:
    if not path.is_file():
        raise DataFileError(f"{path}: missing (the labels of the validation images)")
    rows = [line.split("\t") for line in path.read_text().splitlines() if line.strip()]
    bad = [i + 1 for i, r in enumerate(rows) if len(r) < 2]
    if bad:
        raise DataFileError(f"{path}: line {bad[0]} is not 'file<TAB>wnid<TAB>...'")
    return [(r[0], r[1]) for r in rows]


def _known(wnid: str, index: dict, folder: Path) -> str:
    if wnid not in index:
        raise DataFileError(f"{folder}/val/val_annotations.txt: class {wnid} is not in wnids.txt")
    return wnid


def _decode(files: list[Path]) -> np.ndarray:
    try:
        from PIL import Image
    except ImportError:
        raise DataFileError("decoding Tiny ImageNet's JPEGs needs Pillow: pip install 'clreg[images]'") from None
    out = np.empty((len(files), 3, SIZE, SIZE), dtype=np.uint8)
    for i, path in enumerate(files):
        try:
            with Image.open(path) as image:
                pixels = np.asarray(image.convert("RGB"))
        except (OSError, ValueError) as err:
            raise DataFileError(f"{path}: not a readable image ({err})") from None
        if pixels.shape != (SIZE, SIZE, 3):
            raise DataFileError(f"{path}: expected a {SIZE}×{SIZE} image, got {pixels.shape[1]}×{pixels.shape[0]}")
        out[i] = pixels.transpose(2, 0, 1)
    return out
