"""The scripts in examples/, imported as modules, so that tests run their protocols."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType


def load_example(file: str) -> ModuleType:
    """examples/`file` as a module (its `if __name__ == "__main__"` part not run)."""
    path = Path(__file__).parents[1] / "examples" / file
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
