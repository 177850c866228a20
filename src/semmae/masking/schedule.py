"""The λ schedules of SemMAE (Li et al., 2022) and the training progress they are evaluated at.

λ weighs the two halves of semantic-guided masking (DESIGN.md §2.3): λ = 1 hides a share of every
part (intra-part), λ = 0 hides whole parts (inter-part). Every schedule is a pure function of the
training progress p in [0, 1]; values of p outside [0, 1] are clamped.
"""

from __future__ import annotations

import math
import typing
from collections.abc import Callable

from semmae.errors import ConfigError
from semmae.names import ProgressUnit, ScheduleName

SCHEDULES: tuple[str, ...] = typing.get_args(ScheduleName)
"""Names accepted by :func:`lambda_schedule`."""

PROGRESS_UNITS: tuple[str, ...] = typing.get_args(ProgressUnit)
"""Values accepted by :func:`masking_progress` for ``per``."""


def _clamp(p: float) -> float:
    return min(1.0, max(0.0, float(p)))


def lambda_schedule(name: str, gamma: float = 2.0) -> Callable[[float], float]:
    """The λ(p) schedule called ``name``.

    Schedules (p clamped to [0, 1]):

    * ``power``: λ = 1 − p^γ (the paper's; γ = 2 keeps intra-part masking longer);
    * ``intra``: λ ≡ 1 (intra-part only);
    * ``inter``: λ ≡ 0 (inter-part only);
    * ``linear``: λ = 1 − p (``power`` with γ = 1);
    * ``reversed``: λ = p^γ (inter-part first, an ablation);
    * ``cosine``: λ = (1 + cos(πp)) / 2.

    Args:
        name: one of :data:`SCHEDULES`.
        gamma: exponent γ > 0 of ``power`` and ``reversed`` (ignored by the others).

    Returns:
        A function mapping progress p to λ in [0, 1].

    Raises:
        ConfigError: for an unknown name or γ <= 0.
    """
    if name not in SCHEDULES:
        raise ConfigError(f"unknown masking schedule {name!r}; known: {', '.join(SCHEDULES)}")
    if not gamma > 0:
        raise ConfigError(f"masking.gamma must be > 0, got {gamma}")
    g = float(gamma)
    table: dict[str, Callable[[float], float]] = {
        "power": lambda p: 1.0 - _clamp(p) ** g,
        "intra": lambda p: 1.0,
        "inter": lambda p: 0.0,
        "linear": lambda p: 1.0 - _clamp(p),
        "reversed": lambda p: _clamp(p) ** g,
        "cosine": lambda p: 0.5 * (1.0 + math.cos(math.pi * _clamp(p))),
    }
    return table[name]


def masking_progress(step: int, total_steps: int, steps_per_epoch: int, per: str = "step") -> float:
    """Training progress p in [0, 1] at optimiser step ``step`` (0-based).

    ``per="step"`` gives p = step / total_steps, a new λ every step. ``per="epoch"`` steps λ once
    per epoch, as the paper's code does: p = epoch_index / num_epochs with
    epoch_index = step // steps_per_epoch and num_epochs = ceil(total_steps / steps_per_epoch).
    Either way the first step has p = 0 and the last one p < 1 (the two agree at epoch starts).

    Args:
        step: 0-based optimiser step; values past ``total_steps`` give p = 1.
        total_steps: optimiser steps of the whole run (>= 1).
        steps_per_epoch: optimiser steps per epoch (>= 1).
        per: ``"step"`` or ``"epoch"``.

    Returns:
        p in [0, 1].

    Raises:
        ConfigError: for an unknown ``per`` or non-positive step counts.
    """
    if per not in PROGRESS_UNITS:
        raise ConfigError(f"masking.step_per must be 'step' or 'epoch', got {per!r}")
    if total_steps < 1 or steps_per_epoch < 1:
        raise ConfigError(
            f"masking progress needs total_steps >= 1 and steps_per_epoch >= 1, "
            f"got {total_steps} and {steps_per_epoch}"
        )
    if per == "step":
        return _clamp(step / total_steps)
    num_epochs = -(-total_steps // steps_per_epoch)
    return _clamp((max(0, step) // steps_per_epoch) / num_epochs)


__all__ = ["PROGRESS_UNITS", "SCHEDULES", "lambda_schedule", "masking_progress"]
