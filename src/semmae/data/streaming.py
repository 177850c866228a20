"""Streamed training batches of an image folder: full-resolution crops made in DataLoader workers.

The main process decides everything random (which images, and the crop/flip draws of each, from
the micro-batch generator); workers only decode files and apply those draws to each image at its
own resolution (:meth:`semmae.data.folder.FileSource.read_crop`). So a batch is a pure function of
(seed, epoch, micro-batch, rank) however many workers run, and a resumed run rebuilds it exactly.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import torch
from torch.utils.data import Dataset

from semmae.data.imageset import ImageSet, per_image_batches


class _CropItems(Dataset):
    """``dataset[(index, draws)] -> (crop uint8 (C, S, S), box (4,), index)`` for a DataLoader."""

    def __init__(self, ds: ImageSet, scale: Sequence[float], ratio: Sequence[float]) -> None:
        if ds.source is None or not hasattr(ds.source, "read_crop"):
            raise ValueError("full-resolution crops need a streamed image folder")
        self.source = ds.source
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, item: tuple[int, list[float]]) -> tuple[torch.Tensor, torch.Tensor, int]:
        index, draws = item
        crop, box = self.source.read_crop(index, draws, self.scale, self.ratio)  # type: ignore[attr-defined]
        return crop, box, index


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
    yield from per_image_batches(
        _CropItems(ds, scale, ratio), batches, num_workers=num_workers, pin_memory=pin_memory
    )
