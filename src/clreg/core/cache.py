"""clreg's one cache root: downloaded datasets, their decoded arrays, the native kernel's builds."""
from __future__ import annotations

import os
from pathlib import Path

ENV_CACHE_DIR = "CLREG_CACHE_DIR"


def cache_dir() -> Path:
    """$CLREG_CACHE_DIR, else the platform's user cache directory for clreg."""
    import pooch  # (imported at first use: it is needed only here)

    return Path(os.environ.get(ENV_CACHE_DIR) or pooch.os_cache("clreg"))
