"""``semmae parts``: stage 1 — train the part learner, export part maps, draw them, oracle maps.

Examples::

    semmae parts train --config configs/parts_toy.yaml --out runs/parts \
        parts.backbone=runs/mae/checkpoints/last.pt
    semmae parts export --run runs/parts --split train --out runs/parts/maps_train.npy
    torchrun --nproc-per-node 4 -m semmae parts export --run-dir runs/parts --split train --out maps.npy
    semmae parts show --maps runs/parts/maps_train.npy --config configs/parts_toy.yaml --out maps.png
    semmae parts from-masks --config configs/parts_toy.yaml --split train --grid 8 --out oracle_train.npy
"""

from __future__ import annotations

import argparse
from pathlib import Path
from shlex import quote

from semmae.cli.common import (
    add_config_args,
    add_overrides,
    check_out,
    check_run_out,
    finish_run,
    load_config,
)
from semmae.config_checks import device_name
from semmae.encoder_spec import check_encoder_files
from semmae.errors import ConfigError, RunDirError
from semmae.file_kinds import (
    IMAGE_SUFFIXES,
    manifest_path,
    npy_path,
    refuse_foreign_output,
    refuse_part_map_out,
)

_REPLACE_MAPS = "replace existing part maps (never a file semmae did not write)"


def _output_args(parser: argparse.ArgumentParser, out_help: str, overwrite_help: str) -> None:
    """``--out FILE`` and ``--overwrite`` of a single-file output."""
    parser.add_argument("--out", required=True, help=out_help)
    parser.add_argument("--overwrite", action="store_true", help=overwrite_help)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("parts", help="stage 1: semantic part learning and part maps")
    psub = p.add_subparsers(dest="parts_command", metavar="SUBCOMMAND", required=True)

    train = psub.add_parser(
        "train", help="train the part learner on a frozen backbone",
        description="Train the stage-1 part learner into --out. Example: semmae parts train --config "
        "configs/parts_toy.yaml --out runs/parts parts.backbone=runs/mae/checkpoints/last.pt",
    )  # fmt: skip
    add_config_args(train)
    train.set_defaults(func=_train)

    export = psub.add_parser(
        "export", help="label a split with a trained part learner",
        description="Write the part maps of one split (NAME.npy and its NAME.json manifest), for "
        "masking.parts. Example: semmae parts export --run runs/parts --split train --out runs/maps_train.npy",
    )  # fmt: skip
    # --run-dir: torchrun's own parser reads a bare --run as an abbreviation of its --run-path.
    export.add_argument(
        "--run", "--run-dir", dest="run", required=True,
        help="part-learner run directory (or its checkpoint); spell it --run-dir under torchrun",
    )  # fmt: skip
    export.add_argument("--split", choices=("train", "test"), required=True, help="which split to label")
    _output_args(export, "part-map file to write (.npy; manifest next to it)", _REPLACE_MAPS)
    export.add_argument("--batch-size", type=int, default=256, help="images per forward (>= 1)")
    export.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    export.set_defaults(func=_export)

    show = psub.add_parser(
        "show", help="draw images with their part maps overlaid",
        description="Draw the first --n images of the maps' split beside their part maps. Example: semmae "
        "parts show --maps runs/maps_train.npy --config configs/parts_toy.yaml --out parts.png",
    )  # fmt: skip
    show.add_argument("--maps", required=True, help="part-map file (.npy)")
    show.add_argument("--config", help="YAML recipe whose data section matches the maps' dataset")
    show.add_argument("--n", type=int, default=16, help="images to draw (>= 1)")
    _output_args(show, "image to write (.png, .jpg, ...)", "replace an existing image semmae drew")
    add_overrides(show, "data.limit=256")
    show.set_defaults(func=_show)

    masks = psub.add_parser(
        "from-masks", help="oracle part maps from ground-truth part masks (toy_parts)",
        description="Write part maps from a synthetic set's true part masks (the study's oracle). Example: "
        "semmae parts from-masks --config configs/parts_toy.yaml --split train --grid 7 --out oracle.npy",
    )  # fmt: skip
    masks.add_argument("--config", help="YAML recipe with a toy_parts data section")
    masks.add_argument("--split", choices=("train", "test"), required=True, help="which split to label")
    masks.add_argument(
        "--grid", type=int, required=True, help="label grid side h = w (e.g. the MAE's patch grid)"
    )
    _output_args(masks, "part-map file to write (.npy; manifest next to it)", _REPLACE_MAPS)
    add_overrides(masks, "data.toy_size=600")
    masks.set_defaults(func=_from_masks)


