"""Images <-> per-patch pixel vectors, raster order, channel-last inside a patch (as MAE)."""

from __future__ import annotations

import torch


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Split images into flattened patches.

    Args:
        images: (B, C, H, W); H and W divisible by ``patch_size``.
        patch_size: P.

    Returns:
        (B, L, P*P*C) with L = (H/P)*(W/P) in raster order; each patch vector is (P, P, C) flattened.
    """
    b, c, h, w = images.shape
    p = patch_size
    if h % p or w % p:
        raise ValueError(f"image size {h}x{w} is not divisible by patch size {p}")
    x = images.reshape(b, c, h // p, p, w // p, p)
    x = torch.einsum("nchpwq->nhwpqc", x)
    return x.reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(patches: torch.Tensor, patch_size: int, grid: tuple[int, int], channels: int) -> torch.Tensor:
    """Inverse of :func:`patchify`.

    Args:
        patches: (B, L, P*P*C).
        patch_size: P.
        grid: (h, w) patch grid with h*w = L.
        channels: C.

    Returns:
        (B, C, h*P, w*P).
    """
    b = patches.shape[0]
    h, w = grid
    p = patch_size
    x = patches.reshape(b, h, w, p, p, channels)
    x = torch.einsum("nhwpqc->nchpwq", x)
    return x.reshape(b, channels, h * p, w * p)
