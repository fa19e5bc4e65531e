"""Old import paths (before the packages by layer) still import, as the same module, with a DeprecationWarning."""
from __future__ import annotations

import importlib
import json
import subprocess
import sys

import pytest

from clreg.moved import MOVED


def test_every_old_path_is_the_new_module_with_a_warning():
    """In a fresh process (nothing imported yet), each old path in turn."""
    code = """
import importlib, json, warnings
import clreg
from clreg.moved import MOVED
seen = {}
for old, new in MOVED.items():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(old)
    seen[old] = [str(w.message) for w in caught if w.category is DeprecationWarning], module.__name__
print(json.dumps(seen))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    seen = json.loads(done.stdout.splitlines()[-1])
    for old, new in MOVED.items():
        messages, name = seen[old]
        assert name == new
        assert any(f"{old} moved to {new}" in m for m in messages), (old, messages)


def test_old_and_new_paths_give_one_module():
    with pytest.warns(DeprecationWarning, match="clreg.penalty moved to clreg.core.penalty"):
        old = importlib.import_module("clreg.penalty")
    new = importlib.import_module("clreg.core.penalty")
    assert old is new
    with pytest.warns(DeprecationWarning):
        from clreg.callbacks import Callback  # the documented spelling of the callback API before the move
    assert Callback is importlib.import_module("clreg.train.callbacks").Callback
    assert new.__spec__.name == "clreg.core.penalty"  # the real module's own spec is untouched


def test_every_new_path_exists():
    for new in MOVED.values():
        importlib.import_module(new)
