"""Toy-relations: the class is the grid line the three parts stand on; masks match what is drawn."""

from __future__ import annotations

import itertools

import pytest
import torch

from semmae.config import DataConfig
from semmae.data import build_dataset
from semmae.data.relations import CLASSES, LINES, NUM_PARTS, PARTS, make_toy_relations, part_cells

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def rel(single_thread: None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return make_toy_relations(1200, 32, 3, seed=0)


def test_shapes_determinism_and_split_streams(rel) -> None:
    images, targets, masks, cells = rel
    assert images.shape == (1200, 3, 32, 32) and images.dtype == torch.uint8
    assert masks.shape == (1200, 32, 32) and cells.shape == (1200, PARTS)
    assert torch.bincount(targets, minlength=len(CLASSES)).min() > 110  # 150 expected per class
    once, again = make_toy_relations(40, 32, 3, seed=5), make_toy_relations(40, 32, 3, seed=5)
    assert all(torch.equal(a, b) for a, b in zip(once, again, strict=True))
    cfg = DataConfig(name="toy_relations", image_size=32, in_chans=1, toy_size=64)
    train, test = build_dataset(cfg, "train"), build_dataset(cfg, "test")
    assert train.images.shape == (64, 1, 32, 32) and train.num_gt_parts == NUM_PARTS == 4
    assert train.classes == CLASSES and not torch.equal(train.images, test.images)


def test_every_part_is_drawn_with_its_own_id_in_its_own_cell(rel) -> None:
    """Each part's mask has a sensible area and its centroid lies in the grid cell the code names."""
    _, _, masks, cells = rel
    coords = torch.arange(32, dtype=torch.float32)
    for part in range(PARTS):
        inside = (masks == part + 1).float()
        area = inside.sum((1, 2))
        assert bool((area / 1024 > 0.02).all())  # no part shrinks to a few pixels
        cx = (inside.sum(1) * coords).sum(1) / area
        cy = (inside.sum(2) * coords).sum(1) / area
        cell = (cy * 3 / 32).floor().long() * 3 + (cx * 3 / 32).floor().long()
        assert torch.equal(cell, cells[:, part])


def test_parts_hardly_ever_touch(rel) -> None:
    """Under 2% of images have a part pixel whose 4-neighbour is another part (measured: 0.4%)."""
    _, _, masks, _ = rel
    m = masks.long()
    touch = torch.zeros(len(m), dtype=torch.bool)
    for a, b in ((m[:, 1:], m[:, :-1]), (m[:, :, 1:], m[:, :, :-1])):
        touch |= ((a > 0) & (b > 0) & (a != b)).flatten(1).any(1)
    assert touch.float().mean() < 0.02


def test_two_cells_share_at_most_one_line_and_every_cell_lies_on_two() -> None:
    """So one part never fixes the class, and any two parts always do."""
    on = torch.zeros(len(CLASSES), 9)
    on[torch.arange(len(CLASSES))[:, None], LINES] = 1
    assert bool((on.sum(0) >= 2).all())  # one cell: at least two lines, i.e. two classes
    for i, j in itertools.combinations(range(9), 2):
        assert (on[:, i] * on[:, j]).sum() <= 1


def test_class_from_two_parts_and_linear_in_occupancy(rel) -> None:
    """Drawn data: any two parts' cells give the class; the argmax of per-line occupancy is the class."""
    _, targets, _, cells = rel
    for i, j in itertools.combinations(range(PARTS), 2):
        seen: dict[tuple[int, int], int] = {}
        for a, b, k in zip(cells[:, i].tolist(), cells[:, j].tolist(), targets.tolist(), strict=True):
            assert seen.setdefault((a, b), k) == k
    occupancy = torch.zeros(len(targets), 9).scatter_(1, cells, 1.0)
    scores = occupancy[:, LINES].sum(2)  # (N, 8): 3 on the image's line, at most 1 elsewhere
    assert torch.equal(scores.argmax(1), targets) and bool((scores.topk(2).values[:, 1] <= 1).all())


def test_no_single_part_and_no_appearance_tells_the_class(rel) -> None:
    """A part's cell leaves at least two classes open; colours are class-free."""
    images, targets, masks, cells = rel
    for part in range(PARTS):
        for cell in range(9):
            classes = targets[cells[:, part] == cell].unique()
            assert classes.numel() >= 2, (part, cell, classes)
    fg = (masks > 0).float()[:, None]
    colour = (images.float() * fg).sum((2, 3)) / fg.sum((2, 3))  # (N, 3) mean foreground colour
    by_class = torch.stack([colour[targets == k].mean(0) for k in range(len(CLASSES))])
    assert (by_class - colour.mean(0)).abs().max() < 12  # of 255: no class has its own tint


def test_part_cells_follow_the_permutation() -> None:
    cls = torch.tensor([0, 6, 7])
    order = torch.tensor([[0, 1, 2], [2, 0, 1], [1, 2, 0]])
    assert part_cells(cls, order).tolist() == [[0, 1, 2], [8, 0, 4], [4, 6, 2]]
