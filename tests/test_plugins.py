"""Measures from other packages, through the clreg.measures entry-point group of a really installed package: one
that registers itself with the documented decorator loads once; a broken one is skipped with a warning and
takes nothing down (`import clreg`, `clreg methods`)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

PLUGIN = '''
import torch
import clreg
from clreg.core.options import Option


@clreg.importance.register  # registers on load: the entry point names the same class again
class ToySquared(clreg.importance.ImportanceMeasure):
    name = "toy-squared"
    description = "a plugin's measure"
    needs_sample = True
    settings = (Option("toy_power", float, 1.0, "toy-squared: the power", argument="power"),)

    def __init__(self, power: float = 1.0):
        self.power = power

    def task_importance(self, params, sample):
        return [torch.ones_like(p) for p in params]
'''
PYPROJECT = '''
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "clreg-toy-plugins"
version = "0.1"

[project.entry-points."clreg.measures"]
toy-squared = "clreg_toy_plugin:ToySquared"
broken = "clreg_toy_broken:Missing"

[tool.setuptools]
py-modules = ["clreg_toy_plugin", "clreg_toy_broken"]
'''


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The plugin package installed with pip into a folder of its own (put on PYTHONPATH by the tests)."""
    root = tmp_path_factory.mktemp("plugin")
    source, site = root / "source", root / "site"
    source.mkdir()
    (source / "pyproject.toml").write_text(textwrap.dedent(PYPROJECT))
    (source / "clreg_toy_plugin.py").write_text(PLUGIN)
    (source / "clreg_toy_broken.py").write_text("raise ImportError('this plugin is broken')\n")
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                           "--no-index", "--target", str(site), str(source)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"pip could not install the test plugin here: {done.stderr[-500:]}")
    return {**os.environ, "PYTHONPATH": str(site)}


def test_a_self_registering_plugin_loads_once_and_a_broken_one_is_skipped(installed):
    code = ("import warnings\nwarnings.simplefilter('always')\nimport clreg\n"
            "print('REGISTERED', clreg.importance.measure_class('toy-squared').__name__)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=installed)
    assert done.returncode == 0, done.stderr
    assert "REGISTERED ToySquared" in done.stdout
    assert "skipped the measure plugin 'broken' (clreg_toy_broken:Missing): ImportError: this plugin is broken" \
        in done.stderr
    assert "not yet registered" not in done.stderr  # the decorator's registration is not repeated


def test_every_command_still_works_beside_a_broken_plugin(installed):
    done = subprocess.run([sys.executable, "-c", "from clreg.cli import main; main()", "methods"],
                          capture_output=True, text=True, env=installed)
    assert done.returncode == 0, done.stderr
    assert "toy-squared" in done.stdout and "--toy-power" in done.stdout
