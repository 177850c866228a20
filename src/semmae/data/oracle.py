"""Oracle part maps from ground-truth part masks (e.g. toy-parts), for studies and tests."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from semmae.data.transforms import labels_to_patch_grid
from semmae.errors import DataError

_VOTE_CHUNK = 256  # images per chunk of the vote


def part_maps_from_masks(dataset: Any, grid: tuple[int, int]) -> np.ndarray:
    """Oracle part maps: the majority ground-truth part of every grid cell.

    The vote is :func:`semmae.data.transforms.labels_to_patch_grid`: pixel (y, x) of an S×S mask
    falls in cell (y·h // S, x·w // S); each cell takes its most frequent part id, ties going to
    the smaller id.

    Args:
        dataset: ImageSet-like with ``part_masks`` (N, S, S) uint8 and optionally ``num_gt_parts``.
        grid: (h, w), each at most S.

    Returns:
        (N, h, w) uint8 ndarray.

    Raises:
        DataError: if the dataset has no ground-truth part masks.
    """
    masks = getattr(dataset, "part_masks", None)
    if masks is None:
        raise DataError(
            f"dataset {getattr(dataset, 'name', '?')!r} has no ground-truth part masks; "
            "oracle part maps need a dataset with part masks (e.g. toy_parts)"
        )
    masks = torch.as_tensor(masks)
    n, size_y, size_x = masks.shape
    h, w = int(grid[0]), int(grid[1])
    if not (0 < h <= size_y and 0 < w <= size_x):
        raise DataError(f"grid {grid} must be positive and at most the mask size {size_y}x{size_x}")
    top = int(masks.max()) + 1 if masks.numel() else 1
    k = max(int(getattr(dataset, "num_gt_parts", None) or 0), top)
    out = np.empty((n, h, w), dtype=np.uint8)
    for start in range(0, n, _VOTE_CHUNK):  # chunks bound the (B, K, h*w) vote counts
        winner = labels_to_patch_grid(masks[start : start + _VOTE_CHUNK], (h, w), k)
        out[start : start + winner.shape[0]] = winner.view(-1, h, w).numpy().astype(np.uint8)
    return out
