"""The one checkpoint schema of every trainer: one save, one strict, arch-checked resume.

A run checkpoint is a dict of tensors and plain data (read with ``weights_only=True``): ``kind``
(``mae``, ``parts``, ``finetune``), ``arch`` (constructor arguments; a resume refuses any other),
``model`` and ``optimizer`` state dicts, ``scaler`` (None: bf16 autocast needs none), ``step``
(the lr schedule's position), ``epoch``, ``plan``, ``rng`` (Python / NumPy / torch generators),
``config``, ``provenance`` (semmae and torch versions), and the trainer's own keys (``encoder``
and ``classes`` of a fine-tune, ``backbone`` and ``norm`` of the part learner).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

from semmae import __version__
from semmae.errors import CheckpointError
from semmae.models.checkpoint import load_checkpoint, load_state_strict, rng_state, save_checkpoint

LAST = Path("checkpoints") / "last.pt"

KERNEL_FLAGS = ("fused", "foreach")  # optimiser options that pick a kernel, not a result


def save_run_state(path: Path, *, kind: str, arch: dict[str, Any], model: torch.nn.Module,
                   optimizer: torch.optim.Optimizer, step: int, epoch: int, config: dict[str, Any],
                   plan: dict[str, Any], extra: dict[str, Any]) -> Path:  # fmt: skip
    """Write a full training state atomically (the schema above; ``extra`` keys are added last)."""
    state = {
        "kind": kind,
        "arch": dict(arch),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": None,
        "step": step,
        "epoch": epoch,
        "plan": plan,
        "rng": rng_state(),
        "config": config,
        "provenance": {"semmae": __version__, "torch": str(torch.__version__)},
        **extra,
    }
    return save_checkpoint(path, state)


def load_run_state(run_dir: Path, *, kind: str, arch: dict[str, Any], model: torch.nn.Module,
                   optimizer: torch.optim.Optimizer) -> dict[str, Any]:  # fmt: skip
    """Read ``run_dir/checkpoints/last.pt`` and load model and optimiser (strictly) from it.

    The generator states (``ckpt["rng"]``) are left for the caller to restore last.

    Returns:
        The checkpoint dict (for the trainer's own keys).

    Raises:
        CheckpointError: another kind of checkpoint, or another architecture.
    """
    path = Path(run_dir) / LAST  # the caller has checked that it exists (rundir.has_checkpoint)
    ckpt = load_checkpoint(path)
    if ckpt.get("kind") != kind:
        raise CheckpointError(f"{path} is a {ckpt.get('kind')!r} checkpoint, not a {kind!r} one")
    if ckpt.get("arch") != dict(arch):
        raise CheckpointError(
            f"{path} was written for {ckpt.get('arch')} but the config builds {dict(arch)}; "
            "resume with the run's own config.yaml"
        )
    load_state_strict(model, ckpt["model"])
    # The kernel belongs to this machine, not to the one that wrote the checkpoint: a run started on
    # a GPU (fused AdamW) resumes on a CPU with PyTorch's default, and a CPU run fused on a GPU.
    kernels = [{k: group.get(k) for k in KERNEL_FLAGS} for group in optimizer.param_groups]
    optimizer.load_state_dict(ckpt["optimizer"])
    for group, flags in zip(optimizer.param_groups, kernels, strict=True):
        group.update(flags)
    return ckpt


def params_finite(model: torch.nn.Module) -> torch.Tensor:
    """0-dim bool tensor on the model's device: every parameter and buffer is finite (no host sync)."""
    checks = [t.isfinite().all() for t in model.state_dict().values() if t.is_floating_point()]
    return torch.stack(checks).all() if checks else torch.tensor(True)


def parameter_digest(model: torch.nn.Module) -> str:
    """sha256 (16 hex) of every parameter's bytes: equal digests mean bit-identical weights."""
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]
