"""Reconstruction grids: original | masked | reconstruction | reconstruction + visible patches."""

from __future__ import annotations

import torch

from semmae.layers import patchify, unpatchify


def predictions_to_pixels(
    pred: torch.Tensor, images: torch.Tensor, patch_size: int, norm_pix: bool
) -> torch.Tensor:
    """Turn MAE predictions into per-patch pixels in the input's (normalised) space.

    With ``norm_pix`` the model predicts each patch normalised by its own mean and variance;
    those statistics are taken from the true patch to un-normalise (as MAE's visualisation does).

    Args:
        pred: (B, L, P*P*C).
        images: (B, C, H, W) the normalised input.
        patch_size: P.
        norm_pix: whether ``pred`` is per-patch normalised.

    Returns:
        (B, L, P*P*C).
    """
    if not norm_pix:
        return pred.float()
    target = patchify(images.float(), patch_size)
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True)
    return pred.float() * (var + 1e-6) ** 0.5 + mean


def reconstruction_panels(
    images: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor, patch_size: int, norm_pix: bool
) -> torch.Tensor:
    """The four panels per image, still normalised.

    Args:
        images: (B, C, H, W) normalised.
        pred: (B, L, P*P*C) model output.
        mask: (B, L) bool, True = hidden.
        patch_size: P.
        norm_pix: see :func:`predictions_to_pixels`.

    Returns:
        (B, 4, C, H, W): original, masked (hidden patches set to the image minimum), reconstruction,
        reconstruction with the visible patches pasted back.
    """
    b, c, h, w = images.shape
    grid = (h // patch_size, w // patch_size)
    x = patchify(images.float(), patch_size)
    rec = predictions_to_pixels(pred, images, patch_size, norm_pix)
    m = mask.unsqueeze(-1).float()
    fill = images.float().amin()
    masked = x * (1 - m) + fill * m
    pasted = x * (1 - m) + rec * m
    panels = [images.float()] + [unpatchify(t, patch_size, grid, c) for t in (masked, rec, pasted)]
    return torch.stack(panels, dim=1)
