"""Entry point of ``semmae``: ``semmae <command> [--config FILE] [section.field=value ...]``.

Each command module exposes ``register(subparsers)``; it adds its parser and sets ``func`` to a
callable taking the parsed args and returning an exit code. User errors (:class:`SemmaeError`) end
as one line on stderr and exit code 2, with no traceback.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from semmae import __version__
from semmae.cli.interrupts import interrupted
from semmae.errors import SemmaeError

# Command modules, in help order. Each defines register(subparsers).
COMMAND_MODULES = (
    "semmae.cli.pretrain",
    "semmae.cli.parts",
    "semmae.cli.eval",
    "semmae.cli.export",
    "semmae.cli.pipeline",
)


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse's parser, whose usage errors are one line: what is wrong, and where help is.

    Sub-command parsers are of the same class (``add_subparsers`` builds them with ``type(self)``).
    """

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with every available command."""
    parser = OneLineErrorParser(
        prog="semmae",
        description="Semantic-guided masked image modeling (SemMAE) and MAE baselines.",
    )
    parser.add_argument("--version", action="version", version=f"semmae {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
_NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)
# An --out the file system cannot create: a file on its way, too long, a broken link, a folder
# where a file goes, a place that does not exist (/proc/x).
_BAD_PATH = (errno.ENOTDIR, errno.ENAMETOOLONG, errno.EEXIST, errno.EISDIR, errno.ELOOP, errno.ENOENT)
# torch.save reports a failed write as a RuntimeError from its zip writer, with no errno.
_TORCH_WRITE_FAILED = ("PytorchStreamWriter", "unexpected pos", "file write failed")


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse ``argv``, accepting ``section.field=value`` overrides anywhere, also after options.

    argparse fills a ``nargs="*"`` positional from one run of arguments only, so overrides split
    by an option (``a=1 --out R b=2``) would leave ``b=2`` unrecognised; they are appended here.
    """
    args, extra = parser.parse_known_args(argv)
    overrides = [a for a in extra if "=" in a and not a.startswith("-")]
    unknown = [a for a in extra if a not in overrides]
    if unknown or (overrides and not isinstance(getattr(args, "overrides", None), list)):
        words = [getattr(args, dest, None) for dest in ("command", "eval_command", "parts_command")]
        prog = " ".join([parser.prog, *filter(None, words)])  # the command the arguments were given to
        message = f"unrecognized arguments: {' '.join(unknown or overrides)}"
        parser.exit(2, f"{prog}: error: {message} (see '{prog} --help')\n")
    if overrides:
        args.overrides = [*args.overrides, *overrides]
    return args


def _names_the_output(filename: object, out: str | None, *, strict: bool = False) -> bool:
    """Whether the failed path is ``out`` or a folder above it, or (unless ``strict``: a missing
    file inside the run may be a bug) something in it or a sibling file (a part map's manifest)."""
    if not filename or not out:
        return False
    failed, target = Path(os.fsdecode(filename)).absolute(), Path(out).absolute()
    if failed == target or failed in target.parents:
        return True
    return not strict and (target in failed.parents or failed.parent == target.parent)


def os_error_message(exc: OSError, out: str | None, resumable: bool) -> str | None:
    """One line for a full or read-only file system, or an ``--out`` that cannot be a path there
    (under a file, a name too long, a broken link, ...); None for other OS errors (bugs keep their trace).

    Args:
        exc: the error.
        out: the command's ``--out``, named when the error carries no file name.
        resumable: the command takes ``--resume`` (then the message says to use it).
    """
    where = repr(str(exc.filename or out or "the output"))
    then = (
        " then run again with --resume to continue from the last checkpoint"
        if resumable
        else " then run again"
    )
    if exc.errno in _NO_SPACE:
        what = "quota exceeded" if exc.errno == errno.EDQUOT else "no space left on device"
        return f"cannot write {where}: {what}; free some space (or choose another --out),{then}"
    flag = "an --out" if out else "a --results FILE"  # the commands without --out write only results
    if exc.errno == errno.EROFS:
        return f"cannot write {where}: read-only file system; choose {flag} on a writable file system"
    if exc.errno in _NOT_WRITABLE:
        return f"permission denied on {where}; choose {flag} you can write to (inputs must be readable)"
    if exc.errno in _BAD_PATH and _names_the_output(exc.filename, out, strict=exc.errno == errno.ENOENT):
        what = "a file or a broken link is in the way" if exc.errno == errno.EEXIST else exc.strerror
        return f"cannot write {where}: {what or os.strerror(exc.errno)}; choose another --out"
    return None


def worker_error_message(text: str) -> str:
    """The message of an error raised in a DataLoader worker, without the worker's traceback.

    PyTorch re-raises it in the main process with the text ``Caught X in DataLoader worker
    process N.`` and the worker's traceback, whose last line is ``module.X: message``.
    """
    if "\nOriginal Traceback" not in text:
        return text
    last = text.rstrip().splitlines()[-1]
    kind, sep, message = last.partition(": ")
    return message if sep and " " not in kind else last


def _one_line(exc: BaseException, args: argparse.Namespace) -> str | None:
    """The one-line message of an error the user can fix, or None for a bug (keeps its traceback)."""
    out, resumable = getattr(args, "out", None), hasattr(args, "resume")
    if isinstance(exc, SemmaeError):
        return worker_error_message(str(exc))
    if isinstance(exc, OSError):
        return os_error_message(exc, out, resumable)
    if isinstance(exc, RuntimeError) and any(s in str(exc) for s in _TORCH_WRITE_FAILED):
        return (
            f"writing a checkpoint under {str(out or '.')!r} failed (the disk is full or the file system "
            "refused the write); free some space,"
            + (" then run again with --resume" if resumable else " then retry")
        )
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code (also used as ``sys.exit`` code by the script)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = build_parser()
    args = parse_args(parser, argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        code = args.func(args)
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (Terminated), outside a training loop
        return interrupted(exc)
    except (SemmaeError, OSError, RuntimeError) as exc:
        message = _one_line(exc, args)
        if message is None:
            raise
        print(f"semmae: error: {message}", file=sys.stderr)
        return 2
    return int(code or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
