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
        rows = torch.arange(h, device=dev, dtype=u.dtype).view(1, h, 1)
        cols = torch.arange(w, device=dev, dtype=u.dtype).view(1, w, 1)
        in_rows = (rows >= top[:, None]) & (rows < (top + bh)[:, None])  # (B, h, T)
        in_cols = (cols >= left[:, None]) & (cols < (left + bw)[:, None])  # (B, w, T)
        inside = (in_rows.unsqueeze(2) & in_cols.unsqueeze(1)).view(b, h * w, t)  # T last: fast reductions
        # Index of the first rectangle covering each patch (T if none): the union of the first n
        # rectangles is {first < n}, so prefix-union sizes are a cumulative histogram over T.
        covered = inside.any(dim=-1)
        first = torch.where(covered, inside.to(torch.uint8).argmax(dim=-1), t)  # argmax: first maximum
        hist = torch.zeros(b, t + 1, device=dev, dtype=torch.long).scatter_add_(
            1, first, torch.ones_like(first)
        )
        union_size = hist[:, :t].cumsum(dim=1)  # (B, T): size of the union of rectangles 0..i
        n_fit = (union_size <= n_mask).sum(dim=1)  # monotone, so this is the longest fitting prefix
        chosen = first < n_fit.unsqueeze(1)
        nxt = torch.gather(inside, 2, n_fit.clamp(max=t - 1).view(b, 1, 1).expand(-1, h * w, 1)).squeeze(2)
        nxt &= (n_fit < t).unsqueeze(-1)
        noise = uniform_noise(b, num_patches, generator, device).to(dev)
        scores = 2.0 * chosen.to(noise.dtype) + nxt.to(noise.dtype) + noise
        return mask_from_scores(scores, n_mask)


MASKINGS.register("block")(BlockMasking)
