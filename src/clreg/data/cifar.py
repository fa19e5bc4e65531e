"""CIFAR-10 (binary and python versions) and CIFAR-100 (python version, fine labels).

Images come out as uint8 arrays (n, 3, 32, 32) with integer labels. Lookup is the same as MNIST's:
`<root>/cifar10/cifar-10-batches-bin/` (or `cifar-10-batches-py/`) and `<root>/cifar100/cifar-100-python/`
under --data-dir, $CLREG_DATA_DIR, then the cache. The python version is pickled, and unpickling can run
code: a file is unpickled only if its md5 is the canonical one, or, for a user's own local copy, with
`trust_pickle=True`; either way a restricted unpickler admits nothing but numpy arrays and plain data.
A decoded dataset is cached as an .npz (`$CLREG_CACHE_DIR/arrays/`), so the second load is fast.
"""
from __future__ import annotations

import hashlib
import io
import pickle
from pathlib import Path

import numpy as np

from clreg.data.fetch import RemoteFile, cached_arrays, download_archive, search_roots
from clreg.data.idx import DataFileError
from clreg.data.dataset import ImageDataset

RECORD = 1 + 3 * 32 * 32  # binary version: one label byte, then the R, G and B planes
CIFAR10_BINARY = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
CIFAR10_PYTHON = {  # canonical md5 of each file of cifar-10-python.tar.gz
    "data_batch_1": "c99cafc152244af753f735de768cd75f", "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751", "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb", "test_batch": "40351d587109b95175f43aff81a1287e",
}
MIRRORS = ("https://www.cs.toronto.edu/~kriz/",)
CIFAR10_ARCHIVE = RemoteFile("cifar-10-binary.tar.gz", "c32a1d4ab5d03f1284b67883e8d87530", MIRRORS)
CIFAR100_ARCHIVE = RemoteFile("cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85", MIRRORS)
CIFAR100_PYTHON = {"train": "16019d7e3df5f24257cddd939b257f8d", "test": "f0ef6b0ae62326f3e7ffdfab6717acfc"}
_NUMPY_GLOBALS = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                  ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
                  ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}


class _DataOnlyUnpickler(pickle.Unpickler):
    """Admits numpy arrays and plain Python data; any other global (code) is refused."""

    def find_class(self, module: str, name: str):  # noqa: D102
        if (module, name) in _NUMPY_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: CIFAR files hold only arrays and lists")


def _unpickle(path: Path, canonical_md5: str | None, trust: bool) -> dict:
    content = path.read_bytes()
    if not trust and hashlib.md5(content).hexdigest() != canonical_md5:
        raise DataFileError(f"{path}: not the canonical CIFAR file (md5 differs), and unpickling a file can run "
                            "code; if this is your own copy, allow it with trust_pickle=True (load_cifar10 or load_cifar100)")
    try:
        entry = _DataOnlyUnpickler(io.BytesIO(content), encoding="bytes").load()
    except Exception as err:  # a corrupt or hostile pickle fails in many ways; report them one way
        raise DataFileError(f"{path}: cannot be read as a CIFAR python batch ({err})") from None
    if not isinstance(entry, dict):
        raise DataFileError(f"{path}: expected a dict of arrays, got {type(entry).__name__}")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in entry.items()}


def _images(data, path: Path) -> np.ndarray:
    data = np.asarray(data)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataFileError(f"{path}: expected uint8 data of shape (n, 3072), got {data.dtype} {data.shape}")
    return data.reshape(-1, 3, 32, 32)


def _labels(values, n: int, classes: int, path: Path) -> np.ndarray:
    labels = np.asarray(values, dtype=np.int64)
    if labels.shape != (n,) or (n and (labels.min() < 0 or labels.max() >= classes)):
        raise DataFileError(f"{path}: expected {n} labels in 0..{classes - 1}")
    return labels


