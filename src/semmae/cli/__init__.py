"""The ``semmae`` command line: thin commands that load a config and call one ``run_*`` function."""

from __future__ import annotations

import sys
from typing import NoReturn

from semmae.cli.interrupts import interrupted, interrupts_outside_imports  # light: signal and threading only


def entry() -> NoReturn:
    """The ``semmae`` console script (and ``python -m semmae``): :func:`semmae.cli.main.main`,
    with Ctrl-C handled from its first instant, imports included."""
    with interrupts_outside_imports():
        try:
            from semmae.cli.main import main  # imported under the handler: Ctrl-C may come during it

            code = main()
        except KeyboardInterrupt as exc:  # while the command's modules were imported
            code = interrupted(exc)
    sys.exit(code)
