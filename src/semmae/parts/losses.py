"""Losses and part-usage monitors of stage 1 (DESIGN.md §2.2.6).

``L = L_rec + lambda_div * L_div`` with

- ``L_rec``: MSE between the reconstruction and the normalised input image;
- ``L_div = overlap + lambda_area * area``:
  - overlap: mean over ordered pairs i != j of ``sum_x Â_i(x) Â_j(x) / L``, where each map is
    scaled to max 1 per image (``Â = A / max_x A``), so a faint part spread everywhere still
    counts as overlapping;
  - area: ``log K - H(p)`` with p the batch-mean part areas; zero when every part covers the
    same share of the batch, ``log K`` when one part covers everything.

The weights and the exact form of both terms are paper-silent defaults (the paper names a
diversity loss without giving it).
"""

from __future__ import annotations

import math

import torch


def overlap_loss(maps: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Mean pairwise overlap of max-normalised part maps.

    Args:
        maps: (B, K, h, w) non-negative maps.
        eps: guards the max-normalisation of an all-zero map.

    Returns:
        Scalar in [0, 1]: 0 for disjoint maps, 1 when every map is 1 everywhere.
    """
    b, k = maps.shape[:2]
    a = maps.float().flatten(2)  # (B, K, L)
    a_hat = a / (a.amax(dim=-1, keepdim=True) + eps)
    gram = torch.einsum("bil,bjl->bij", a_hat, a_hat) / a.shape[-1]
    off_diag = gram.sum(dim=(1, 2)) - gram.diagonal(dim1=1, dim2=2).sum(dim=-1)
    return off_diag.mean() / (k * (k - 1))


def part_area_histogram(maps: torch.Tensor) -> torch.Tensor:
    """Share of all locations each part covers (soft), averaged over the batch.

    Args:
        maps: (B, K, h, w) soft partition (sums to 1 over K).

    Returns:
        (K,) float32 summing to 1.
    """
    return maps.float().mean(dim=(0, 2, 3))


def area_entropy(maps: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Entropy (nats) of the batch-mean part areas; log K when all parts are used equally."""
    p = part_area_histogram(maps).clamp_min(eps)
    p = p / p.sum()
    return -(p * p.log()).sum()


def parts_loss(
    recon: torch.Tensor,
    target: torch.Tensor,
    maps: torch.Tensor,
    *,
    lambda_div: float = 1.0,
    lambda_area: float = 1.0,
) -> dict[str, torch.Tensor]:
    """The stage-1 objective and its terms.

    Args:
        recon: (B, C, H, W) decoded image.
        target: (B, C, H, W) normalised input image.
        maps: (B, K, h, w) soft part maps the diversity terms act on (the raw partition).
        lambda_div: weight of ``L_div``.
        lambda_area: weight of the area term inside ``L_div``.

    Returns:
        Dict of scalar float32 tensors: ``loss`` (total), ``rec``, ``div``, ``overlap``, ``area``,
        ``area_entropy``.
    """
    rec = (recon.float() - target.float()).pow(2).mean()
    overlap = overlap_loss(maps)
    entropy = area_entropy(maps)
    area = math.log(maps.shape[1]) - entropy  # >= 0, zero when every part covers the same share
    div = overlap + lambda_area * area
    return {
        "loss": rec + lambda_div * div,
        "rec": rec,
        "div": div,
        "overlap": overlap,
        "area": area,
        "area_entropy": entropy,
    }


def count_empty_parts(labels: torch.Tensor, num_parts: int, min_share: float = 0.01) -> int:
    """Parts whose label covers less than ``min_share`` of all locations.

    Args:
        labels: (B, h, w) or any shape of integer part ids in [0, K).
        num_parts: K.
        min_share: share below which a part counts as empty.

    Returns:
        Number of such parts (0..K).
    """
    counts = torch.bincount(labels.reshape(-1).long().cpu(), minlength=num_parts)[:num_parts]
    shares = counts.float() / max(1, labels.numel())
    return int((shares < min_share).sum())
