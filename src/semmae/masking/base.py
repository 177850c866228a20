"""The mask contract shared by every strategy, and the one budget rule.

Conventions: B batch, L patches in raster order, ``mask[b, i]`` is True where patch ``i`` of image
``b`` is hidden from the encoder.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from semmae.errors import ConfigError
from semmae.runtime import to_device


def mask_budget(num_patches: int, ratio: float) -> tuple[int, int]:
    """The budget rule, defined once: ``n_keep = int(L * (1 - r))``, ``n_mask = L - n_keep``.

    Args:
        num_patches: L, the number of patches per image.
        ratio: r, the share of patches to hide, in (0, 1).

    Returns:
        ``(n_keep, n_mask)``; ``n_keep >= 1`` so the encoder always sees a patch.

    Raises:
        ConfigError: if ``ratio`` is outside (0, 1) or the budget keeps or hides nothing.
    """
    if not 0.0 < ratio < 1.0:
        raise ConfigError(f"mask ratio must be in (0, 1), got {ratio}")
    n_keep = int(num_patches * (1.0 - ratio))
    n_mask = num_patches - n_keep
    if n_keep < 1 or n_mask < 1:
        raise ConfigError(
            f"mask ratio {ratio} on {num_patches} patches keeps {n_keep} and hides {n_mask}; "
            "both must be at least 1"
        )
    return n_keep, n_mask


@dataclass(frozen=True)
class MaskOutput:
    """Which patches each image keeps and hides.

    Attributes:
        ids_keep: (B, n_keep) int64, indices of visible patches (the order the encoder sees them).
        ids_mask: (B, n_mask) int64, indices of hidden patches.
        ids_restore: (B, L) int64, inverse permutation of ``cat([ids_keep, ids_mask], 1)``:
            ``cat(...)[b, ids_restore[b, i]] == i``.
        mask: (B, L) bool, True = hidden.
    """

    ids_keep: torch.Tensor
    ids_mask: torch.Tensor
    ids_restore: torch.Tensor
    mask: torch.Tensor

    def to(self, device: torch.device | str) -> MaskOutput:
        """Move every tensor to ``device``."""
        return MaskOutput(
            *(t.to(device) for t in (self.ids_keep, self.ids_mask, self.ids_restore, self.mask))
        )


def mask_from_scores(scores: torch.Tensor, n_mask: int) -> MaskOutput:
    """Hide the ``n_mask`` highest-scoring patches of each row.

    Every strategy reduces to this: it assigns scores whose order encodes its priorities plus
    generator-drawn noise, so ties are broken at random, never by sort order.

    Args:
        scores: (B, L) float or integer; a higher score means hide first. Scores should be
            distinct (add generator noise); equal scores fall back to sort order.
        n_mask: number of patches to hide per row, 0 < n_mask < L.

    Returns:
        A :class:`MaskOutput` with keep indices in ascending score order.
    """
    bsz, length = scores.shape
    ids_shuffle = torch.argsort(scores, dim=1)  # ascending: kept first, hidden last
    positions = torch.arange(length, device=scores.device).expand(bsz, -1)
    ids_restore = torch.empty_like(ids_shuffle).scatter_(1, ids_shuffle, positions)  # inverse permutation
    n_keep = length - n_mask
    mask = torch.zeros(bsz, length, dtype=torch.bool, device=scores.device)
    mask.scatter_(1, ids_shuffle[:, n_keep:], True)
    return MaskOutput(
        ids_keep=ids_shuffle[:, :n_keep],
        ids_mask=ids_shuffle[:, n_keep:],
        ids_restore=ids_restore,
        mask=mask,
    )


def uniform_noise(
    batch_size: int, num_patches: int, generator: torch.Generator | None, device: torch.device | str | None
) -> torch.Tensor:
    """(B, L) uniform [0, 1) noise drawn from ``generator`` on ``device``.

    The noise is drawn on the generator's own device and moved, so the same seed gives the same
    mask on every device.
    """
    gen_device = generator.device if generator is not None else torch.device("cpu")
    noise = torch.rand(batch_size, num_patches, generator=generator, device=gen_device)
    return to_device(noise, torch.device(device)) if device is not None else noise  # no host sync on CUDA


class MaskingStrategy(Protocol):
    """What ``semmae.masking.build(name, **params)`` returns."""

    ratio: float
    requires_parts: bool

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
    ) -> MaskOutput: ...
