"""Deterministic batches for pretraining: epoch order, rank shards, augmentation, part labels.

All randomness is keyed by (seed, epoch, micro-batch, rank), so any micro-batch can be rebuilt
exactly, which is what makes ``--resume`` reproduce an uninterrupted run.

Two paths give the same batches' semantics. Sets held in memory at their training size
(Fashion-MNIST, toy parts, CIFAR) are augmented a whole batch at a time on the device
(``augment_batch``: one sampling grid per image). Streamed image folders are cropped from each
decoded full-resolution file in DataLoader workers, bicubic, as MAE's ``RandomResizedCrop``
(``semmae.data.streaming``); the crop draws come from the same generator in the same order, and
part maps (which cover the whole image) follow the crop box.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from semmae import runtime
from semmae.config import DataConfig
from semmae.data import ImageSet, iterate_batches
from semmae.data.device_decode import decode_crops, iterate_encoded
from semmae.data.streaming import iterate_crops
from semmae.data.transforms import (
    augment_batch,
    crop_part_maps,
    crop_uniforms,
    labels_to_patch_grid,
    normalize,
)
from semmae.runtime import step_generator


@dataclass
class MicroBatch:
    """One micro-batch ready for the model.

    Attributes:
        index: micro-batch number within its epoch.
        images: (B, C, S, S) normalised float images on the device.
        part_labels: (B, L) int64 part id per patch, or None.
        generator: the CPU generator for this micro-batch's mask (already advanced past augmentation).
        targets: (B,) int64 class indices on the CPU (-1 when unlabelled).
    """

    index: int
    images: torch.Tensor
    part_labels: torch.Tensor | None
    generator: torch.Generator
    targets: torch.Tensor | None = None


@dataclass(eq=False)
class PretrainBatches:
    """Yields :class:`MicroBatch` objects for one epoch of one rank.

    Attributes:
        dataset: the training images.
        data: augmentation and normalisation settings.
        batch_size: images per micro-batch (per rank).
        seed: run seed.
        rank, world: this process and the number of processes.
        device: where images go.
        part_maps: optional object with ``lookup(indices) -> (B, h, w) uint8`` (a PartMaps).
        grid: MAE patch grid, needed with part maps.
        num_parts: K of the part maps.
    """

    dataset: ImageSet
    data: DataConfig
    batch_size: int
    seed: int
    rank: int
    world: int
    device: torch.device
    part_maps: object | None = None
    grid: tuple[int, int] | None = None
    num_parts: int | None = None

    def micro_batches_per_epoch(self) -> int:
        """Full micro-batches each rank sees per epoch (the last partial one is dropped)."""
        return len(self.dataset) // (self.batch_size * self.world)

    def shard(self, epoch: int) -> torch.Tensor:
        """This rank's indices for ``epoch``: one shared permutation, strided by rank."""
        perm = torch.randperm(len(self.dataset), generator=step_generator(self.seed, 1, epoch))
        n = self.micro_batches_per_epoch() * self.batch_size * self.world
        return perm[:n][self.rank :: self.world]

    def epoch(self, epoch: int, start: int = 0) -> Iterator[MicroBatch]:
        """Micro-batches ``start, start+1, ...`` of ``epoch``."""
        indices = self.shard(epoch)[start * self.batch_size :]
        if self.dataset.streamed:
            yield from self._streamed_epoch(epoch, start, indices)
            return
        batches = iterate_batches(self.dataset, indices, self.batch_size, num_workers=self.data.num_workers)
        for offset, (images_u8, _, idx) in enumerate(batches):
            if images_u8.shape[0] < self.batch_size:
                break
            i = start + offset
            gen = step_generator(self.seed, 2, epoch, i, self.rank)
            yield self._prepare(i, images_u8, idx, gen)

    def _draws(self, epoch: int, i: int) -> tuple[torch.Generator, torch.Tensor]:
        """Micro-batch ``i``'s generator, advanced past its (B, 23) crop and flip draws."""
        gen = step_generator(self.seed, 2, epoch, i, self.rank)
        return gen, crop_uniforms(self.batch_size, gen, self.data.hflip)

    def _crops(self, plan: Iterator[tuple[torch.Tensor, torch.Tensor]]) -> Iterator[tuple[torch.Tensor, ...]]:
        """``(crops uint8 (B, C, S, S), boxes (B, 4), indices (B,))`` per micro-batch: decoded in the
        workers (``data.decode=cpu``) or, from the files' bytes, on the training device (``device``)."""
        d = self.data
        if d.decode == "device":
            encoded = iterate_encoded(self.dataset, plan, scale=d.crop_scale, ratio=d.crop_ratio,
                                      num_workers=d.num_workers)  # fmt: skip
            for payloads, metas, idx in encoded:
                yield (
                    *decode_crops(payloads, metas, d.image_size, d.in_chans, self.device, d.on_corrupt),
                    idx,
                )
            return
        yield from iterate_crops(self.dataset, plan, scale=d.crop_scale, ratio=d.crop_ratio,
                                 num_workers=d.num_workers, pin_memory=self.device.type == "cuda")  # fmt: skip

    def _streamed_epoch(self, epoch: int, start: int, indices: torch.Tensor) -> Iterator[MicroBatch]:
        bsz = self.batch_size
        plan = (
            (indices[k * bsz : (k + 1) * bsz], self._draws(epoch, start + k)[1])
            for k in range(len(indices) // bsz)
        )
        crops = self._crops(plan)
        for offset, (images_u8, boxes, idx) in enumerate(crops):
            i = start + offset
            gen, draws = self._draws(epoch, i)  # the mask continues from the same generator
            images = runtime.to_device(images_u8, self.device).float().div_(255.0)
            images = normalize(images, self.data.mean, self.data.std)
            labels = None
            if self.part_maps is not None:
                maps = runtime.to_device(self.part_maps.lookup(idx), self.device)  # type: ignore[attr-defined]
                maps = crop_part_maps(maps, boxes, draws[:, -1] > 0.5, self.data.image_size)
                labels = self._patch_labels(maps)
            yield MicroBatch(i, images, labels, gen, targets=self.dataset.targets[idx])

    def _patch_labels(self, maps: torch.Tensor) -> torch.Tensor:
        assert self.grid is not None and self.num_parts is not None
        return labels_to_patch_grid(maps, self.grid, self.num_parts)

    def _prepare(
        self, i: int, images_u8: torch.Tensor, idx: torch.Tensor, gen: torch.Generator
    ) -> MicroBatch:
        maps = None
        if self.part_maps is not None:
            maps = runtime.to_device(self.part_maps.lookup(idx), self.device)  # type: ignore[attr-defined]
        images, maps = augment_batch(
            runtime.to_device(images_u8, self.device),
            out_size=self.data.image_size,
            scale=tuple(self.data.crop_scale),
            ratio=tuple(self.data.crop_ratio),
            hflip=self.data.hflip,
            generator=gen,
            part_maps=maps,
        )
        images = normalize(images, self.data.mean, self.data.std)
        labels = self._patch_labels(maps) if maps is not None else None
        return MicroBatch(i, images, labels, gen, targets=self.dataset.targets[idx])
