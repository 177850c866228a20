"""A run's plan: its step arithmetic (:class:`Plan`) and learning-rate schedule (per-step linear
warm-up, then half-cosine to ``min_lr``)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from semmae.config_checks import check_lr_floor
from semmae.errors import ConfigError


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


@dataclass
class Plan:
    """Step arithmetic of a run (counts per process).

    Attributes:
        steps_per_epoch: optimiser steps per epoch.
        total_steps: optimiser steps of the whole run.
        warmup_steps: linear lr warm-up length.
        peak_lr: lr after warm-up; the cosine then falls to ``min_lr``.
        min_lr: lr at the end.
        effective_batch: images per optimiser step over all processes.
        accum: micro-batches per optimiser step.
    """

    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    peak_lr: float
    min_lr: float
    effective_batch: int
    accum: int = 1

    @property
    def epochs(self) -> int:
        """Epochs the run touches (the last may be partial when ``max_steps`` cuts it)."""
        return math.ceil(self.total_steps / self.steps_per_epoch)

    def lr(self, step: int) -> float:
        """Learning rate of optimiser step ``step`` (0-based): warm-up, then half-cosine."""
        return warmup_cosine(step, self.total_steps, self.warmup_steps, self.peak_lr, self.min_lr)


def make_plan(
    *,
    steps_per_epoch: int,
    epochs: int,
    max_steps: int | None,
    warmup_epochs: float,
    peak_lr: float,
    min_lr: float,
    effective_batch: int,
    accum: int = 1,
    lr_settings: tuple[str, str] = ("min_lr", "the peak lr"),
) -> Plan:
    """The :class:`Plan` of ``epochs`` epochs, cut at ``max_steps`` (which alone decides when epochs is 0).

    ``lr_settings`` names, for the error, the setting of ``min_lr`` and where ``peak_lr`` comes from.

    Raises:
        ConfigError: the settings give no step to train, or ``min_lr`` is above ``peak_lr`` (the
            "cosine decay" would rise).
    """
    check_lr_floor(min_lr, peak_lr, lr_settings)
    total = epochs * steps_per_epoch
    if max_steps is not None:
        total = min(total, max_steps) if epochs > 0 else max_steps
    if total < 1:
        raise ConfigError("nothing to train: set the epochs to >= 1 or max_steps to >= 1")
    warmup = int(round(warmup_epochs * steps_per_epoch))
    return Plan(steps_per_epoch, total, warmup, peak_lr, min_lr, effective_batch, accum)
