"""Where dataset files come from: a local data directory, the cache, or a checksummed download."""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from clreg.core.cache import ENV_CACHE_DIR, cache_dir  # noqa: F401 (ENV_CACHE_DIR: clreg.data's)
from clreg.core.extras import need
from clreg.core.options import SettingError
from clreg.data.dataset import ImageDataset
from clreg.data.idx import DataFileError

ENV_DATA_DIR = "CLREG_DATA_DIR"


@dataclass(frozen=True)
class RemoteFile:
    """A canonical file: its name, the md5 of the file as served, and the mirrors that serve it."""

    name: str
    md5: str
    mirrors: tuple[str, ...]


def search_roots(data_dir: str | Path | None) -> list[Path]:
    """Directories searched in order: --data-dir, $CLREG_DATA_DIR, the cache directory. A data_dir given
    that is not a folder is refused (SettingError), before any search or download."""
    check_data_dir(data_dir)
    roots = [Path(d) for d in (data_dir, os.environ.get(ENV_DATA_DIR)) if d]
    return [*roots, cache_dir()]


def check_data_dir(data_dir: str | Path | None) -> None:
    """SettingError unless `data_dir` is None or an existing folder."""
    if data_dir is not None and not Path(data_dir).is_dir():
        what = "is a file, not a folder" if Path(data_dir).exists() else "does not exist"
        raise SettingError(f"{{0}} {str(data_dir)!r} {what} (it should contain mnist/, cifar10/, ...)", "data_dir")


def locate(dataset: str, files: list[RemoteFile], data_dir: str | Path | None, download: bool = True,
           system_roots: tuple[str, ...] = ()) -> list[Path]:
    """Paths of `files` under `<root>/<dataset>/` (the search roots, then `system_roots`, e.g. where a
    Debian package puts them), downloading missing ones into the cache."""
    roots = [*search_roots(data_dir), *map(Path, system_roots)]
    for root in roots:
        paths = [_existing(root / dataset / f.name) for f in files]
        if all(p is not None for p in paths):
            return paths
    if download:
        try:
            return [_download(dataset, f) for f in files]
        except Exception as err:  # network errors come in many types; report them all the same way
            reason = f" (download failed: {err})"
    else:
        reason = ""
    names = ", ".join(f.name for f in files)
    where = " or ".join(str(r / dataset) for r in roots)
    raise DataFileError(f"{dataset} not found{reason}. Put the files {names} into {where} "
                        f"(--data-dir DIR or ${ENV_DATA_DIR} point at DIR containing {dataset}/)")


def _existing(path: Path) -> Path | None:
    """`path`, or its decompressed twin (`x.gz` → `x`), if either is a file."""
    for candidate in (path, path.with_suffix("") if path.suffix == ".gz" else path):
        if candidate.is_file():
            return candidate
    return None


def _download(dataset: str, remote: RemoteFile, processor=None) -> Path:
    """Download `remote` into `<cache>/<dataset>/` from the first mirror that serves it with the right md5."""
    pooch = need("pooch", "downloading datasets")
    target = cache_dir() / dataset
    last: Exception | None = None
    for mirror in remote.mirrors:
        try:
            pooch.retrieve(mirror + remote.name, known_hash=f"md5:{remote.md5}", fname=remote.name, path=target,
                           processor=processor, progressbar=False)
            return target / remote.name
        except Exception as err:  # network and checksum errors come in many types; try the next mirror
            last = err
    raise DataFileError(f"could not download {remote.name} (md5 {remote.md5}) into {target}: {last}")


def download_archive(dataset: str, remote: RemoteFile) -> Path:
    """Download `remote` (a .tar.gz or .zip) into `<cache>/<dataset>/`, verify its md5 and unpack it there;
    returns that folder. A failed download or a wrong checksum raises DataFileError."""
    pooch = need("pooch", "downloading datasets")
    unpack = pooch.Unzip(extract_dir=".") if remote.name.endswith(".zip") else pooch.Untar(extract_dir=".")
    try:
        _download(dataset, remote, unpack)
    except DataFileError as err:
        raise DataFileError(f"{err}. Download it yourself and unpack it into {cache_dir() / dataset}, "
                            "or point --data-dir at a copy") from None
    return cache_dir() / dataset


def cached_arrays(key: str, files: list[Path], build: Callable[[], ImageDataset]) -> ImageDataset:
    """The decoded arrays from `<cache>/arrays/` if they were built from these very files (path, size and
    modification time), else `build()`, cached atomically as an .npz for the next load."""

    stamp = hashlib.sha256(repr([(str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files])
                           .encode()).hexdigest()[:16]
    path = cache_dir() / "arrays" / f"{key}-{stamp}.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            return ImageDataset(z["x_train"], z["y_train"], z["x_test"], z["y_test"])
    data = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
    np.savez(tmp, x_train=data.x_train, y_train=data.y_train, x_test=data.x_test, y_test=data.y_test)
    tmp.replace(path)  # atomic: a concurrent reader never sees half a file
    return data
