"""MAE's fine-tuning transform for image folders, from timm's own factory, reproducibly seeded.

MAE fine-tunes with timm's ImageNet training transform: ``RandomResizedCrop(S, scale=(0.08, 1),
bicubic)``, horizontal flip, RandAugment ``rand-m9-mstd0.5-inc1``, ``ToTensor``, ``Normalize`` and
random erasing (p 0.25, per-pixel noise); mixup/cutmix and label smoothing act on whole batches in
the trainer. :func:`finetune_transform` builds exactly that list with ``timm.data.create_transform``
from ``eval.ft_*`` (the crop scale is ``eval.ft_crop_scale``, never pretraining's
``data.crop_scale``), applied to each decoded full-resolution file.

timm's transforms draw from the global ``random``/NumPy/torch generators. :func:`iterate_finetune`
gives every image its own seed (from the caller's per-batch key) and applies the transform inside
a block that seeds those generators and restores them, so a batch is a pure function of (seed,
epoch, batch, rank), whatever the number of workers, and ``--resume`` stays exact.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from functools import partial
from typing import Any

import torch
from PIL import Image
from timm.data import auto_augment as timm_auto_augment
from timm.data import create_transform

from semmae import runtime
from semmae.config import DataConfig, EvalConfig
from semmae.data.imageset import ImageSet, per_image_batches

Transform = Callable[[Image.Image], torch.Tensor]


def _posterize(img: Image.Image, bits_to_keep: int, **kwargs: object) -> Image.Image:
    """timm's posterize op, with 0 bits kept giving a black image as Pillow < 12 did.

    timm's ``PosterizeIncreasing`` keeps ``4 - int(4 m / 10)`` bits, i.e. 0 at magnitude 10, which
    ``mstd0.5`` reaches about once in 40 draws; Pillow 12+ refuses 0 bits with a ValueError, which
    would stop a fine-tune within its first minutes.
    """
    if bits_to_keep <= 0:
        return img.point([0] * 256 * len(img.getbands()))
    return timm_auto_augment.posterize(img, bits_to_keep, **kwargs)


def _patch_posterize(transform: object) -> None:
    for step in getattr(transform, "transforms", []):
        for op in getattr(step, "ops", []):
            if getattr(op, "aug_fn", None) is timm_auto_augment.posterize:
                op.aug_fn = _posterize


def finetune_transform(data: DataConfig, ev: EvalConfig) -> Transform:
    """MAE's fine-tune training transform (timm ``create_transform``), PIL image -> float (C, S, S).

    Args:
        data: ``image_size``, ``crop_ratio``, ``hflip``, ``mean``, ``std``.
        ev: ``ft_crop_scale``, ``ft_auto_augment`` (empty = no RandAugment), ``ft_reprob``.

    Returns:
        The transform: crop + flip + RandAugment + normalise + random erasing.
    """
    transform = create_transform(
        input_size=data.image_size,
        is_training=True,
        scale=tuple(ev.ft_crop_scale),
        ratio=tuple(data.crop_ratio),
        hflip=0.5 if data.hflip else 0.0,
        color_jitter=None,
        auto_augment=ev.ft_auto_augment or None,
        interpolation="bicubic",
        mean=tuple(data.mean) if len(data.mean) == data.in_chans else tuple(data.mean) * data.in_chans,
        std=tuple(data.std) if len(data.std) == data.in_chans else tuple(data.std) * data.in_chans,
        re_prob=ev.ft_reprob,
        re_mode="pixel",
        re_count=1,
    )
    _patch_posterize(transform)
    return transform


def _transformed(
    source: Any, targets: torch.Tensor, transform: Transform, index: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(transformed float (C, S, S), target) of image ``index``, its transform run under ``seed``."""
    im = source.decode(index)
    with runtime.seeded_global_rngs(seed):
        return transform(im), targets[index]


def iterate_finetune(
    ds: ImageSet,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    transform: Transform,
    *,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Fine-tune batches of a streamed image folder.

    Args:
        ds: a streamed image-folder split.
        batches: ``(indices (B,) int64, seeds (B,) int64)`` per batch; each image's transform runs
            under its own seed (draw them from the batch's generator).
        transform: e.g. :func:`finetune_transform`.
        num_workers, pin_memory: DataLoader settings.

    Yields:
        ``(images float (B, C, S, S), targets int64 (B,), indices int64 (B,))``.
    """
    if ds.source is None or not hasattr(ds.source, "decode"):
        raise ValueError("the fine-tune transform reads the files of a streamed image folder")
    read = partial(_transformed, ds.source, ds.targets, transform)
    yield from per_image_batches(read, batches, num_workers=num_workers, pin_memory=pin_memory)
