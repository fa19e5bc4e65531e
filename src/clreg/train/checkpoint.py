"""Task checkpoints of a run: tensors and plain data written with torch.save, read back with
`torch.load(..., weights_only=True)` (nothing in a checkpoint is unpickled as an object or executed)."""
from __future__ import annotations

from pathlib import Path

import torch

from clreg.core.records import atomic_path

FORMAT = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be used for this run (unreadable, another format, another config)."""


def save(path: str | Path, state: dict) -> None:
    """Write `state` atomically: a temporary file in the same directory, renamed into place."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, **state}, tmp)


def load(path: str | Path, config: dict) -> dict:
    """The checkpoint at `path`, checked to belong to a run of `config` (its canonical dict)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for unreadable or unsafe files
        raise CheckpointError(f"checkpoint {str(path)!r} cannot be read safely: {str(err).splitlines()[0]}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {str(path)!r} is not a clreg task checkpoint (format {FORMAT})")
    if state.get("config") != config:
        theirs = state.get("config") or {}
        differ = sorted(k for k in set(theirs) | set(config) if theirs.get(k) != config.get(k))
        raise CheckpointError(f"checkpoint {str(path)!r} belongs to another run configuration "
                              f"(differs in: {', '.join(differ)}); delete it or drop --resume")
    return state
