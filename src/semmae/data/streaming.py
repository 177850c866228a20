"""Streamed training batches of an image folder: full-resolution crops made in DataLoader workers.

The main process decides everything random (which images, and the crop/flip draws of each, from
the micro-batch generator); workers only decode files and apply those draws to each image at its
own resolution (:meth:`semmae.data.folder.FileSource.read_crop`). So a batch is a pure function of
(seed, epoch, micro-batch, rank) however many workers run, and a resumed run rebuilds it exactly.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from functools import partial

import torch

from semmae.data.imageset import ImageSet, per_image_batches


def iterate_crops(
    ds: ImageSet,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    scale: Sequence[float],
    ratio: Sequence[float],
    num_workers: int = 0,
    pin_memory: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Random resized crops of a streamed image folder, batch by batch.

    Args:
        ds: a streamed image-folder split.
        batches: ``(indices (B,) int64, draws (B, 23))`` per batch, in order; the draws come from
            :func:`semmae.data.transforms.crop_uniforms`. Consumed lazily (a few batches ahead).
        scale, ratio: RandomResizedCrop ranges.
        num_workers: DataLoader worker processes decoding files (0 = in this process).
        pin_memory: pin the batches (for a fast copy to a GPU).

    Yields:
        ``(crops uint8 (B, C, S, S), boxes float32 (B, 4), indices int64 (B,))``; a box is
        ``(top, left, h, w)`` as fractions of its image's height and width.
    """
    if ds.source is None or not hasattr(ds.source, "read_crop"):
        raise ValueError("full-resolution crops need a streamed image folder")
    ranges = {"scale": (float(scale[0]), float(scale[1])), "ratio": (float(ratio[0]), float(ratio[1]))}
    read = partial(ds.source.read_crop, **ranges)  # type: ignore[attr-defined]
    yield from per_image_batches(read, batches, num_workers=num_workers, pin_memory=pin_memory)
