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
from semmae.config import Config
from semmae.engine.runfiles import kept_epoch_checkpoints
from semmae.errors import CheckpointError
from semmae.models.checkpoint import load_checkpoint, load_state_strict, rng_state, save_checkpoint

LAST = Path("checkpoints") / "last.pt"
# The command that writes each kind of run checkpoint (what resumes it).
COMMANDS = {
    "mae": "semmae pretrain",
    "parts": "semmae parts train",
    "finetune": "semmae eval finetune",
    "linear_probe": "semmae eval linear eval.linear_protocol=mae",
}


def missing_checkpoint_message(run_dir: str | Path) -> str | None:
    """Why a run directory without ``checkpoints/last.pt`` cannot be resumed, or None when it has
    not trained yet (a start that failed before its first checkpoint starts again from scratch).

    A run that trained (a ``summary.json``, a kept ``epoch_NNNN.pt``, logged steps) and lost its
    last checkpoint would otherwise silently train again from step 0 over its own history.
    """
    root = Path(run_dir)
    kept = kept_epoch_checkpoints(root / LAST.parent)
    signs = [
        n for n in ("summary.json", "metrics.jsonl") if (root / n).is_file() and (root / n).stat().st_size
    ]
    if not kept and not signs:
        return None
    what = ", ".join(signs + ([str(LAST.parent / kept[-1].name)] if kept else []))
    way = f"copy {kept[-1].name} over last.pt to resume from it, or " if kept else ""
    return (
        f"{str(root)!r} has trained ({what}) but has no {LAST} to resume from; {way}start the run "
        "again with --overwrite"
    )


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


# Config keys a resumed run may change: how long it trains, where, and what it logs or monitors.
# Any other key (data, batch, schedule, seed, masking, precision...) shapes what the run computes.
RESUME_MAY_CHANGE = frozenset(
    {
        "data.root", "data.num_workers",
        "train.epochs", "train.max_steps", "train.device", "train.compile", "train.progress_bar",
        "train.log_every", "train.ckpt_every_steps", "train.keep_every_epochs",
        "train.image_every_epochs", "train.knn_every_epochs", "train.knn_train", "train.knn_test",
    }
)  # fmt: skip


def changed_config_keys(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """The ``section.field`` keys whose values differ between two config dicts, less
    :data:`RESUME_MAY_CHANGE` and the ``pipeline`` section (the pipeline's own plan)."""
    keys = {f"{s}.{k}" for tree in (saved, current) for s, fields in tree.items() for k in fields}
    defaults = Config().to_dict()  # a key added after the run was saved: it ran with the default

    def value(tree: dict[str, Any], key: str) -> Any:
        section, field_name = key.split(".", 1)
        fallback = defaults.get(section, {}).get(field_name, "<unset>")
        return (tree.get(section) or {}).get(field_name, fallback)

    return sorted(
        k for k in keys
        if k not in RESUME_MAY_CHANGE and not k.startswith("pipeline.") and value(saved, k) != value(current, k)
    )  # fmt: skip


def load_run_state(run_dir: Path, *, kind: str, arch: dict[str, Any], model: torch.nn.Module,
                   optimizer: torch.optim.Optimizer, config: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    """Read ``run_dir/checkpoints/last.pt`` and load model and optimiser (strictly) from it.

    The generator states (``ckpt["rng"]``) are left for the caller to restore last.

    Args:
        config: the resuming run's config dict; each key outside :data:`RESUME_MAY_CHANGE` must
            equal the checkpoint's, or the run would go on computing something else.

    Returns:
        The checkpoint dict (for the trainer's own keys).

    Raises:
        CheckpointError: another kind of checkpoint, another architecture or another config.
    """
    path = Path(run_dir) / LAST  # the caller has checked that it exists (rundir.has_checkpoint)
    try:
        ckpt = load_checkpoint(path)
    except CheckpointError as exc:  # writes are atomic, so a damaged last.pt was damaged after it
        kept = kept_epoch_checkpoints(path.parent)
        way = f"copy {kept[-1].name} over last.pt to resume from it, or " if kept else ""
        raise CheckpointError(f"{exc}; {way}start the run again with --overwrite") from None
    if ckpt.get("kind") != kind:
        writer = COMMANDS.get(str(ckpt.get("kind")))
        by = f" (`{writer} --resume` continues it)" if writer else ""
        raise CheckpointError(
            f"{path} is a {ckpt.get('kind')!r} checkpoint, not a {kind!r} one{by}; give this run another --out"
        )
    if ckpt.get("arch") != dict(arch):
        raise CheckpointError(
            f"{path} was written for {ckpt.get('arch')} but the config builds {dict(arch)}; "
            "resume with the run's own config.yaml"
        )
    changed = changed_config_keys(ckpt.get("config") or {}, config) if config and ckpt.get("config") else []
    if changed:
        shown = ", ".join(changed[:4]) + (f" and {len(changed) - 4} more" if len(changed) > 4 else "")
        raise CheckpointError(
            f"{path} was trained with other values of {shown}; resume with the run's own config.yaml "
            f"(--config {Path(run_dir) / 'config.yaml'}) or start a new --out"
        )
    load_state_strict(model, ckpt["model"])
    # The kernel belongs to this machine, not to the one that wrote the checkpoint: a run started on
    # a GPU (fused AdamW) resumes on a CPU with PyTorch's default, and a CPU run fused on a GPU.
    # The flags go into the saved groups before loading, as PyTorch places the step counters by
    # them: on the parameters' device for the fused kernel, on the host otherwise.
    kernels = [{k: group.get(k) for k in KERNEL_FLAGS} for group in optimizer.param_groups]
    saved = ckpt["optimizer"]
    if len(saved.get("param_groups", ())) == len(kernels):
        groups = [{**group, **flags} for group, flags in zip(saved["param_groups"], kernels, strict=True)]
        saved = {**saved, "param_groups": groups}
    optimizer.load_state_dict(saved)
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
