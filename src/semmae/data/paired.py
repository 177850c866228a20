"""Images paired with their part maps: what SemMAE pretraining reads."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset

from semmae.data.folder import whole_image_view
from semmae.data.imageset import ImageSet
from semmae.data.partmaps import PartMaps, load_part_maps


class PartLabelledImages(Dataset):
    """An :class:`ImageSet` with a validated part-map file of the same images.

    Items are ``(image uint8 (C, S, S), part labels uint8 (h, w), target int64)``; :meth:`batch`
    returns the same for many indices at once (the fast path for in-memory data). A part map
    covers the whole image, so images are read in the whole-image view (an image folder's file
    resized to S x S, aspect ignored): pixel and label line up. Training crops of the
    full-resolution files take their map region from the crop box instead (``engine.batches``).

    Args:
        dataset: the images.
        part_maps: a loaded :class:`PartMaps` or the path of a part-map file; it is checked
            against ``dataset`` (name, split, count, image size, image-order fingerprint).

    Raises:
        DataError: the file does not belong to ``dataset`` (one line naming the field).
    """

    def __init__(self, dataset: ImageSet, part_maps: PartMaps | str | Path) -> None:
        self.dataset = whole_image_view(dataset)
        self.part_maps = (
            part_maps if isinstance(part_maps, PartMaps) else load_part_maps(part_maps, dataset=dataset)
        )

    @property
    def num_parts(self) -> int:
        """K of the part maps."""
        return self.part_maps.num_parts

    def __len__(self) -> int:
        return len(self.dataset)

    def batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(images (B, C, S, S) uint8, labels (B, h, w) uint8, targets (B,) int64)`` for ``indices``."""
        return self.dataset.load(indices), self.part_maps.lookup(indices), self.dataset.targets[indices]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        images, labels, targets = self.batch(torch.tensor([index]))
        return images[0], labels[0], targets[0]
