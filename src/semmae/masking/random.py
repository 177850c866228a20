"""MAE's random masking: every patch equally likely to be hidden (He et al., 2022)."""

from __future__ import annotations

import torch

from semmae.masking.base import MaskOutput, mask_budget, mask_from_scores, uniform_noise
from semmae.registry import MASKINGS


class RandomMasking:
    """Hide a uniformly random subset of exactly ``n_mask`` patches per image.

    Args:
        ratio: share of patches to hide, in (0, 1).
    """

    requires_parts = False

    def __init__(self, ratio: float = 0.75) -> None:
        mask_budget(16, ratio)  # validates the ratio early
        self.ratio = ratio

    def __call__(
        self,
        batch_size: int,
        num_patches: int,
        *,
        part_labels: torch.Tensor | None = None,
        num_parts: int | None = None,
        progress: float = 0.0,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> MaskOutput:
        """See :class:`semmae.masking.base.MaskingStrategy`; parts and progress are ignored."""
        _, n_mask = mask_budget(num_patches, self.ratio)
        return mask_from_scores(uniform_noise(batch_size, num_patches, generator, device), n_mask)


MASKINGS.register("random")(RandomMasking)
