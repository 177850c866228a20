"""Fixed 2-D sine-cosine position embeddings (MAE; Vaswani et al. frequencies per axis)."""

from __future__ import annotations

import torch


def _sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / 10000**omega
    out = pos.reshape(-1).to(torch.float64)[:, None] * omega[None, :]
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def sincos_pos_embed_2d(dim: int, grid: tuple[int, int]) -> torch.Tensor:
    """Position embeddings for an (h, w) patch grid, after a zero row for the CLS token.

    Half of the channels encode the row, half the column (MAE's convention: the first half from
    the w coordinate).

    Args:
        dim: embedding width D, divisible by 4.
        grid: (h, w).

    Returns:
        (1 + h*w, D) float32.
    """
    if dim % 4:
        raise ValueError(f"sin-cos position embedding needs a width divisible by 4, got {dim}")
    h, w = grid
    gy, gx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    emb = torch.cat([_sincos_1d(dim // 2, gx), _sincos_1d(dim // 2, gy)], dim=1)
    return torch.cat([torch.zeros(1, dim, dtype=emb.dtype), emb], dim=0).float()
