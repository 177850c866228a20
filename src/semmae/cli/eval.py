"""``semmae eval knn|linear|finetune``: evaluate an encoder on the config's dataset.

The data section defaults to the checkpoint's own (when it records one); ``--config`` and the
``section.field=value`` overrides apply on top. Progress goes to stderr; the LAST stdout line is
one JSON object with the result, which is also appended to ``results.jsonl`` in the checkpoint's
run directory (the directory holding ``checkpoints/``), or to ``--results FILE``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
from pathlib import Path
from shlex import quote
from typing import Any

from semmae import config as config_lib
from semmae.cli.common import add_config_args, check_out, check_run_out, finish_run
from semmae.encoder_spec import check_encoder_files, parse_encoder_spec
from semmae.errors import ConfigError, RunDirError

log = logging.getLogger(__name__)

_COMMANDS = {
    "knn": "weighted kNN (k=eval.knn_k, T=eval.knn_t) on frozen features",
    "linear": "linear probe on the frozen encoder: eval.linear_protocol=fast (lr grid eval.linear_lrs on "
    "cached features) or mae (MAE's LARS probe on fresh crops, trained into --out)",
    "finetune": "fine-tune the encoder as a classifier into --out (MAE recipe: layer decay, mixup)",
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate an encoder: knn, linear, finetune",
        description="Evaluate an encoder. Example: semmae eval knn --checkpoint runs/mae/checkpoints/last.pt",
    )
    evsub = p.add_subparsers(dest="eval_command", metavar="EVAL", required=True)
    for name, text in _COMMANDS.items():
        q = evsub.add_parser(name, help=text, description=text)
        q.add_argument(
            "--checkpoint",
            required=True,
            help="our checkpoint (.pt), an official MAE .pth, a timm ViT file, timm:NAME@FILE "
            "or random:<preset>",
        )
        q.add_argument("--results", help="append the result here instead of RUN_DIR/results.jsonl")
        add_config_args(q, out=name == "finetune", resume=name != "knn")
        if name == "linear":
            q.add_argument("--out", help="run directory of the probe (eval.linear_protocol=mae only)")
        q.set_defaults(func=lambda args, name=name: _run(name, args))


def eval_config(
    checkpoint_data: dict[str, Any] | None, config_path: str | None, overrides: list[str]
) -> config_lib.Config:
    """The ordinary config load on a base of the defaults and the checkpoint's data section.

    Raises:
        ConfigError: bad file, unknown key or invalid value.
    """
    # A run of another version may record keys this one does not have (missing ones take defaults).
    known = {f.name for f in dataclasses.fields(config_lib.DataConfig)}
    data = {k: v for k, v in (checkpoint_data or {}).items() if k in known}
    return config_lib.load(config_path, overrides, base=config_lib.from_dict({"data": data}))


def results_path(spec: str, results: str | None) -> Path | None:
    """``--results``, else RUN_DIR/results.jsonl for a checkpoint in RUN_DIR/checkpoints/, else next to
    the checkpoint file; None for ``random:`` encoders without ``--results``."""
    if results:
        return Path(results)
    ckpt = parse_encoder_spec(spec).path
    if ckpt is None:
        return None
    run_dir = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
    return run_dir / "results.jsonl"


def _check_creatable(path: Path, where: str, fix: str) -> None:
    """Refuse a new results file whose nearest existing ancestor is no folder this process may write."""
    above = path.parent
    while not above.exists() and above != above.parent:
        above = above.parent
    if not above.is_dir():
        raise RunDirError(f"{where} cannot be created: {str(above)!r} is a file, not a folder; {fix}")
    if not os.access(above, os.W_OK | os.X_OK):
        raise RunDirError(
            f"{where} cannot be created: {str(above)!r} is not writable (permissions or a read-only "
            f"file system); {fix} elsewhere"
        )


def check_results_file(path: Path | None, checkpoint: Path | None) -> None:
    """Refuse a results file that a result line would damage, before any work is done.

    A result is appended as one JSON line, so an existing file must be a JSON-lines file as we
    write them (every line an object, ending in a newline): anything else (the checkpoint itself,
    a user's notes, a folder) is someone else's file.

    Raises:
        RunDirError: ``path`` is a folder, the checkpoint, or not a JSON-lines file; or it cannot be
            written (a file in the way of its folder, a folder this user or file system cannot write).
    """
    if path is None:
        return
    where = f"--results {str(path)!r}" if path.name != "results.jsonl" else f"{str(path)!r}"
    fix = "pass --results NEW_FILE.jsonl"
    if not path.exists():
        _check_creatable(path, where, fix)
        return
    if not path.is_dir() and not os.access(path, os.W_OK):
        raise RunDirError(f"{where} cannot be written (read-only file or file system); {fix} elsewhere")
    if path.is_dir():
        raise RunDirError(f"{where} is a folder, not a results file; {fix}")
    if checkpoint is not None and checkpoint.exists() and path.samefile(checkpoint):
        raise RunDirError(f"{where} is the checkpoint being evaluated; {fix}")
    try:
        text = path.read_text(encoding="utf-8")
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        ours = (not text or text.endswith("\n")) and all(isinstance(row, dict) for row in rows)
    except (UnicodeDecodeError, ValueError):
        ours = False
    if not ours:
        raise RunDirError(f"{where} exists and is not a JSON-lines results file; {fix}")


def _check_fast_probe_flags(args: argparse.Namespace, protocol: str | None) -> None:
    """Refuse run-directory flags for the fast probe, which writes no run directory.

    Raises:
        ConfigError: ``--out``, ``--resume`` or ``--overwrite`` with ``eval.linear_protocol=fast``.
    """
    given = [
        flag
        for flag, on in (("--out", args.out), ("--resume", args.resume), ("--overwrite", args.overwrite))
        if on
    ]
    if given and protocol == "fast":
        raise ConfigError(
            f"{given[0]} is for eval.linear_protocol=mae (a trained probe in a run directory); the fast "
            f"protocol writes only its result line: drop {given[0]} or add eval.linear_protocol=mae"
        )


def _run(name: str, args: argparse.Namespace) -> int:
    check_encoder_files(args.checkpoint)  # a missing or non-weights file is refused before torch loads
    model_keys = [o.split("=", 1)[0] for o in args.overrides if o.startswith("model.")]
    if model_keys:  # shared override lists are common: said, not refused
        log.warning(
            "%s: ignored; an evaluation takes the encoder, architecture included, from --checkpoint",
            ", ".join(model_keys),
        )
    if name == "linear":  # the protocol comes from --config and the overrides, not the checkpoint
        protocol = None  # a config that only the checkpoint's data section makes valid: checked below
        with contextlib.suppress(ConfigError):
            protocol = eval_config(None, args.config, list(args.overrides)).eval.linear_protocol
        _check_fast_probe_flags(args, protocol)
    if getattr(args, "out", None):
        check_run_out(args)
    weights = parse_encoder_spec(args.checkpoint).path
    check_results_file(results_path(args.checkpoint, args.results), weights)
    # Heavy (torch, timm): imported when a command runs, so `semmae --help` starts without them.
    from semmae.engine.logging import append_result
    from semmae.models.encoder import load_encoder

    loaded = load_encoder(args.checkpoint)
    command = f"semmae eval {name} --checkpoint {quote(args.checkpoint)}"  # how to continue a stopped run
    cfg = eval_config(loaded[1].get("data"), args.config, list(args.overrides))
    if name == "knn":
        from semmae.eval.knn import run_knn

        result = run_knn(cfg, args.checkpoint, loaded=loaded)
    elif name == "linear" and cfg.eval.linear_protocol == "fast":
        _check_fast_probe_flags(args, cfg.eval.linear_protocol)
        from semmae.eval.linear import run_linear

        result = run_linear(cfg, args.checkpoint, loaded=loaded)
    else:  # a trained probe or a fine-tune: a run directory of its own, stoppable and resumable
        from semmae.train.finetune import run_finetune
        from semmae.train.linear_probe import run_linear_probe

        if not args.out:
            raise ConfigError("eval.linear_protocol=mae trains a probe: pass --out DIR for its run directory")
        check_out(args, cfg, ("the --checkpoint", args.checkpoint))
        trainer = run_linear_probe if name == "linear" else run_finetune
        result = trainer(cfg, args.checkpoint, args.out, resume=args.resume, overwrite=args.overwrite)
        command += f" --config {quote(str(Path(args.out) / 'config.yaml'))} --out {quote(args.out)}"
    path = results_path(args.checkpoint, args.results)
    # A stopped run has no result yet; a finished one, resumed, recorded its result when it finished.
    record = not (result.get("already_complete") or result.get("interrupted") is not None)
    if path is not None and record:
        append_result(path, result)  # by the main process
    return finish_run(result, command)
