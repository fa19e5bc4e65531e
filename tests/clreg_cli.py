"""`clreg ARGS` run in the test's own process (no interpreter start, no torch import per call)."""
from __future__ import annotations

import sys

from clreg.cli.commands import main


def invoke(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    """`clreg ARGS` through its entry point: (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["clreg", *map(str, args)])
    try:
        main()
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    out = capsys.readouterr()
    return code, out.out, out.err


def invoke_err(monkeypatch, capsys, *args) -> tuple[int, str]:
    """`clreg ARGS`: (exit code, stderr)."""
    code, _, err = invoke(monkeypatch, capsys, *args)
    return code, err
