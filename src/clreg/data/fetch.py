"""Where dataset files come from: a local data directory, the cache, or a checksummed download."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .idx import DataFileError

ENV_DATA_DIR = "CLREG_DATA_DIR"
ENV_CACHE_DIR = "CLREG_CACHE_DIR"


@dataclass(frozen=True)
class RemoteFile:
    """A canonical file: its name, the md5 of the file as served, and the mirrors that serve it."""

    name: str
    md5: str
    mirrors: tuple[str, ...]


def cache_dir() -> Path:
    """$CLREG_CACHE_DIR, else the platform's user cache directory for clreg."""
    import pooch

    return Path(os.environ.get(ENV_CACHE_DIR) or pooch.os_cache("clreg"))


def search_roots(data_dir: str | Path | None) -> list[Path]:
    """Directories searched in order: --data-dir, $CLREG_DATA_DIR, the cache directory."""
    roots = [Path(d) for d in (data_dir, os.environ.get(ENV_DATA_DIR)) if d]
    return [*roots, cache_dir()]


def locate(dataset: str, files: list[RemoteFile], data_dir: str | Path | None, download: bool = True
           ) -> list[Path]:
    """Paths of `files` under `<root>/<dataset>/`, downloading missing ones into the cache."""
    roots = search_roots(data_dir)
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


def _download(dataset: str, remote: RemoteFile) -> Path:
    import pooch

    target = cache_dir() / dataset
    last: Exception | None = None
    for mirror in remote.mirrors:
        try:
            return Path(pooch.retrieve(mirror + remote.name, known_hash=f"md5:{remote.md5}",
                                       fname=remote.name, path=target, progressbar=False))
        except Exception as err:  # try the next mirror
            last = err
    raise DataFileError(f"could not download {remote.name}: {last}")
