"""``semmae pretrain``: MAE / SemMAE pretraining into a run directory."""

from __future__ import annotations

import argparse
from pathlib import Path
from shlex import quote

from semmae.cli.common import add_config_args, check_out, check_run_out, finish_run, load_config


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
    cfg.train.check_pretraining()  # before torch loads: nothing to train
    cfg.masking.part_map_file()  # semantic masking without its maps: refused before torch loads
    check_run_out(args)
    check_out(args, cfg)
    from semmae.train.pretrain import run_pretrain  # heavy: torch, timm, torchvision

    summary = run_pretrain(cfg, args.out, resume=args.resume, overwrite=args.overwrite)
    return finish_run(
        summary,
        f"semmae pretrain --config {quote(str(Path(args.out) / 'config.yaml'))} --out {quote(args.out)}",
    )