def read_binary_batch(path: Path, classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """One file of the binary version: records of 1 label byte + 3072 pixel bytes."""
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % RECORD:
        raise DataFileError(f"{path}: {raw.size} bytes is not a whole number of {RECORD}-byte CIFAR records "
                            "(truncated or not a CIFAR binary batch)")
    records = raw.reshape(-1, RECORD)
    return records[:, 1:].reshape(-1, 3, 32, 32), _labels(records[:, 0], len(records), classes, path)


def read_python_batch(path: Path, canonical_md5: str | None, label_key: str, classes: int,
                      trust: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """One pickled batch of the python version (CIFAR-10 `labels`, CIFAR-100 `fine_labels`)."""
    entry = _unpickle(path, canonical_md5, trust)
    if "data" not in entry or label_key not in entry:
        raise DataFileError(f"{path}: expected keys 'data' and {label_key!r}, found {sorted(entry)}")
    images = _images(entry["data"], path)
    return images, _labels(entry[label_key], len(images), classes, path)


def _find(relative: str, names: list[str], data_dir) -> Path | None:
    for root in search_roots(data_dir):
        folder = root / relative
        if all((folder / n).is_file() for n in names):
            return folder
    return None


def _train_and_test(parts: list[tuple[np.ndarray, np.ndarray]]) -> ImageDataset:
    """CIFAR-10's five training batches concatenated, and its test batch."""
    return ImageDataset(np.concatenate([x for x, _ in parts[:5]]), np.concatenate([y for _, y in parts[:5]]),
                        *parts[5])


CIFAR10_LAYOUTS = ["cifar-10-batches-bin/ (" + ", ".join(CIFAR10_BINARY) + ")",
                   "cifar-10-batches-py/ (" + ", ".join(CIFAR10_PYTHON) + ")"]


def load_cifar10(data_dir: str | Path | None = None, trust_pickle: bool = False, download: bool = True) -> ImageDataset:
    """CIFAR-10 from the binary version (preferred: nothing to unpickle) or the python version; if neither
    is found, the binary version is downloaded (md5-checked) into the cache."""
    binary = _find("cifar10/cifar-10-batches-bin", CIFAR10_BINARY, data_dir)
    python = _find("cifar10/cifar-10-batches-py", list(CIFAR10_PYTHON), data_dir)
    if binary is None and python is None:
        binary = _download("cifar10", CIFAR10_ARCHIVE, "cifar-10-batches-bin", CIFAR10_LAYOUTS, data_dir, download)
    if binary is not None:
        files = [binary / n for n in CIFAR10_BINARY]
        return cached_arrays("cifar10", files, lambda: _train_and_test([read_binary_batch(f) for f in files]))
    files = [python / n for n in CIFAR10_PYTHON]
    return cached_arrays("cifar10-py", files, lambda: _train_and_test(
        [read_python_batch(f, CIFAR10_PYTHON[f.name], "labels", 10, trust_pickle) for f in files]))


def load_cifar100(data_dir: str | Path | None = None, trust_pickle: bool = False, download: bool = True) -> ImageDataset:
    """CIFAR-100 (python version), fine labels 0..99; downloaded (md5-checked) into the cache if not found."""
    folder = _find("cifar100/cifar-100-python", list(CIFAR100_PYTHON), data_dir) or \
        _download("cifar100", CIFAR100_ARCHIVE, "cifar-100-python", ["cifar-100-python/ (train, test)"], data_dir, download)
    files = [folder / n for n in CIFAR100_PYTHON]

    def build():
        parts = [read_python_batch(f, CIFAR100_PYTHON[f.name], "fine_labels", 100, trust_pickle) for f in files]
        return ImageDataset(*parts[0], *parts[1])
    return cached_arrays("cifar100", files, build)


def _download(dataset: str, archive: RemoteFile, folder: str, layouts: list[str], data_dir, download: bool) -> Path:
    """Download and unpack `archive` into the cache; if that is off or fails, say where the files belong."""
    reason = ""
    if download:
        try:
            return download_archive(dataset, archive) / folder
        except DataFileError as err:
            reason = f" (download failed: {err})"
    raise DataFileError(_missing(dataset, layouts, data_dir) + reason)


def _missing(dataset: str, layouts: list[str], data_dir) -> str:
    where = " or ".join(str(r / dataset) for r in search_roots(data_dir))
    return f"{dataset} not found: put {' or '.join(layouts)} into {where}"
