"""clreg's one cache root: downloaded datasets, their decoded arrays, the native kernel's builds."""
from __future__ import annotations

import os
from pathlib import Path

ENV_CACHE_DIR = "CLREG_CACHE_DIR"


def cache_dir() -> Path:
    """$CLREG_CACHE_DIR, else the platform's user cache directory for clreg: pooch's (the data extra), or
    without pooch $XDG_CACHE_HOME/clreg or ~/.cache/clreg (the same folder on Linux)."""
    if os.environ.get(ENV_CACHE_DIR):
        return Path(os.environ[ENV_CACHE_DIR])
    try:
        import pooch
    except ImportError:  # the core install (torch, numpy) still caches the native kernel's builds
        return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "clreg"
    return Path(pooch.os_cache("clreg"))
