"""AdamW with MAE's decay rule, the lr scaling rule, and the fused kernel where it exists."""

from __future__ import annotations

from typing import Any

import torch
from timm.optim import param_groups_weight_decay
from torch import nn

from semmae.models.vit import NO_WEIGHT_DECAY


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Split trainable parameters into decayed and non-decayed groups (timm's rule).

    Biases, norm weights (every 1-D parameter) and the names matching :data:`NO_WEIGHT_DECAY` (tokens
    and position embeddings) get no weight decay. The decayed group comes first, as it always has,
    so optimiser states in older checkpoints line up with the groups.

    Args:
        model: the module to optimise.
        weight_decay: decay of the decayed group.

    Returns:
        Up to two param-group dicts (decay first); empty groups are dropped.
    """
    groups = param_groups_weight_decay(model, weight_decay, no_weight_decay_list=NO_WEIGHT_DECAY)
    return sorted(groups, key=lambda g: g["weight_decay"] == 0.0)  # stable: decay, then no decay


def adamw(groups: list[dict[str, Any]], lr: float, betas: tuple[float, float]) -> torch.optim.AdamW:
    """``torch.optim.AdamW`` over ``groups``, fused (one kernel for all parameters) on CUDA.

    The fused kernel runs where every parameter is a floating CUDA tensor. On CPU PyTorch's default
    (foreach) stays: the fused CPU kernel rounds differently, and CPU results must not change.
    """
    params = [p for g in groups for p in g["params"]]
    fused = bool(params) and all(p.is_cuda and p.is_floating_point() for p in params)
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=True if fused else None)


def build_adamw(
    model: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float] = (0.9, 0.95)
) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups` (fused on CUDA); call after moving ``model`` to its device."""
    return adamw(param_groups(model, weight_decay), lr, betas)
