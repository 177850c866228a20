"""One majority vote (pixel part maps -> patch grid) replaces the two the package used to hold.

The two former implementations are kept here, as they were, as references: the vote inside the
training batches (``transforms.labels_to_patch_grid``, which first resized a map whose size is not
a multiple of the grid) and the oracle-map vote (``oracle.part_maps_from_masks``, which assigned
pixel y to cell y*h // H). The kept rule is the oracle's; on every map whose size is a multiple of
the grid (all training, monitor and export paths) the two agreed and still agree, ties included.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from semmae.data import oracle
from semmae.data.transforms import labels_to_patch_grid


def _old_batch_vote(labels: torch.Tensor, grid: tuple[int, int], num_parts: int) -> torch.Tensor:
    gh, gw = grid
    bsz, height, width = labels.shape
    labels = labels.long()
    if height % gh or width % gw:
        height, width = max(gh, round(height / gh) * gh), max(gw, round(width / gw) * gw)
        resized = F.interpolate(labels[:, None].float(), size=(height, width), mode="nearest-exact")
        labels = resized[:, 0].long()
    ph, pw = height // gh, width // gw
    rows = torch.arange(height) // ph
    cols = torch.arange(width) // pw
    cell = (rows[:, None] * gw + cols[None, :]).flatten()
    num_cells = gh * gw
    bins = labels.flatten(1) * num_cells + cell
    counts = torch.zeros(bsz, num_parts * num_cells)
    counts.scatter_add_(1, bins, torch.ones_like(bins, dtype=counts.dtype))
    return counts.view(bsz, num_parts, num_cells).argmax(1)


def _old_oracle_vote(masks: torch.Tensor, grid: tuple[int, int], k: int) -> np.ndarray:
    n, size_y, size_x = masks.shape
    h, w = grid
    cy = torch.arange(size_y) * h // size_y
    cx = torch.arange(size_x) * w // size_x
    cell = (cy[:, None] * w + cx[None, :]).reshape(1, -1)
    chunk = masks.reshape(-1, size_y * size_x).long()
    votes = torch.zeros(n, h * w * k, dtype=torch.int32)
    votes.scatter_add_(1, cell * k + chunk, torch.ones_like(chunk, dtype=torch.int32))
    return votes.view(-1, h * w, k).argmax(-1).view(-1, h, w).numpy().astype(np.uint8)


class _Masks:
    def __init__(self, masks: torch.Tensor, k: int) -> None:
        self.part_masks, self.num_gt_parts, self.name = masks, k, "random"


def _random_maps(seed: int, n: int, height: int, width: int, k: int) -> torch.Tensor:
    return torch.randint(0, k, (n, height, width), generator=torch.Generator().manual_seed(seed))


def _ties(labels: torch.Tensor, grid: tuple[int, int], k: int) -> int:
    """How many cells of a multiple-sized map have two or more most frequent ids."""
    n, height, width = labels.shape
    cells = labels.view(n, grid[0], height // grid[0], grid[1], width // grid[1]).permute(0, 1, 3, 2, 4)
    counts = F.one_hot(cells.flatten(3), k).sum(3)  # (n, h, w, k)
    return int((counts == counts.amax(-1, keepdim=True)).sum(-1).gt(1).sum())


@pytest.mark.parametrize(
    "size,grid,k",
    [((28, 28), (7, 7), 3), ((28, 28), (14, 14), 2), ((8, 12), (4, 3), 5), ((16, 16), (1, 1), 4)],
)
def test_one_vote_equals_the_old_batch_vote_on_multiples(
    size: tuple[int, int], grid: tuple[int, int], k: int
) -> None:
    labels = _random_maps(sum(size) + k, 32, *size, k)
    assert _ties(labels, grid, k) > 0  # the draw exercises the tie rule
    assert torch.equal(labels_to_patch_grid(labels, grid, k), _old_batch_vote(labels, grid, k))


@pytest.mark.parametrize(
    "size,grid,k", [((28, 28), (7, 7), 3), ((6, 6), (4, 4), 2), ((7, 9), (3, 5), 4), ((30, 30), (4, 4), 16)]
)
def test_one_vote_equals_the_old_oracle_vote(
    size: tuple[int, int], grid: tuple[int, int], k: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(oracle, "_VOTE_CHUNK", 5)  # several chunks, a ragged last one
    masks = _random_maps(size[0] * size[1], 12, *size, k).to(torch.uint8)
    want = _old_oracle_vote(masks, grid, k)
    got = oracle.part_maps_from_masks(_Masks(masks, k), grid)
    np.testing.assert_array_equal(got, want)
    flat = labels_to_patch_grid(masks, grid, k).view(-1, *grid).numpy()
    np.testing.assert_array_equal(flat, want)


def test_one_vote_refuses_a_grid_finer_than_the_map() -> None:
    with pytest.raises(ValueError, match="at most the map size"):
        labels_to_patch_grid(torch.zeros(1, 4, 4, dtype=torch.long), (8, 8), 2)
