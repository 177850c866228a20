"""Toy-parts: shapes, determinism, part/texture structure, learnable classes, speed."""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F

from semmae.config import DataConfig
from semmae.data import build_dataset
from semmae.data.synthetic import CLASSES, NUM_PARTS, make_toy_parts

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def toy(single_thread: None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    return make_toy_parts(1200, 32, 1, seed=0)


def test_shapes_dtypes_and_ranges(toy) -> None:
    images, targets, masks, k = toy
    assert images.shape == (1200, 1, 32, 32) and images.dtype == torch.uint8
    assert targets.shape == (1200,) and targets.dtype == torch.int64
    assert masks.shape == (1200, 32, 32) and masks.dtype == torch.uint8
    assert k == NUM_PARTS == 4
    assert set(targets.tolist()) == {0, 1, 2, 3}
    assert torch.bincount(targets, minlength=4).min() > 200  # roughly balanced
    assert int(masks.max()) == 3 and int(masks.min()) == 0


def test_every_image_shows_every_part(toy) -> None:
    _, _, masks, _ = toy
    present = torch.stack([(masks == p).flatten(1).any(1) for p in range(4)], 1)
    assert present.all(1).float().mean() >= 0.99
    area = torch.stack([(masks == p).flatten(1).float().mean(1) for p in range(4)], 1).mean(0)
    assert area[0] > 0.5 and bool((area[1:] > 0.01).all())  # background dominates, no part vanishes


def test_parts_have_distinct_brightness_and_the_map_matches_the_image(toy) -> None:
    images, _, masks, _ = toy
    v = images[:, 0].float() / 255.0
    means = [v[masks == p].mean().item() for p in range(4)]
    # design levels: background 0.2, body 0.6, head 0.8, limbs 0.45
    assert means[0] < means[3] < means[1] < means[2]
    # per image, the head is brighter than the background: the mask is where the image says
    head = (v * (masks == 2)).flatten(1).sum(1) / (masks == 2).flatten(1).sum(1).clamp(min=1)
    back = (v * (masks == 0)).flatten(1).sum(1) / (masks == 0).flatten(1).sum(1)
    assert (head > back).float().mean() > 0.98


def test_parts_are_textured(toy) -> None:
    images, _, masks, _ = toy
    v = images[:, 0].float() / 255.0
    for part in range(4):  # within-part spread well above the 0.02 pixel noise
        sel = masks == part
        per_image_std = torch.stack([v[i][sel[i]].std() for i in range(50) if sel[i].sum() > 8])
        assert per_image_std.median() > 0.04, part


def test_classes_are_learnable_from_geometry(toy) -> None:
    _, targets, masks, _ = toy
    onehot = F.one_hot(masks.long(), 4).permute(0, 3, 1, 2).float()
    x = F.avg_pool2d(onehot, 4).flatten(1)
    xtr, xte, ytr, yte = x[:900], x[900:], targets[:900], targets[900:]
    centroids = torch.stack([xtr[ytr == c].mean(0) for c in range(len(CLASSES))])
    acc = (torch.cdist(xte, centroids).argmin(1) == yte).float().mean().item()
    assert acc > 0.8, acc  # chance is 0.25


def test_deterministic_and_seed_dependent() -> None:
    a = make_toy_parts(64, 28, 3, seed=5)
    b = make_toy_parts(64, 28, 3, seed=5)
    c = make_toy_parts(64, 28, 3, seed=6)
    assert all(torch.equal(x, y) for x, y in zip(a[:3], b[:3], strict=True))
    assert a[0].shape == (64, 3, 28, 28)
    assert not torch.equal(a[0], c[0])
    # colour parts: channels differ
    assert (a[0][:, 0].float() - a[0][:, 1].float()).abs().mean() > 5


def test_build_dataset_toy_parts_splits_and_limit() -> None:
    cfg = DataConfig(name="toy_parts", image_size=32, toy_size=200, limit=150)
    train = build_dataset(cfg, "train")
    test = build_dataset(cfg, "test")
    assert len(train) == len(test) == 150
    assert train.part_masks.shape == (150, 32, 32) and train.num_gt_parts == 4
    assert train.classes == CLASSES
    assert not torch.equal(train.images, test.images)
    again = build_dataset(cfg, "train")
    assert again.fingerprint() == train.fingerprint() != test.fingerprint()
    # the limit takes the first images of the full split
    full = build_dataset(DataConfig(name="toy_parts", image_size=32, toy_size=200), "train")
    assert torch.equal(full.images[:150], train.images)
    assert torch.equal(full.part_masks[:150], train.part_masks)


def test_generation_is_fast() -> None:
    best = float("inf")
    for _ in range(2):
        start = time.perf_counter()
        make_toy_parts(2000, 32, 1, seed=1)
        best = min(best, time.perf_counter() - start)
    assert best < 2.0, f"make_toy_parts(2000, 32) took {best:.2f} s"
