"""AdamW with MAE's decay rule and the lr scaling rule."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

# Parameters matching these names are never decayed (MAE: tokens and position embeddings).
NO_DECAY_NAMES = ("cls_token", "mask_token", "pos_embed", "decoder_pos_embed", "dist_token")


def param_groups(model: nn.Module, weight_decay: float, skip: Iterable[str] = NO_DECAY_NAMES) -> list[dict]:
    """Split trainable parameters into decayed and non-decayed groups.

    Biases, norm weights (every 1-D parameter) and the names in ``skip`` get no weight decay.

    Args:
        model: the module to optimise.
        weight_decay: decay of the decayed group.
        skip: parameter-name suffixes that are never decayed.

    Returns:
        Two param-group dicts (decay first); empty groups are dropped.
    """
    skip = tuple(skip)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or name.endswith(skip) or name.split(".")[-1] in skip:
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def scaled_lr(base_lr: float, effective_batch: int) -> float:
    """MAE's linear scaling rule: ``lr = base_lr × effective_batch / 256``."""
    return base_lr * effective_batch / 256.0


def build_adamw(
    model: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float] = (0.9, 0.95)
) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups` (fused/foreach picked by PyTorch for the device)."""
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=betas)
