"""``semmae export``: write an encoder as a timm ViT (safetensors) or an ONNX graph."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from semmae.cli.common import check_out
from semmae.encoder_spec import EXPORT_SUFFIXES, check_encoder_files, check_export_target


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export an encoder to timm (safetensors) or ONNX",
        description="Export an encoder. Example: semmae export --checkpoint runs/mae/checkpoints/last.pt "
        "--format timm --out mae_encoder.safetensors",
    )
    p.add_argument("--checkpoint", required=True, help="anything `semmae eval` accepts as --checkpoint")
    p.add_argument(
        "--format", required=True, choices=tuple(EXPORT_SUFFIXES),
        help="timm (a .safetensors file + constructor kwargs) or onnx (a .onnx graph)",
    )  # fmt: skip
    p.add_argument("--out", required=True, help="output file")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--no-verify", action="store_true", help="skip reloading the export to compare features")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    check_encoder_files(args.checkpoint)  # before torch: bad input is refused at once
    check_export_target(args.format, Path(args.out), overwrite=args.overwrite)
    check_out(args, None, ("the --checkpoint", args.checkpoint))
    from semmae.models.export import run_export  # heavy (torch, timm, onnx): only when run

    result = run_export(
        args.checkpoint, args.format, args.out, overwrite=args.overwrite, verify=not args.no_verify
    )
    print(json.dumps(result))
    return 0
