"""The image-set type and batching: one split as a uint8 tensor (or a list of files).

Every dataset is converted ONCE, when it is built, to ``data.in_chans`` channels (grey <-> RGB) and
to ``data.image_size`` pixels (shorter side resized with antialiasing, then centre-cropped), and
stored as uint8 (N, C, S, S). Augmentation then works on whole batches (``semmae.data.transforms``).
Sets that would not fit in memory (large image folders) are *streamed*: ``images`` is None and
:meth:`ImageSet.load` reads and converts files on demand, in DataLoader workers when iterated.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

import torch
import torchvision.transforms.v2.functional as TF
from torch.utils.data import DataLoader, Dataset

from semmae.errors import DataError

_CONVERT_CHUNK = 2048  # images resized per call: bounds the float scratch memory of a resize


class ImageSource(Protocol):
    """Reads the images of a streamed set one at a time (must be picklable for DataLoader workers)."""

    image_size: int
    in_chans: int

    def __len__(self) -> int: ...

    def read(self, index: int) -> torch.Tensor:
        """Image ``index`` as uint8 (C, S, S)."""
        ...

    def digest_items(self) -> Iterator[bytes]:
        """What the fingerprint hashes (e.g. relative path and size of each file, in set order)."""
        ...


@dataclass
class ImageSet:
    """One split of a dataset.

    Attributes:
        name: dataset name (``fashion_mnist``, ``toy_parts``, ``image_folder``, ...).
        split: ``train`` or ``test``.
        classes: class names; ``targets`` index into it (empty for unlabelled folders).
        targets: (N,) int64 class indices, -1 when unlabelled.
        images: (N, C, S, S) uint8 when held in memory, else None (streamed from ``source``).
        part_masks: (N, S, S) uint8 ground-truth part ids (toy_parts only), 0 = background.
        num_gt_parts: number of ground-truth part ids including the background.
        source: the file reader of a streamed set (None when ``images`` is held in memory).
    """

    name: str
    split: str
    classes: list[str]
    targets: torch.Tensor
    images: torch.Tensor | None
    part_masks: torch.Tensor | None = None
    num_gt_parts: int | None = None
    source: ImageSource | None = None
    _fingerprint: str | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if (self.images is None) == (self.source is None):
            raise ValueError("an ImageSet needs exactly one of images (in memory) and source (streamed)")

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    @property
    def image_size(self) -> int:
        """S, the side of every (square) image."""
        return int(self.images.shape[-1]) if self.images is not None else self.source.image_size

    @property
    def in_chans(self) -> int:
        """C, the number of channels of every image."""
        return int(self.images.shape[1]) if self.images is not None else self.source.in_chans

    @property
    def streamed(self) -> bool:
        """True when the images are read from files on demand."""
        return self.images is None

    def load(self, indices: torch.Tensor | Sequence[int]) -> torch.Tensor:
        """The images at ``indices`` as uint8 (B, C, S, S), on the CPU."""
        idx = torch.as_tensor(indices, dtype=torch.long).cpu()
        if self.images is not None:
            return self.images[idx]
        size, chans = self.image_size, self.in_chans
        if idx.numel() == 0:
            return torch.empty(0, chans, size, size, dtype=torch.uint8)
        return torch.stack([self.source.read(int(i)) for i in idx])

    def fingerprint(self) -> str:
        """A stable 16-hex-digit digest of the image order and content (cached).

        In-memory sets hash the image bytes, their shape and the targets; streamed sets hash the
        relative path and size of every file, in set order (reading every file would defeat
        streaming). Part-map files store it so they are never paired with another image order.
        """
        if self._fingerprint is None:
            h = hashlib.sha256()
            if self.images is not None:
                h.update(repr(tuple(self.images.shape)).encode())
                h.update(self.images.cpu().contiguous().numpy())  # buffer protocol: no copy
            else:
                for item in self.source.digest_items():
                    h.update(item)
            h.update(self.targets.cpu().to(torch.int64).contiguous().numpy())
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint


def fit_images(images: torch.Tensor, image_size: int, in_chans: int) -> torch.Tensor:
    """Convert uint8 images to ``in_chans`` channels and ``image_size`` pixels square.

    Grey -> RGB repeats the channel; RGB -> grey uses the ITU-R 601 luma weights (as PIL's "L").
    The shorter side is resized to ``image_size`` (bilinear, antialiased), then centre-cropped.

    Args:
        images: (N, C, H, W) uint8, C in {1, 3}.
        image_size: S.
        in_chans: 1 or 3.

    Returns:
        (N, in_chans, S, S) uint8; the input itself when nothing changes.
    """
    chans, height, width = images.shape[1:]
    if chans not in (1, 3) or in_chans not in (1, 3):
        raise DataError(f"cannot convert {chans}-channel images to data.in_chans={in_chans}; use 1 or 3")
    if chans == in_chans and height == width == image_size:
        return images
    out = []
    for chunk in images.split(_CONVERT_CHUNK):
        if chans == 3 and in_chans == 1:  # fewer channels first: less to resize
            chunk = TF.rgb_to_grayscale(chunk, num_output_channels=1)
        if (height, width) != (image_size, image_size):
            chunk = TF.resize(chunk, [image_size], antialias=True)
            chunk = TF.center_crop(chunk, [image_size, image_size])
        if chans == 1 and in_chans == 3:
            chunk = chunk.expand(-1, 3, -1, -1)
        out.append(chunk.contiguous())
    return torch.cat(out)


def _read_with_target(source: ImageSource, index: int, target: int) -> tuple[torch.Tensor, int]:
    return source.read(index), target


class _PerImageItems(Dataset):
    """``items[(index, value)] -> (*read(index, value), index)`` for a DataLoader."""

    def __init__(self, read: Callable[[int, Any], tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.read = read

    def __getitem__(self, item: tuple[int, Any]) -> tuple[torch.Tensor, torch.Tensor, int]:
        index, value = item
        return (*self.read(index, value), index)


def per_image_batches(
    read: Callable[[int, Any], tuple[torch.Tensor, torch.Tensor]],
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    num_workers: int = 0,
    pin_memory: bool = False,
    collate_fn: Callable[[list[Any]], Any] | None = None,
) -> Iterator[Any]:
    """Batches of ``read(index, value)`` made by ``num_workers`` DataLoader workers (0 = here).

    Args:
        read: ``(index, value) -> (a, b)`` tensors of one image; it runs in the workers, so it must
            be picklable (a bound method, a ``functools.partial``).
        batches: ``(indices (B,), values (B, ...))`` per batch, consumed lazily (a few ahead).
        num_workers, pin_memory: DataLoader settings.
        collate_fn: how the workers assemble a batch of ``(a, b, index)`` items (default: stacked).

    Yields:
        ``(a (B, ...), b (B, ...), indices int64 (B,))``, the collated reads and their indices
        (with ``collate_fn``: what it returns).
    """
    # The values travel to the workers as plain Python values, not tensor rows: a tensor sent to a
    # worker is moved to its own shared-memory segment, which costs more than decoding the image.
    plan = (list(zip(indices.tolist(), values.tolist(), strict=True)) for indices, values in batches)
    # Its own generator: a DataLoader otherwise takes its seed from the global RNG, shifting the
    # draws of anything else using it (drop path) between a run and its resumed copy.
    items = _PerImageItems(read)
    gen = torch.Generator()
    loader = DataLoader(items, batch_sampler=plan, num_workers=num_workers, pin_memory=pin_memory,
                        generator=gen, collate_fn=collate_fn)  # fmt: skip
    if collate_fn is not None:
        yield from loader
        return
    for first, second, indices in loader:
        yield first, second, indices.long()


def iterate_batches(
    ds: ImageSet,
    indices: torch.Tensor | Sequence[int],
    batch_size: int,
    *,
    num_workers: int = 0,
    drop_last: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Walk ``indices`` in order, ``batch_size`` at a time.

    In-memory sets are sliced directly; streamed sets go through :func:`per_image_batches`, so
    files are read and resized in ``num_workers`` worker processes.

    Args:
        ds: the set.
        indices: (N,) int64 image indices, in the order to visit them (e.g. a permutation).
        batch_size: images per batch; the last batch may be smaller unless ``drop_last``.
        num_workers: DataLoader workers (streamed sets only).
        drop_last: skip a final incomplete batch.

    Yields:
        ``(images, targets, indices)``: uint8 (B, C, S, S), int64 (B,), int64 (B,), on the CPU.
    """
    idx = torch.as_tensor(indices, dtype=torch.long).cpu()
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    stop = len(idx) - len(idx) % batch_size if drop_last else len(idx)
    chunks = (idx[start : start + batch_size] for start in range(0, stop, batch_size))
    if not ds.streamed:
        for b in chunks:
            yield ds.images[b], ds.targets[b], b
        return
    read = partial(_read_with_target, ds.source)
    yield from per_image_batches(read, ((b, ds.targets[b]) for b in chunks), num_workers=num_workers)
