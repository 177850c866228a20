"""Toy-relations: the class is in which part wears which appearance; masks match what is drawn."""

from __future__ import annotations

import pytest
import torch

from semmae.config import DataConfig
from semmae.data import build_dataset
from semmae.data.relations import CLASSES, NUM_PARTS, PARTS, PATTERNS, appearances, make_toy_relations

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def rel(single_thread: None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return make_toy_relations(1200, 32, 3, seed=0)


def test_shapes_determinism_and_split_streams(rel) -> None:
    images, targets, masks, codes = rel
    assert images.shape == (1200, 3, 32, 32) and images.dtype == torch.uint8
    assert masks.shape == (1200, 32, 32) and codes.shape == (1200, PARTS)
    assert torch.bincount(targets, minlength=len(CLASSES)).min() > 330
    once, again = make_toy_relations(40, 32, 3, seed=5), make_toy_relations(40, 32, 3, seed=5)
    assert all(torch.equal(a, b) for a, b in zip(once, again, strict=True))
    cfg = DataConfig(name="toy_relations", image_size=32, in_chans=1, toy_size=64)
    train, test = build_dataset(cfg, "train"), build_dataset(cfg, "test")
    assert train.images.shape == (64, 1, 32, 32) and train.num_gt_parts == NUM_PARTS == 5
    assert train.classes == CLASSES and not torch.equal(train.images, test.images)


def test_every_part_is_drawn_with_its_own_id_in_its_own_quadrant(rel) -> None:
    _, _, masks, _ = rel
    present = torch.stack([(masks == p).flatten(1).any(1) for p in range(NUM_PARTS)], 1)
    assert bool(present.all())
    area = torch.stack([(masks == p).flatten(1).float().mean(1) for p in range(1, NUM_PARTS)], 1)
    assert bool((area > 0.04).all())  # no part shrinks to a few pixels
    quadrants = masks.unflatten(1, (2, 16)).unflatten(3, (2, 16)).permute(0, 1, 3, 2, 4).flatten(1, 2)
    for q in range(4):  # each quadrant holds exactly one part: parts never touch
        ids = [quadrants[:, q].flatten(1)[i].unique() for i in range(200)]
        assert all(len(u) == 2 and u[0] == 0 for u in ids)


def test_no_single_part_no_bag_and_no_layout_carries_the_class(rel) -> None:
    """Each part's code is uniform in every class; every image wears all four codes; layout is class-free."""
    _, targets, masks, codes = rel
    assert bool((codes.sort(1).values == torch.arange(4)).all())  # the bag is constant
    for part in range(PARTS):
        counts = torch.zeros(len(CLASSES), 4)
        counts.index_put_((targets, codes[:, part]), torch.ones(len(targets)), accumulate=True)
        freq = counts / counts.sum(1, keepdim=True)
        assert (freq - 0.25).abs().max() < 0.07, (part, freq)
    disc_top_left = (masks[:, :16, :16] == 1).flatten(1).any(1).float()
    by_class = torch.stack([disc_top_left[targets == k].mean() for k in range(len(CLASSES))])
    assert (by_class - 0.25).abs().max() < 0.07, by_class


def test_any_two_parts_determine_the_class() -> None:
    cls, first = torch.arange(3).repeat_interleave(4), torch.arange(4).repeat(3)
    codes = appearances(cls, first)
    assert bool((codes.sort(1).values == torch.arange(4)).all())
    for i in range(PARTS):
        for j in range(i + 1, PARTS):
            relation = codes[:, i] ^ codes[:, j]  # invariant to the image's shared offset
            assert relation.view(3, 4).unique(dim=1).shape[1] == 1  # fixed within a class
            assert relation.view(3, 4)[:, 0].unique().numel() == 3  # distinct across classes
    assert PATTERNS.shape == (len(CLASSES), PARTS)


def test_appearance_is_drawn_as_coded(rel) -> None:
    """Colour family (bit 0): warm parts are redder than blue; stripe direction (bit 1) sets the gradient axis."""
    images, _, masks, codes = rel
    x = images[:300].float()
    for part in range(PARTS):
        inside = (masks[:300] == part + 1).float()
        mean = (x * inside[:, None]).sum((2, 3)) / inside.sum((1, 2))[:, None]
        warm = (codes[:300, part] & 1) == 0
        assert bool((mean[warm, 0] > mean[warm, 2]).all()) and bool((mean[~warm, 0] < mean[~warm, 2]).all())
        grey = x.mean(1)
        dx = ((grey[:, :, 1:] - grey[:, :, :-1]).abs() * inside[:, :, 1:] * inside[:, :, :-1]).sum((1, 2))
        dy = ((grey[:, 1:] - grey[:, :-1]).abs() * inside[:, 1:] * inside[:, :-1]).sum((1, 2))
        across_x = (codes[:300, part] & 2) == 0  # angle 0: the wave runs along x
        assert (dx[across_x] > dy[across_x]).float().mean() > 0.9
        assert (dx[~across_x] < dy[~across_x]).float().mean() > 0.9
