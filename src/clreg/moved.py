"""Import paths that changed when clreg's modules moved into packages by layer (0.2). Each old path still
imports, as the very module at its new path, with a DeprecationWarning naming it; they go in the next
release. (The moved modules are listed here, not kept as files: one table, one finder.)"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

MOVED = {
    "clreg.options": "clreg.core.options", "clreg.device": "clreg.core.device", "clreg.penalty": "clreg.core.penalty",
    "clreg.importance.statistic": "clreg.core.statistic", "clreg.native": "clreg.core.native",
    "clreg.fused": "clreg.core.fused", "clreg.results": "clreg.core.records", "clreg.parallel": "clreg.train.nproc",
    "clreg.importance.batch": "clreg.importance.inputs", "clreg.network": "clreg.models.network",
    "clreg.vgg": "clreg.models.vgg", "clreg.config": "clreg.train.config", "clreg.optim": "clreg.train.optim",
    "clreg.checkpoint": "clreg.train.checkpoint", "clreg.callbacks": "clreg.train.callbacks",
    "clreg.progress": "clreg.train.progress", "clreg.steplog": "clreg.train.steplog", "clreg.proxy": "clreg.train.proxy",
    "clreg.plateau": "clreg.train.plateau", "clreg.task_search": "clreg.train.task_search",
    "clreg.metrics": "clreg.train.metrics", "clreg.stacked": "clreg.vectorized.stacked",
    "clreg.stacked_step": "clreg.vectorized.step", "clreg.sweepspec": "clreg.sweeps.spec",
    "clreg.sweep": "clreg.sweeps.plan", "clreg.store": "clreg.sweeps.store", "clreg.store_import": "clreg.sweeps.importing",
    "clreg.executors": "clreg.sweeps.executors", "clreg.report": "clreg.sweeps.report",
}


def warn(old: str, stacklevel: int) -> None:
    warnings.warn(f"{old} moved to {MOVED[old]}; the old path will be removed in the next release",
                  DeprecationWarning, stacklevel=stacklevel)


class MovedFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old path and loads it as the module at its new path."""

    def find_spec(self, name, path=None, target=None):  # noqa: D102
        return importlib.util.spec_from_loader(name, self) if name in MOVED else None

    def create_module(self, spec):  # noqa: D102
        return None  # a placeholder: exec_module puts the real module in its place

    def exec_module(self, module):  # noqa: D102
        old = module.__spec__.name
        warn(old, stacklevel=6)
        sys.modules[old] = importlib.import_module(MOVED[old])  # the import system returns what is here


def install() -> None:
    """Add the finder once (importing clreg does it)."""
    if not any(isinstance(finder, MovedFinder) for finder in sys.meta_path):
        sys.meta_path.append(MovedFinder())