def _train(args: argparse.Namespace) -> int:
    cfg = load_config(args)  # bad input is refused before torch is imported (start-up time)
    check_run_out(args)
    check_out(args, cfg)
    if cfg.parts.backbone is not None:
        check_encoder_files(cfg.parts.backbone)
    from semmae.train.parts import run_parts_train  # heavy: torch, timm, torchvision

    summary = run_parts_train(cfg, args.out, resume=args.resume, overwrite=args.overwrite)
    return finish_run(
        summary,
        f"semmae parts train --config {quote(str(Path(args.out) / 'config.yaml'))} --out {quote(args.out)}",
    )


def _written(out: str) -> str:
    """The two files a part-map output writes, for the closing message."""
    return f"{npy_path(out)} and {manifest_path(out)}"


def _at_least_one(flag: str, value: int, what: str) -> None:
    if value < 1:
        raise ConfigError(f"{flag} must be at least 1 ({what}), got {value}")


def _check_cuda(device: str) -> None:
    """``--device cuda`` refused where there is none, with this command's fix (not the config's)."""
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {device} needs CUDA, which is not available here; use --device cpu")


def _export(args: argparse.Namespace) -> int:
    _at_least_one("--batch-size", args.batch_size, "images per forward")  # before torch: start-up time
    device_name("--device", args.device)
    refuse_part_map_out(args.out, overwrite=args.overwrite)
    from semmae.parts.export import export_part_maps  # heavy: torch, timm
    from semmae.runtime import is_main  # imports torch

    _check_cuda(args.device)
    check_out(args, None, ("the --run", args.run))
    manifest = export_part_maps(
        args.run,
        args.split,
        args.out,
        batch_size=args.batch_size,
        device=args.device,
        overwrite=args.overwrite,
    )
    if is_main():
        print(
            f"wrote {_written(args.out)}: {manifest.num_images} maps, grid {manifest.grid}, K={manifest.num_parts}"
        )
    return 0


def _show(args: argparse.Namespace) -> int:
    _at_least_one("--n", args.n, "images to draw")
    if Path(args.out).is_dir():
        raise RunDirError(f"--out {args.out!r} is a folder; give an image file name such as grid.png")
    if Path(args.out).suffix.lower() not in IMAGE_SUFFIXES:
        raise RunDirError(f"--out {args.out!r} needs an image file extension ({', '.join(IMAGE_SUFFIXES)})")
    refuse_foreign_output(Path(args.out), "image")
    if Path(args.out).exists() and not args.overwrite:
        raise RunDirError(f"{args.out!r} exists; pass --overwrite to replace it")
    cfg = load_config(args)
    from semmae.viz.parts import render_part_map_file  # heavy: torch, matplotlib

    check_out(args, cfg, ("the --maps file", args.maps))
    path = render_part_map_file(args.maps, cfg.data, args.n, args.out)
    print(f"wrote {path}")
    return 0


def _from_masks(args: argparse.Namespace) -> int:
    cfg = load_config(args)  # bad input is refused before torch is imported (start-up time)
    refuse_part_map_out(args.out, overwrite=args.overwrite)
    from semmae.parts.export import maps_from_masks  # heavy: torch

    check_out(args, cfg)
    manifest = maps_from_masks(cfg, args.split, args.grid, args.out, overwrite=args.overwrite)
    print(
        f"wrote {_written(args.out)}: {manifest.num_images} oracle maps, grid {manifest.grid}, "
        f"K={manifest.num_parts}"
    )
    return 0
