"""Learning-rate schedule: per-step linear warm-up, then half-cosine to ``min_lr``."""

from __future__ import annotations

import math

import torch


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, peak_lr: float, min_lr: float) -> float:
    """Learning rate at optimiser step ``step`` (0-based).

    Args:
        step: current step, 0 <= step < total_steps.
        total_steps: length of training in steps.
        warmup_steps: linear ramp from ~0 to ``peak_lr`` over these steps.
        peak_lr: lr after warm-up.
        min_lr: lr at the end of the cosine.

    Returns:
        The learning rate (float).
    """
    if warmup_steps > 0 and step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    t = min(1.0, (step - warmup_steps) / span)
    return min_lr + (peak_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * t))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set ``lr`` on every param group (times the group's ``lr_scale`` when present)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
