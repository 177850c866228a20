"""MAE's fine-tune transform for image folders: timm's factory, its own crop scale, seeded per image."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data.auto_augment import RandAugment
from timm.data.random_erasing import RandomErasing
from timm.data.transforms import RandomResizedCropAndInterpolation

from semmae.config import DataConfig, EvalConfig
from semmae.data import build_dataset
from semmae.data.finetune_transforms import finetune_transform, iterate_finetune

pytestmark = pytest.mark.usefixtures("single_thread")


def _data(root: Path | None = None) -> DataConfig:
    return DataConfig(
        name="image_folder", root=str(root) if root else None, image_size=32, in_chans=3,
        crop_scale=[0.2, 1.0], mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225],
    )  # fmt: skip


def test_factory_is_maes_list_with_the_fine_tune_crop_scale() -> None:
    steps = finetune_transform(_data(), EvalConfig()).transforms
    crop = next(t for t in steps if isinstance(t, RandomResizedCropAndInterpolation))
    assert crop.scale == (0.08, 1.0) and crop.size == (32, 32)  # not data.crop_scale's (0.2, 1)
    assert str(crop.interpolation).lower().endswith("bicubic")
    aug = next(t for t in steps if isinstance(t, RandAugment))
    assert aug.num_layers == 2 and {op.magnitude for op in aug.ops} == {9}
    assert {op.magnitude_std for op in aug.ops} == {0.5} and any("Increasing" in op.name for op in aug.ops)
    erase = next(t for t in steps if isinstance(t, RandomErasing))
    assert erase.probability == 0.25 and erase.mode == "pixel"
    plain = finetune_transform(
        _data(), EvalConfig(ft_auto_augment="", ft_reprob=0.0, ft_crop_scale=[0.5, 1.0])
    )
    assert not any(isinstance(t, (RandAugment, RandomErasing)) for t in plain.transforms)
    assert next(t for t in plain.transforms if isinstance(t, RandomResizedCropAndInterpolation)).scale == (
        0.5,
        1.0,
    )


def test_batches_are_a_pure_function_of_the_seeds(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for i in range(8):
        path = tmp_path / "train" / f"c{i % 2}" / f"{i}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)).save(path)
    (tmp_path / "val" / "c0").mkdir(parents=True)
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "val" / "c0" / "0.png")
    ds = build_dataset(_data(tmp_path), "train")
    transform = finetune_transform(_data(tmp_path), EvalConfig())
    plan = [
        (torch.arange(4), torch.tensor([11, 12, 13, 14])),
        (torch.arange(4, 8), torch.tensor([15, 16, 17, 18])),
    ]
    random.seed(123)
    before = random.random()
    random.seed(123)
    a = list(iterate_finetune(ds, plan, transform))
    assert random.random() == before  # the global generators are restored around every image
    b = list(iterate_finetune(ds, plan, transform, num_workers=1))
    for (ia, ta, xa), (ib, tb, xb) in zip(a, b, strict=True):
        assert ia.shape == (4, 3, 32, 32) and ia.dtype == torch.float32
        assert torch.equal(ia, ib) and torch.equal(ta, tb) and torch.equal(xa, xb)
    assert torch.equal(torch.cat([t for _, t, _ in a]), ds.targets[:8])
    c = list(iterate_finetune(ds, [(torch.arange(4), torch.tensor([21, 22, 23, 24]))], transform))
    assert not torch.equal(c[0][0], a[0][0])


def test_posterize_at_full_magnitude_gives_black_instead_of_failing() -> None:
    aug = next(t for t in finetune_transform(_data(), EvalConfig()).transforms if isinstance(t, RandAugment))
    op = next(o for o in aug.ops if o.name == "PosterizeIncreasing")
    op.prob, op.magnitude, op.magnitude_std = 1.0, 10.0, 0.0  # keeps 4 - 4 = 0 bits
    out = op(Image.fromarray(np.full((8, 8, 3), 200, np.uint8)))
    assert np.asarray(out).max() == 0
