"""Bring your own data: a .npz of arrays, loaded without pickle and validated with errors that say what to fix."""
from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clreg.core.sizes import MAX_CLASSES
from clreg.data.idx import DataFileError

REQUIRED = ("x_train", "y_train", "x_test", "y_test")
OPTIONAL = ("task_train", "task_test")


@dataclass
class UserArrays:
    """Validated arrays: inputs uint8 or float with at least one feature, integer labels in [0, MAX_CLASSES),
    optional task ids 0..T−1 per example."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    task_train: np.ndarray | None = None
    task_test: np.ndarray | None = None


def load_arrays(path: str | Path) -> UserArrays:
    """Read `path` (.npz with x_train, y_train, x_test, y_test, optionally task_train, task_test)."""
    path = Path(path)
    if not path.is_file():
        raise DataFileError(f"{path}: no such file (arrays:PATH needs a .npz file)")
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise DataFileError(f"{path}: a .npy file holds one array; arrays:PATH needs a .npz file with "
                                f"{', '.join(REQUIRED)} (np.savez(path, x_train=..., y_train=..., ...))")
        with loaded as z:
            arrays = {k: z[k] for k in z.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as err:
        if isinstance(err, DataFileError):
            raise
        raise DataFileError(f"{path}: cannot be read as a .npz of plain arrays (object arrays are refused "
                            f"because loading them runs pickle): {err}") from None
    missing = [k for k in REQUIRED if k not in arrays]
    unknown = sorted(set(arrays) - set(REQUIRED) - set(OPTIONAL))
    if missing or unknown:
        raise DataFileError(f"{path}: " + "; ".join(filter(None, [
            missing and f"missing arrays {', '.join(missing)}",
            unknown and f"unknown arrays {', '.join(unknown)}"])) +
            f" (allowed: {', '.join(REQUIRED)}, and optionally {', '.join(OPTIONAL)})")
    if ("task_train" in arrays) != ("task_test" in arrays):
        raise DataFileError(f"{path}: give both task_train and task_test, or neither")
    data = UserArrays(**arrays)
    _check(data, path)
    return data


def _check(d: UserArrays, path: Path) -> None:
    for split, x, y in (("train", d.x_train, d.y_train), ("test", d.x_test, d.y_test)):
        if x.dtype != np.uint8 and not np.issubdtype(x.dtype, np.floating):
            raise DataFileError(f"{path}: x_{split} must be uint8 (divided by 255) or float, got {x.dtype}")
        if x.ndim < 2 or len(x) == 0:
            raise DataFileError(f"{path}: x_{split} must have shape (n >= 1, features...), got {x.shape}")
        if x[0].size == 0:
            raise DataFileError(f"{path}: x_{split} has examples of no features (shape {x.shape}); each example "
                                "needs at least one value")
        if x.dtype != np.uint8 and not np.isfinite(x).all():
            raise DataFileError(f"{path}: x_{split} contains NaN or infinite values")
        _check_ids(y, len(x), f"y_{split}", f"x_{split}", path)
        if y.max() >= MAX_CLASSES:
            raise DataFileError(f"{path}: y_{split} has the label {int(y.max())}; labels are classes numbered from 0 "
                                f"and must be below {MAX_CLASSES:,}")
    if d.x_train.shape[1:] != d.x_test.shape[1:]:
        raise DataFileError(f"{path}: x_train's example shape {d.x_train.shape[1:]} differs from x_test's "
                            f"{d.x_test.shape[1:]}")
    if d.task_train is None:
        return
    _check_ids(d.task_train, len(d.x_train), "task_train", "x_train", path)
    _check_ids(d.task_test, len(d.x_test), "task_test", "x_test", path)
    count = int(d.task_train.max()) + 1
    if count > len(d.task_train):  # some task would be empty: refused before listing them
        raise DataFileError(f"{path}: task_train has task {count - 1}, but tasks are numbered 0..T-1 with an example "
                            f"each, and x_train has only {len(d.task_train)} examples")
    for name, ids in (("task_train", d.task_train), ("task_test", d.task_test)):
        empty = sorted(set(range(count)) - set(np.unique(ids).tolist()))
        if empty:
            raise DataFileError(f"{path}: tasks are numbered 0..{count - 1} by task_train, but {name} has no "
                                f"example of task {', '.join(map(str, empty))} (empty task)")
    if d.task_test.max() >= count:
        raise DataFileError(f"{path}: task_test has task {int(d.task_test.max())}, but task_train only 0..{count - 1}")


def _check_ids(ids: np.ndarray, n: int, name: str, of: str, path: Path) -> None:
    if not np.issubdtype(ids.dtype, np.integer):
        raise DataFileError(f"{path}: {name} must be integers, got {ids.dtype}")
    if ids.shape != (n,):
        raise DataFileError(f"{path}: {name} must have shape ({n},), one per example of {of}, got {ids.shape}")
    if ids.min() < 0:
        raise DataFileError(f"{path}: {name} must be >= 0, found {int(ids.min())}")
