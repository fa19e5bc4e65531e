"""The `clreg` command line. Its commands (`clreg.cli.commands`, options derived from the declared settings) need
the cli extra (click, PyYAML, tqdm); this entry point imports them at first use, so that without the extra
`clreg` says in one line how to install it."""
import sys


def main() -> None:
    """The `clreg` console script."""
    from clreg.core.extras import EXTRAS, MissingExtra, need

    try:
        for module in (module for module, (_, extra) in EXTRAS.items() if extra == "cli"):
            need(module, "the clreg command")
    except MissingExtra as err:
        sys.exit(f"clreg: error: {err}")
    from clreg.cli.commands import main as commands_main

    commands_main()


__all__ = ["main"]
