"""Part-discovery metrics: NMI, ARI and Hungarian-matched mIoU against ground-truth part masks.

Conventions: predicted labels (N, h, w) in [0, K_pred), ground truth (N, H, W) in [0, K_gt) with
0 = background (the toy-parts set). Every metric pools all locations of all images. Ground truth
at a finer resolution than the prediction is reduced to the prediction grid by majority vote per
cell, so both sides are scored at the prediction's resolution.

mIoU: the pooled confusion matrix (K_pred x K_gt) is turned into IoUs and matched one-to-one
with the Hungarian algorithm (scipy ``linear_sum_assignment``, maximising the summed IoU). Each
ground-truth class gets the IoU of its matched predicted part; a ground-truth class left
unmatched (K_pred < K_gt) scores 0; predicted parts beyond K_gt stay unmatched and are not
merged into any class (so over-segmenting is not rewarded). The mean runs over the ground-truth
classes present in ``gt`` (background included).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from semmae.data.transforms import labels_to_patch_grid

ArrayLike = np.ndarray | torch.Tensor


def _flat(x: ArrayLike) -> np.ndarray:
    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    return arr.reshape(-1).astype(np.int64)


def part_nmi(pred: ArrayLike, gt: ArrayLike) -> float:
    """Normalised mutual information over all locations (arithmetic normalisation), in [0, 1]."""
    return float(normalized_mutual_info_score(_flat(gt), _flat(pred)))


def part_ari(pred: ArrayLike, gt: ArrayLike) -> float:
    """Adjusted Rand index over all locations: 1 = identical up to relabelling, ~0 = chance."""
    return float(adjusted_rand_score(_flat(gt), _flat(pred)))


def confusion(pred: ArrayLike, gt: ArrayLike, num_pred: int, num_gt: int) -> np.ndarray:
    """Pooled confusion counts (num_pred, num_gt): entry [i, j] = locations with pred i and gt j."""
    p, g = _flat(pred), _flat(gt)
    if p.shape != g.shape:
        raise ValueError(f"pred and gt hold {p.size} and {g.size} locations; they must match")
    if p.size and (p.min() < 0 or p.max() >= num_pred or g.min() < 0 or g.max() >= num_gt):
        raise ValueError("labels out of range for num_pred / num_gt")
    return np.bincount(p * num_gt + g, minlength=num_pred * num_gt).reshape(num_pred, num_gt)


def part_miou(pred: ArrayLike, gt: ArrayLike, num_pred: int, num_gt: int) -> float:
    """Mean IoU over ground-truth classes after one-to-one Hungarian matching (see module doc)."""
    conf = confusion(pred, gt, num_pred, num_gt).astype(np.float64)
    union = conf.sum(axis=1, keepdims=True) + conf.sum(axis=0, keepdims=True) - conf  # conf: intersections
    iou = np.divide(conf, union, out=np.zeros_like(conf), where=union > 0)
    rows, cols = linear_sum_assignment(iou, maximize=True)
    per_class = np.zeros(num_gt)
    per_class[cols] = iou[rows, cols]
    present = conf.sum(axis=0) > 0
    return float(per_class[present].mean()) if present.any() else 0.0


def _to_pred_grid(gt: torch.Tensor, pred_hw: tuple[int, int], num_gt: int) -> torch.Tensor:
    """(N, H, W) ground truth -> (N, h, w) by majority vote per cell (ties -> smaller id)."""
    if tuple(gt.shape[-2:]) == pred_hw:
        return gt.long()
    return labels_to_patch_grid(gt.long(), pred_hw, num_gt).view(gt.shape[0], *pred_hw)


def part_metrics(
    pred: ArrayLike, gt: ArrayLike, num_pred: int, num_gt: int, *, min_share: float = 0.01
) -> dict[str, Any]:
    """All part-discovery metrics of one labelling.

    Args:
        pred: (N, h, w) predicted part ids in [0, num_pred).
        gt: (N, H, W) ground-truth part ids in [0, num_gt); reduced to (h, w) by majority vote.
        num_pred: K_pred.
        num_gt: K_gt (background included).
        min_share: a predicted part below this share of all locations counts as empty.

    Returns:
        ``nmi``, ``ari``, ``miou`` (floats), ``area_hist`` (list of K_pred shares summing to 1),
        ``empty_parts`` (int).
    """
    pred_t, gt_t = torch.as_tensor(pred).long(), torch.as_tensor(gt).long()
    if gt_t.shape[0] != pred_t.shape[0]:
        raise ValueError(f"pred has {pred_t.shape[0]} images and gt {gt_t.shape[0]}")
    gt_t = _to_pred_grid(gt_t, tuple(pred_t.shape[-2:]), num_gt)
    counts = torch.bincount(pred_t.reshape(-1), minlength=num_pred)[:num_pred].double()
    shares = counts / max(1, pred_t.numel())
    return {
        "nmi": part_nmi(pred_t, gt_t),
        "ari": part_ari(pred_t, gt_t),
        "miou": part_miou(pred_t, gt_t, num_pred, num_gt),
        "area_hist": [round(float(s), 6) for s in shares],
        "empty_parts": int((shares < min_share).sum()),
    }


def kmeans_part_baseline(
    patch_tokens: torch.Tensor,
    num_parts: int,
    seed: int = 0,
    *,
    grid: tuple[int, int],
    center: bool = False,
    minibatch_above: int = 50_000,
) -> torch.Tensor:
    """Cluster all L2-normalised patch tokens of all images into K parts.

    Args:
        patch_tokens: (N, L, D) backbone patch tokens.
        num_parts: K.
        seed: k-means seed.
        grid: (h, w) with h * w = L.
        center: subtract each image's mean patch token first (as the part learner does with
            ``parts.center_tokens``), so clusters follow differences inside an image rather than
            between images.
        minibatch_above: use MiniBatchKMeans above this many tokens (N * L).

    Returns:
        (N, h, w) int64 cluster ids in [0, K).
    """
    from sklearn.cluster import KMeans, MiniBatchKMeans

    n, length, _ = patch_tokens.shape
    tokens = patch_tokens.float()
    if center:
        tokens = tokens - tokens.mean(dim=1, keepdim=True)
    x = F.normalize(tokens.reshape(n * length, -1), dim=-1).cpu().numpy()
    if n * length > minibatch_above:
        km = MiniBatchKMeans(n_clusters=num_parts, random_state=seed, n_init=3, batch_size=4096)
    else:
        km = KMeans(n_clusters=num_parts, random_state=seed, n_init=3)
    labels = km.fit_predict(x)
    return torch.from_numpy(labels.astype(np.int64)).view(n, *grid)
