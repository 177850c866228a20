"""What a pretraining checkpoint holds, and putting it back for ``--resume``."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from semmae.config import Config
from semmae.errors import CheckpointError, RunDirError
from semmae.models.checkpoint import (
    load_checkpoint,
    load_state_strict,
    rng_state,
    save_checkpoint,
    set_rng_state,
)


def save_state(path: Path, loop: Any, epoch: int) -> Path:
    """Write the full training state of a pretraining loop atomically.

    Holds: ``kind`` ("mae"), ``model``, ``arch``, ``optimizer``, ``scaler`` (None: bf16 needs none),
    ``step``, ``epoch``, ``rng``, ``config``, ``plan``.
    """
    state = {
        "kind": "mae",
        "model": loop.model.state_dict(),
        "arch": dict(loop.model.arch),
        "optimizer": loop.optimizer.state_dict(),
        "scaler": None,
        "step": loop.state.step,
        "epoch": epoch,
        "rng": rng_state(),
        "config": loop.cfg.to_dict(),
        "plan": dataclasses.asdict(loop.plan),
    }
    return save_checkpoint(path, state)


def load_resume_state(run_dir: Path, model: Any, optimizer: Any, cfg: Config) -> int:
    """Restore model, optimiser and RNG from ``run_dir/checkpoints/last.pt``; returns the step.

    Raises:
        RunDirError: nothing to resume.
        CheckpointError: the checkpoint is for another architecture.
    """
    path = Path(run_dir) / "checkpoints" / "last.pt"
    if not path.is_file():
        raise RunDirError(
            f"nothing to resume in {str(run_dir)!r} (no checkpoints/last.pt); run without --resume"
        )
    ckpt = load_checkpoint(path)
    if ckpt.get("kind") != "mae":
        raise CheckpointError(f"{path} is a {ckpt.get('kind')!r} checkpoint, not an MAE pretraining one")
    if ckpt.get("arch") != model.arch:
        raise CheckpointError(
            f"{path} was written for model {ckpt.get('arch')} but the config builds {model.arch}; "
            "resume with the run's own config.yaml"
        )
    load_state_strict(model, ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    set_rng_state(ckpt["rng"])
    return int(ckpt["step"])
