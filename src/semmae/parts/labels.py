"""Part maps -> integer part labels (DESIGN.md §2.2.7)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def maps_to_labels(maps: torch.Tensor, scale: int = 1) -> torch.Tensor:
    """Argmax over the part axis, optionally on a finer grid.

    Args:
        maps: (B, K, h, w) part maps (soft partition or logits).
        scale: 1 = the patch grid; s > 1 upsamples the maps bilinearly by s before the argmax.

    Returns:
        (B, h*scale, w*scale) uint8 labels in [0, K).

    Raises:
        ValueError: K > 256 (labels are stored as uint8) or scale < 1.
    """
    if maps.shape[1] > 256:
        raise ValueError(f"at most 256 parts fit uint8 labels, got {maps.shape[1]}")
    if scale < 1:
        raise ValueError(f"scale must be at least 1, got {scale}")
    x = maps.float()
    if scale > 1:
        x = F.interpolate(x, scale_factor=float(scale), mode="bilinear", align_corners=False)
    return x.argmax(dim=1).to(torch.uint8)
