"""Toy-relations: the class is in how parts pair, never in one part; masks match what is drawn."""

from __future__ import annotations

import pytest
import torch

from semmae.config import DataConfig
from semmae.data import build_dataset
from semmae.data.relations import CLASSES, NUM_PARTS, PAIRING, appearances, make_toy_relations

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def rel(single_thread: None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return make_toy_relations(1000, 32, 3, seed=0)


def test_shapes_determinism_and_split_streams(rel) -> None:
    images, targets, masks, codes = rel
    assert images.shape == (1000, 3, 32, 32) and images.dtype == torch.uint8
    assert masks.shape == (1000, 32, 32) and codes.shape == (1000, 3)
    assert torch.bincount(targets, minlength=4).min() > 200
    once, again = make_toy_relations(40, 32, 3, seed=5), make_toy_relations(40, 32, 3, seed=5)
    assert all(torch.equal(a, b) for a, b in zip(once, again, strict=True))
    cfg = DataConfig(name="toy_relations", image_size=32, in_chans=1, toy_size=64)
    train, test = build_dataset(cfg, "train"), build_dataset(cfg, "test")
    assert train.images.shape == (64, 1, 32, 32) and train.num_gt_parts == NUM_PARTS
    assert train.classes == CLASSES and not torch.equal(train.images, test.images)


def test_every_part_is_drawn_with_its_own_id(rel) -> None:
    _, _, masks, _ = rel
    present = torch.stack([(masks == p).flatten(1).any(1) for p in range(4)], 1)
    assert bool(present.all())
    area = torch.stack([(masks == p).flatten(1).float().mean(1) for p in range(1, 4)], 1)
    assert bool((area > 0.03).all())  # no part shrinks to a few pixels


def test_one_part_carries_no_class_information(rel) -> None:
    """Each part's appearance code is uniform in every class (chi-square-free: all counts near n/16)."""
    _, targets, _, codes = rel
    for part in range(3):
        counts = torch.zeros(4, 4)
        counts.index_put_((targets, codes[:, part]), torch.ones(len(targets)), accumulate=True)
        freq = counts / counts.sum(1, keepdim=True)
        assert (freq - 0.25).abs().max() < 0.08, (part, freq)


def test_any_two_parts_determine_the_class_and_the_third() -> None:
    cls, first = torch.arange(4).repeat_interleave(4), torch.arange(4).repeat(4)
    codes = appearances(cls, first)
    for i, j in ((0, 1), (0, 2), (1, 2)):
        pairs = codes[:, i] * 4 + codes[:, j]
        assert pairs.unique().numel() == 16  # the 16 (class, first) combinations give 16 distinct pairs
    assert sorted(PAIRING.tolist()) == [0, 1, 2, 3] and sorted((PAIRING ^ torch.arange(4)).tolist()) == [
        0,
        1,
        2,
        3,
    ]


def test_appearance_is_drawn_as_coded(rel) -> None:
    """Colour family (bit 0): warm parts are redder than blue; stripe direction (bit 1) sets the gradient axis."""
    images, _, masks, codes = rel
    x = images[:300].float()
    for part in range(3):
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
