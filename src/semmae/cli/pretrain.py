"""``semmae pretrain``: MAE / SemMAE pretraining into a run directory."""

from __future__ import annotations

import argparse
import json
import signal
import sys

from semmae.cli.common import add_config_args, load_config


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pretrain",
        help="pretrain an MAE (random, block or semantic masking)",
        description="Pretrain an MAE into --out. Example: semmae pretrain --config configs/fmnist_tiny.yaml "
        "--out runs/mae train.epochs=2 data.limit=2000",
    )
    add_config_args(p)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    cfg = load_config(args)  # bad input is refused before torch is imported (start-up time)
    from semmae.engine.pretrain import run_pretrain  # heavy: torch, timm, torchvision
    from semmae.runtime import is_main

    summary = run_pretrain(cfg, args.out, resume=args.resume, overwrite=args.overwrite)
    if summary.get("interrupted_by") is not None:
        sig = summary["interrupted_by"]
        name = signal.Signals(sig).name if sig > 0 else "stop request"
        print(
            f"semmae: stopped by {name} at step {summary['step']}; checkpoint saved. "
            f"Continue with: semmae pretrain --out {args.out} --resume ...",
            file=sys.stderr,
        )
        return 128 + sig if sig > 0 else 1
    if is_main():
        print(json.dumps(summary))
    return 0
