"""Losses and part-usage monitors of stage 1 (DESIGN.md §2.2.6).

``L = L_rec + lambda_div * L_div`` with

- ``L_rec``: MSE between the reconstruction and the normalised input image;
- ``L_div = overlap + lambda_area * area + lambda_presence * presence``:
  - overlap: mean over ordered pairs i != j of ``sum_x Â_i(x) Â_j(x) / L``, where each map is
    scaled to max 1 per image (``Â = A / max_x A``), so a faint part spread everywhere still
    counts as overlapping;
  - area: ``log K - H(p)`` with p the batch-mean part areas; zero when every part covers the
    same share of the batch, ``log K`` when one part covers everything;
  - presence: a hinge on the cosine scores asking every part to win (be the argmax at) at least
    one location of every image. The softmax at a small tau saturates, so a part that lost
    everywhere gets no gradient from the two terms above and stays empty for good; the hinge
    acts on the scores themselves and keeps pulling it back until it wins somewhere.

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


def area_loss(maps: torch.Tensor) -> torch.Tensor:
    """``log K - H(batch-mean areas)``: >= 0, zero when every part covers the same share."""
    return math.log(maps.shape[1]) - area_entropy(maps)


def presence_loss(scores: torch.Tensor, margin: float = 0.0) -> torch.Tensor:
    """Hinge asking every part to be the argmax at some location of every image.

    With ``lead_k(x) = s_k(x) - max_{j != k} s_j(x)`` and ``win_k = max_x lead_k(x)`` (per image),
    the loss is the mean over images and parts of ``relu(margin - win_k)``. Its gradient does not
    vanish for a part that loses everywhere, unlike any term on a saturated softmax.

    Args:
        scores: (B, K, h, w) part-location scores (the cosines, before the temperature).
        margin: lead a part's best location must have to cost nothing.

    Returns:
        Scalar float32, 0 when every part wins somewhere in every image by ``margin``.
    """
    s = scores.float().flatten(2)  # (B, K, L)
    top2 = s.topk(2, dim=1)
    first, second, winner = top2.values[:, 0:1], top2.values[:, 1:2], top2.indices[:, 0:1]
    is_winner = torch.arange(s.shape[1], device=s.device).view(1, -1, 1) == winner
    best_other = torch.where(is_winner, second, first)  # max over j != k, per part and location
    win = (s - best_other).amax(dim=-1)  # (B, K)
    return torch.relu(margin - win).mean()


def parts_loss(
    recon: torch.Tensor,
    target: torch.Tensor,
    maps: torch.Tensor,
    *,
    lambda_div: float = 1.0,
    lambda_area: float = 1.0,
    scores: torch.Tensor | None = None,
    lambda_presence: float = 0.0,
    presence_margin: float = 0.0,
) -> dict[str, torch.Tensor]:
    """The stage-1 objective and its terms.

    Args:
        recon: (B, C, H, W) decoded image.
        target: (B, C, H, W) normalised input image.
        maps: (B, K, h, w) soft part maps the diversity terms act on (the raw partition).
        lambda_div: weight of ``L_div``.
        lambda_area: weight of the area term inside ``L_div``.
        scores: (B, K, h, w) cosine scores for the presence term (required when
            ``lambda_presence > 0``).
        lambda_presence: weight of the presence term inside ``L_div``.
        presence_margin: margin of :func:`presence_loss`.

    Returns:
        Dict of scalar float32 tensors: ``loss`` (total), ``rec``, ``div``, ``overlap``, ``area``,
        ``presence``, ``area_entropy``.
    """
    rec = (recon.float() - target.float()).pow(2).mean()
    overlap = overlap_loss(maps)
    entropy = area_entropy(maps)
    area = math.log(maps.shape[1]) - entropy
    if scores is not None:
        presence = presence_loss(scores, presence_margin)
    elif lambda_presence > 0:
        raise ValueError("lambda_presence > 0 needs the scores")
    else:
        presence = torch.zeros((), device=maps.device)
    div = overlap + lambda_area * area + lambda_presence * presence
    return {
        "loss": rec + lambda_div * div,
        "rec": rec,
        "div": div,
        "overlap": overlap,
        "area": area,
        "presence": presence,
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
