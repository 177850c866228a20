"""BEiT-style block masking (Bao et al., 2022), vectorised over the batch.

BEiT grows a mask by adding random rectangles until the budget is met. Here each image draws
``num_candidates`` rectangles at once (area uniform in [min_block, n_mask], log-uniform aspect
ratio); the longest prefix of them whose union fits the budget is hidden, the patches of the next
rectangle fill up what is left, and random patches make the count exact. No loop over images.
"""

from __future__ import annotations

import math

import torch

from semmae.masking.base import MaskOutput, mask_budget, mask_from_scores, uniform_noise
from semmae.registry import MASKINGS


def _grid(num_patches: int, grid: tuple[int, int] | None) -> tuple[int, int]:
    if grid is not None:
        if grid[0] * grid[1] != num_patches:
            raise ValueError(f"grid {grid} does not hold {num_patches} patches")
        return grid
    side = math.isqrt(num_patches)
    if side * side != num_patches:
        raise ValueError(f"block masking needs a square grid or an explicit grid; got L={num_patches}")
    return side, side


class BlockMasking:
    """Hide rectangles of patches, exactly ``n_mask`` per image.

    Args:
        ratio: share of patches hidden, in (0, 1).
        min_block: smallest rectangle area in patches (BEiT: 16 at 14×14).
        aspect: aspect ratios are drawn log-uniformly from [aspect, 1/aspect].
        num_candidates: rectangles drawn per image.
        grid: (h, w) patch grid; None means square.
    """

    requires_parts = False

    def __init__(
        self,
        ratio: float = 0.75,
        min_block: int = 4,
        aspect: float = 0.3,
        num_candidates: int = 32,
        grid: tuple[int, int] | None = None,
    ) -> None:
        mask_budget(16, ratio)
        if min_block < 1 or num_candidates < 1 or not 0 < aspect <= 1:
            raise ValueError("block masking needs min_block >= 1, num_candidates >= 1, 0 < aspect <= 1")
        self.ratio = ratio
        self.min_block = min_block
        self.aspect = aspect
        self.num_candidates = num_candidates
        self.grid = grid

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
        h, w = _grid(num_patches, self.grid)
        _, n_mask = mask_budget(num_patches, self.ratio)
        b, t = batch_size, self.num_candidates
        # Draw all random numbers on the generator's device, in one fixed order, then move them.
        u = uniform_noise(b, 4 * t, generator, device).view(b, 4, t)
        min_area = min(self.min_block, n_mask)
        area = min_area + u[:, 0] * (n_mask - min_area)
        log_ar = math.log(self.aspect) + u[:, 1] * (-2.0 * math.log(self.aspect))
        ar = torch.exp(log_ar)
        bh = torch.sqrt(area * ar).round().clamp(1, h)
        bw = torch.sqrt(area / ar).round().clamp(1, w)
        top = torch.floor(u[:, 2] * (h - bh + 1)).clamp(max=h - 1)
        left = torch.floor(u[:, 3] * (w - bw + 1)).clamp(max=w - 1)
        dev = u.device
        rows = torch.arange(h, device=dev, dtype=u.dtype).view(1, 1, h, 1)
        cols = torch.arange(w, device=dev, dtype=u.dtype).view(1, 1, 1, w)
        inside = (
            (rows >= top[..., None, None])
            & (rows < (top + bh)[..., None, None])
            & (cols >= left[..., None, None])
            & (cols < (left + bw)[..., None, None])
        ).view(b, t, h * w)
        union = torch.cummax(inside.to(torch.uint8), dim=1).values  # (B, T, L) prefix unions
        fits = union.sum(-1) <= n_mask  # (B, T), monotone: True then False
        n_fit = fits.sum(-1)  # blocks whose union fits the budget
        idx = (n_fit - 1).clamp(min=0)
        chosen = torch.gather(union, 1, idx.view(b, 1, 1).expand(-1, 1, h * w)).squeeze(1).bool()
        chosen &= (n_fit > 0).unsqueeze(-1)
        nxt = torch.gather(inside, 1, n_fit.clamp(max=t - 1).view(b, 1, 1).expand(-1, 1, h * w)).squeeze(1)
        nxt &= (n_fit < t).unsqueeze(-1)
        noise = uniform_noise(b, num_patches, generator, device).to(dev)
        scores = 2.0 * chosen.to(noise.dtype) + nxt.to(noise.dtype) + noise
        return mask_from_scores(scores, n_mask)


MASKINGS.register("block")(BlockMasking)
