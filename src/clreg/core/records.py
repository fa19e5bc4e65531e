"""Run records: versions of everything involved, the machine, and atomic JSON writes."""
from __future__ import annotations

import errno
import json
import os
import platform
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Iterator

import torch


def git_revision() -> str | None:
    """The clreg source tree's git revision (with '-dirty' if modified), or None outside a checkout."""
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return rev.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict:
    """Python, torch, clreg and git revision."""
    try:
        clreg_version = metadata.version("clreg")
    except metadata.PackageNotFoundError:
        clreg_version = None
    return {"python": sys.version.split()[0], "torch": torch.__version__, "clreg": clreg_version,
            "git_revision": git_revision()}


def cpu_model() -> str | None:
    """The CPU's model name (Linux: /proc/cpuinfo), or None where it cannot be read."""
    try:
        with open("/proc/cpuinfo") as info:
            return next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), None)
    except OSError:
        return None


def machine() -> dict:
    """What the numbers were measured on. The CPU's vector instructions pick torch's kernels, and with them
    the rounding: runs that differ only there part trajectories after a few hundred steps."""
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_model": cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}


def provenance(command: str | None = None) -> dict:
    """What made a result: the software's versions, the machine and the command (by default this process's
    own command line)."""
    return {"versions": versions(), "machine": machine(),
            "command": command or " ".join([sys.executable, *sys.argv])}


DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})  # the errnos of "no space left on device" (and quota)


def ensure_directory(directory: str | Path, what: str = "output") -> None:
    """Create `directory` (and its parents) if missing; ValueError saying why if it cannot be, or if it is
    not writable (a file is created there and removed at once, so read-only mounts are found too)."""
    directory = Path(directory)
    if not directory.is_dir():
        existing = next((p for p in [directory, *directory.parents] if p.exists()), None)
        if existing == directory:
            raise ValueError(f"the {what} directory {str(directory)!r} is a file")
        if existing is not None and not existing.is_dir():
            raise ValueError(f"cannot create the {what} directory {str(directory)!r}: {str(existing)!r} is a file")
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ValueError(f"cannot create the {what} directory {str(directory)!r}: {err.strerror or err}") from None
    try:
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as err:
        raise ValueError(f"the {what} directory {str(directory)!r} is not writable: {err.strerror or err}") from None


def check_writable(path: str | Path, what: str = "output") -> None:
    """Raise ValueError unless the file `path` can be written (checked before any training); its directory is
    created if missing. `what` names the file in the message (output, checkpoint, ...)."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise ValueError(f"{what} path {str(path)!r} is a directory; give a file name")
    ensure_directory(parent, what)
    if path.exists() and not os.access(path, os.W_OK):
        raise ValueError(f"{what} path {str(path)!r} is not writable")


def naming(err: OSError, path: str | Path) -> OSError:
    """`err` (same errno and type) naming `path`, the file the user knows: a write's errors name no file
    (ENOSPC from write(2)) or a temporary one."""
    if err.errno is None:
        return err
    return OSError(err.errno, err.strerror or os.strerror(err.errno), str(path))


@contextmanager
def atomic_path(path: str | Path) -> Iterator[str]:
    """A temporary file beside `path` to write; synced to disk and renamed onto `path` if the block succeeds,
    else removed, so `path` is the old file or the whole new one, never a part. An OSError (a full disk, a
    read-only directory) is raised naming `path`."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent if str(path.parent) else ".", prefix=path.name, suffix=".tmp")
    except OSError as err:
        raise naming(err, path) from None
    os.close(fd)
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)  # a full disk can show only here (delayed allocation, network file systems)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise naming(err, path) from err
        raise


def write_json(path: str | Path, data: dict) -> None:
    """Write `data` as JSON atomically (a temporary file renamed into place)."""
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1)
            f.write("\n")
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are meant to be read by others
