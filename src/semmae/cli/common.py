"""Arguments shared by commands: ``--config``, ``--out``, ``--resume``/``--overwrite``, overrides."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path
from typing import Any

from semmae import config as config_lib
from semmae.engine.runfiles import refuse_occupied_out  # reads files only: no torch


def add_config_args(parser: argparse.ArgumentParser, *, out: bool = True, resume: bool = True) -> None:
    """Add ``--config FILE``, ``[--out DIR]``, ``[--resume|--overwrite]`` and ``overrides...``."""
    parser.add_argument(
        "--config", help="YAML recipe (overrides of the defaults), e.g. configs/fmnist_tiny.yaml"
    )
    if out:
        parser.add_argument("--out", required=True, help="run directory to write")
    if resume:
        either = parser.add_mutually_exclusive_group()  # refused by argparse, before torch loads
        either.add_argument(
            "--resume", action="store_true", help="continue the run in --out from its last checkpoint"
        )
        either.add_argument(
            "--overwrite",
            action="store_true",
            help="replace the run in --out: delete what semmae wrote there (refused if --out holds anything else)",
        )
    add_overrides(parser)


def add_overrides(parser: argparse.ArgumentParser, example: str = "train.epochs=2") -> None:
    """Add the positional ``section.field=value`` config overrides."""
    parser.add_argument(
        "overrides", nargs="*", metavar="section.field=value", help=f"config overrides, e.g. {example}"
    )


def load_config(args: argparse.Namespace) -> config_lib.Config:
    """The validated config from ``--config`` and the positional overrides."""
    return config_lib.load(args.config, list(args.overrides))


def finish_run(result: dict[str, Any], command: str) -> int:
    """The exit code of a training command, after printing its outcome.

    A run stopped by a signal (``result["interrupted"]``: its number, -1 for a stop request) prints
    how to continue (``command`` + ``--resume``; the command names the run's own ``config.yaml``) and
    gives 128 + signal (1); any other prints ``result`` as one JSON line (main process only) and
    gives 0.
    """
    # Imported here: runtime imports torch, and --help or a refused config must start without it.
    from semmae.runtime import is_main

    sig = result.get("interrupted")
    if sig is None:
        if is_main():
            print(json.dumps(result))
        return 0
    name = signal.Signals(sig).name if sig > 0 else "stop request"
    print(
        f"semmae: stopped by {name} at step {result['step']}; checkpoint saved. "
        f"Continue with: {command} --resume",
        file=sys.stderr,
    )
    return 128 + sig if sig > 0 else 1


def check_run_out(args: argparse.Namespace) -> None:
    """Before torch loads: refuse a run command's occupied ``--out`` when neither ``--resume`` nor
    ``--overwrite`` is given (what the run would refuse seconds later, once its libraries load).

    Raises:
        RunDirError: ``--out`` holds a run, or files that are not semmae's.
    """
    if args.out and not args.resume and not args.overwrite:
        refuse_occupied_out(Path(args.out))


def check_out(
    args: argparse.Namespace, cfg: config_lib.Config | None = None, *inputs: tuple[str, str | None]
) -> None:
    """Before anything runs: refuse ``--out --overwrite`` when ``--out`` holds an input of the command.

    The inputs are ``--config``, the files ``cfg`` names (``data.root``, ``masking.parts``,
    ``parts.backbone``) and ``inputs``, ``(what, path)`` pairs such as ``("the --checkpoint", path)``.

    Raises:
        RunDirError: ``--out`` is, or contains, one of the inputs.
    """
    if not getattr(args, "overwrite", False):
        return
    # Imported here: engine imports torch, and --help or a refused config must start without it.
    from semmae.engine.rundir import check_out_holds_no_inputs, config_inputs

    named = [("the --config file", getattr(args, "config", None)), *inputs]
    check_out_holds_no_inputs(args.out, [*named, *config_inputs(cfg).items()])
