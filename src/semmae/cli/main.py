"""Entry point of ``semmae``: ``semmae <command> [--config FILE] [section.field=value ...]``.

Each command module exposes ``register(subparsers)``; it adds its parser and sets ``func`` to a
callable taking the parsed args and returning an exit code. User errors (:class:`SemmaeError`) end
as one line on stderr and exit code 2, with no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from semmae import __version__
from semmae.errors import SemmaeError

# Command modules, in help order. Each defines register(subparsers).
COMMAND_MODULES = (
    "semmae.cli.pretrain",
    "semmae.cli.parts",
    "semmae.cli.eval",
    "semmae.cli.export",
    "semmae.cli.pipeline",
)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with every available command."""
    parser = argparse.ArgumentParser(
        prog="semmae",
        description="Semantic-guided masked image modeling (SemMAE) and MAE baselines.",
    )
    parser.add_argument("--version", action="version", version=f"semmae {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # command not part of this build
                continue
            raise
        module.register(sub)
    return parser


class _OneLineParserError(Exception):
    pass


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code (also used as ``sys.exit`` code by the script)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        code = args.func(args)
    except SemmaeError as exc:
        print(f"semmae: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("semmae: interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
