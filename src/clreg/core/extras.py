"""clreg's optional dependencies. The core install is torch and numpy; everything else comes with a pip extra
(README, "Installing") and is imported at first use, so that a missing one is one line naming its extra."""
from __future__ import annotations

from importlib import import_module
from types import ModuleType

# top-level module -> (what pip installs, the extra that brings it)
EXTRAS = {"click": ("click", "cli"), "yaml": ("PyYAML", "cli"), "tqdm": ("tqdm", "cli"),
          "matplotlib": ("matplotlib", "plots"), "pooch": ("pooch", "data"), "sklearn": ("scikit-learn", "digits")}


class MissingExtra(ImportError):
    """An optional dependency is not installed; the message is one line naming the extra that installs it."""


def need(module: str, purpose: str) -> ModuleType:
    """`import module` (e.g. "matplotlib.pyplot"), or MissingExtra: "<purpose> needs <package>: pip install
    'clreg[<extra>]'". `purpose` says what the caller was about to do, e.g. "the analyses' figures"."""
    package, extra = EXTRAS[module.split(".")[0]]
    try:
        return import_module(module)
    except ImportError:
        raise MissingExtra(f"{purpose} needs {package}, which is not installed: pip install 'clreg[{extra}]'") from None
