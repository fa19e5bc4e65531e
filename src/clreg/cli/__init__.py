"""The `clreg` command line (`commands`): its options are derived from the declared settings."""
from clreg.cli.commands import main

__all__ = ["main"]
