"""Gather and un-shuffle token sequences by per-row index tensors."""

from __future__ import annotations

import torch


def gather_tokens(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Pick tokens per row.

    Args:
        x: (B, L, D).
        ids: (B, N) int64 indices into L.

    Returns:
        (B, N, D) with ``out[b, i] = x[b, ids[b, i]]``.
    """
    return torch.gather(x, 1, ids.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def unshuffle_tokens(
    visible: torch.Tensor, mask_token: torch.Tensor, ids_restore: torch.Tensor
) -> torch.Tensor:
    """Put visible tokens back in raster order, filling hidden positions with ``mask_token``.

    Args:
        visible: (B, n_keep, D) tokens in ``ids_keep`` order.
        mask_token: (1, 1, D) shared learned token.
        ids_restore: (B, L) inverse of the keep-then-mask permutation.

    Returns:
        (B, L, D) in raster order.
    """
    b, n_keep, d = visible.shape
    length = ids_restore.shape[1]
    fill = mask_token.to(visible.dtype).expand(b, length - n_keep, d)
    return gather_tokens(torch.cat([visible, fill], dim=1), ids_restore)
