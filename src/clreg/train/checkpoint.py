"""Task checkpoints of a run: tensors and plain data written with torch.save, read back with
`torch.load(..., weights_only=True)` (nothing in a checkpoint is unpickled as an object or executed).

Every checkpoint carries a SHA-256 checksum of its content (`checksum`: every tensor's dtype, shape and bytes
and every plain value, in the order saved), because torch.load checks neither the zip's CRCs nor the values:
a file changed on disk would otherwise resume a different run without a word. `load` refuses a checkpoint
whose checksum does not match, one that is empty or truncated, and one whose model or regulariser tensors
(importance, anchors) hold NaN or infinity. Checkpoints written before checksums (clreg 0.2 and earlier) have
none: they still load, with a `CheckpointWarning` saying their content could not be verified.
"""
from __future__ import annotations

import errno
import hashlib
import os
import pickle
import sys
import warnings
from pathlib import Path
from typing import Callable

import torch

from clreg.core.records import atomic_path

FORMAT = 1
AFRESH = "delete it to start the run afresh"
CHECKED_FINITE = ("model", "regularizer")  # the entries whose tensors must be finite (weights, importance, anchors)


class CheckpointError(ValueError):
    """A checkpoint that cannot be used for this run (unreadable, corrupted, another format, another config):
    `problem`, then what to do about it (`remedy`) where given."""

    def __init__(self, problem: str, remedy: str | None = None):
        super().__init__(f"{problem}; {remedy}" if remedy else problem)
        self.problem = problem


class CheckpointWarning(UserWarning):
    """A checkpoint loaded without its content verified (written before checkpoints had checksums)."""


def checksum(state: dict) -> str:
    """SHA-256 (hex) of `state`'s content: tensors by dtype, shape and bytes, plain values by type and value,
    containers in their order. The same for a state and what torch.save/torch.load make of it."""
    digest = hashlib.sha256()
    _feed(digest, state)
    return digest.hexdigest()


def _feed(digest, value) -> None:
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous()
        digest.update(f"tensor {tensor.dtype} {tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(value, dict):
        digest.update(f"dict {len(value)};".encode())
        for key, item in value.items():
            _feed(digest, key)
            _feed(digest, item)
    elif isinstance(value, (list, tuple)):
        digest.update(f"{type(value).__name__} {len(value)};".encode())
        for item in value:
            _feed(digest, item)
    elif isinstance(value, float):
        digest.update(f"float {value.hex()};".encode())
    else:
        digest.update(f"{type(value).__name__} {value!r};".encode())


def save(path: str | Path, state: dict) -> None:
    """Write `state` with its checksum atomically: a temporary file in the same directory, synced and renamed
    into place (a full disk leaves the previous checkpoint, and raises OSError naming `path`)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    state = {"format": FORMAT, **state}
    state["checksum"] = checksum(state)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:  # (a file object: write errors are OSErrors with their errno)
            torch.save(state, f)


def load(path: str | Path, config: dict) -> dict:
    """The checkpoint at `path`, verified (checksum, finite values) and checked to belong to a run of
    `config` (its canonical dict); CheckpointError saying what is wrong otherwise."""
    where = f"checkpoint {str(path)!r}"
    state = _read(path, where)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{where} is not a clreg task checkpoint (format {FORMAT})")
    expected = state.pop("checksum", None)
    if expected is None:
        warnings.warn(f"{where} has no checksum (written by an older clreg): it is used unverified",
                      CheckpointWarning, stacklevel=2)
    elif checksum(state) != expected:
        raise CheckpointError(f"{where}: checksum mismatch: the file is corrupted or was modified", AFRESH)
    for name in CHECKED_FINITE:
        bad = _non_finite(state.get(name), name)
        if bad is not None:
            raise CheckpointError(f"{where} holds non-finite values (NaN or infinity) in {bad}", AFRESH)
    if state.get("config") != config:
        theirs = state.get("config") or {}
        differ = sorted(k for k in set(theirs) | set(config) if theirs.get(k) != config.get(k))
        raise CheckpointError(f"{where} belongs to another run configuration (differs in: {', '.join(differ)})",
                              "delete it or drop --resume")
    return state


def _read(path: str | Path, where: str):
    """torch.load of `path`, its failures as CheckpointError in words (never torch's advice to unpickle)."""
    try:
        if os.path.getsize(path) == 0:
            raise CheckpointError(f"{where} is empty (a write that never finished?)", AFRESH)
        return torch.load(path, map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except pickle.UnpicklingError:
        reason = "it is not a torch file of tensors and plain data (nothing else is unpickled)"
    except OSError as err:  # (EINVAL: a seek past the end of a truncated file)
        reason = err.strerror if err.errno not in (None, errno.EINVAL) else "it is truncated or damaged"
    except (EOFError, RuntimeError):  # torch's reader: truncated or damaged zip archives
        reason = "it is truncated or damaged"
    except Exception as err:  # torch raises several other types for unreadable files
        reason = type(err).__name__
    raise CheckpointError(f"{where} cannot be read safely: {reason}", AFRESH)


def _non_finite(value, name: str) -> str | None:
    """The name of the first floating-point tensor in `value` holding NaN or infinity (None: all finite)."""
    if isinstance(value, torch.Tensor):
        if not (value.is_floating_point() or value.is_complex()):
            return None
        return None if bool(torch.isfinite(value).all()) else name
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, (list, tuple)) else ()
    for key, item in items:
        bad = _non_finite(item, f"{name}.{key}" if isinstance(key, str) else f"{name}[{key}]")
        if bad is not None:
            return bad
    return None


def discard_unusable(path: str | Path, config: dict,
                     log: Callable[[str], None] = lambda line: print(line, file=sys.stderr)) -> bool:
    """Where the checkpoint at `path` exists but cannot resume `config` (corrupted, unreadable, another run's),
    delete it, say so through `log` and return True, so the run starts from scratch. For callers that own
    their checkpoints (a sweep's); `clreg run --resume` refuses such a file instead."""
    if not Path(path).exists():
        return False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CheckpointWarning)  # the resume itself warns
            load(path, config)
    except CheckpointError as err:
        Path(path).unlink(missing_ok=True)
        log(f"discarded {err.problem}; the run starts from scratch")
        return True
    return False
