"""End-to-end fine-tuning of an encoder as a classifier (MAE's recipe, DESIGN.md §2.4).

The classifier is :func:`~semmae.models.vit.build_classifier` (timm ViT, global average pool,
drop path). Optimiser: AdamW (0.9, 0.999) at lr = ``ft_base_lr`` x effective batch / 256 with
layer-wise lr decay ``ft_layer_decay`` (:func:`~semmae.models.vit.layer_decay_groups`: embeddings
lowest, head highest; no weight decay on biases, norms, the CLS token or the positions). Per-step
linear warm-up then cosine to ``ft_min_lr``. Regularisation: timm ``Mixup``/CutMix with label
smoothing (``SoftTargetCrossEntropy``; plain label-smoothed cross-entropy when both alphas are 0)
on every batch, and per image: for streamed image folders MAE's own transform list from timm's
factory on each full-resolution file (``semmae.data.finetune_transforms``: RandomResizedCrop
``eval.ft_crop_scale`` bicubic, flip, RandAugment ``eval.ft_auto_augment``, random erasing); for the
small in-memory sets a batched random resized crop (``eval.ft_crop_scale``) + flip
(``semmae.data.transforms.augment_batch``) and timm random erasing.

Reproducibility: data order, crops, mixing and erasing are a pure function of (seed, epoch,
batch, rank). timm's Mixup and RandomErasing draw from the global Python/NumPy/torch generators,
so they run inside a block that seeds those from the batch key and restores them afterwards.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from timm.data import Mixup
from timm.data.random_erasing import RandomErasing
from timm.loss import SoftTargetCrossEntropy
from torch import nn

from semmae import runtime
from semmae.config import Config
from semmae.config_checks import check_lr_floor
from semmae.data import iterate_batches
from semmae.data.finetune_transforms import finetune_transform, iterate_finetune
from semmae.data.transforms import augment_batch, normalize
from semmae.engine.optim import adamw
from semmae.engine.schedule import Plan, make_plan
from semmae.errors import ConfigError
from semmae.models.vit import build_classifier, layer_decay_groups
from semmae.models.vit_encoder import ViTEncoder
from semmae.train.classify import ClassifierParts, ClassifierTask, train_classifier


def make_mixup(cfg: Config, num_classes: int) -> Any | None:
    """timm ``Mixup`` from ``eval.ft_mixup/ft_cutmix/ft_label_smoothing``; None when both alphas are 0."""
    e = cfg.eval
    if e.ft_mixup <= 0 and e.ft_cutmix <= 0:
        return None
    if e.ft_batch_size % 2:
        raise ConfigError(f"mixup/cutmix need an even eval.ft_batch_size, got {e.ft_batch_size}")
    return Mixup(mixup_alpha=e.ft_mixup, cutmix_alpha=e.ft_cutmix, label_smoothing=e.ft_label_smoothing,
                 num_classes=num_classes)  # fmt: skip


def make_loss(cfg: Config, mixup: Any | None) -> nn.Module:
    """Soft-target cross-entropy after mixup, else cross-entropy with label smoothing."""
    if mixup is not None:
        return SoftTargetCrossEntropy()
    return nn.CrossEntropyLoss(label_smoothing=cfg.eval.ft_label_smoothing)


def finetune_plan(cfg: Config, num_train: int, world: int) -> Plan:
    """Steps, warm-up and peak lr (``ft_base_lr`` x effective batch / 256) from ``cfg.eval``.

    Raises:
        ConfigError: a step needs more images than the data has.
    """
    e = cfg.eval
    eff, peak_lr, lr_settings = e.ft_peak_lr(world)
    per_epoch = num_train // eff
    if per_epoch < 1:
        raise ConfigError(
            f"one fine-tuning step needs {eff} images but the data has {num_train}; "
            "lower eval.ft_batch_size (or raise data.limit, if set, or add images)"
        )
    return make_plan(
        steps_per_epoch=per_epoch, epochs=e.ft_epochs, max_steps=None, warmup_epochs=e.ft_warmup_epochs,
        peak_lr=peak_lr, min_lr=e.ft_min_lr, effective_batch=eff, lr_settings=lr_settings,
    )  # fmt: skip


class FinetuneBatches:
    """Augmented, mixed training batches of one rank; a pure function of (seed, epoch, batch, rank)."""

    def __init__(
        self,
        dataset: Any,
        cfg: Config,
        out_size: int,
        mean: list[float],
        std: list[float],
        device: torch.device,
        num_classes: int,
    ) -> None:
        self.dataset, self.cfg, self.out_size, self.mean, self.std = dataset, cfg, out_size, mean, std
        self.device, self.rank, self.world = device, runtime.rank(), runtime.world_size()
        self.mixup = make_mixup(cfg, num_classes)
        self.erase = None
        if cfg.eval.ft_reprob > 0:
            self.erase = RandomErasing(cfg.eval.ft_reprob, mode="pixel", max_count=1, device=str(device))

    def epoch(
        self, epoch: int, per_epoch: int, start: int = 0
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches ``start .. per_epoch - 1`` of ``epoch``: ``(images, targets or soft targets)``."""
        bs, seed, d = self.cfg.eval.ft_batch_size, self.cfg.train.seed, self.cfg.data
        perm = torch.randperm(len(self.dataset), generator=runtime.step_generator(seed, 11, epoch))
        shard = perm[: per_epoch * bs * self.world][self.rank :: self.world][start * bs :]
        if self.dataset.streamed:
            yield from self._streamed_epoch(epoch, shard, start)
            return
        batches = iterate_batches(self.dataset, shard, bs, num_workers=d.num_workers, drop_last=True)
        for i, (images_u8, targets, _) in enumerate(batches, start=start):
            gen = runtime.step_generator(seed, 12, epoch, i, self.rank)
            images, _ = augment_batch(
                runtime.to_device(images_u8, self.device),
                out_size=self.out_size,
                scale=tuple(self.cfg.eval.ft_crop_scale),
                ratio=tuple(d.crop_ratio),
                hflip=d.hflip,
                generator=gen,
            )
            images, targets = normalize(images, self.mean, self.std), runtime.to_device(targets, self.device)
            with runtime.seeded_global_rngs(int(torch.randint(2**62, (1,), generator=gen)), self.device):
                if self.erase is not None:
                    images = self.erase(images)
                if self.mixup is not None:
                    images, targets = self.mixup(images, targets)
            yield images, targets

    def _image_seeds(self, epoch: int, i: int) -> tuple[torch.Generator, torch.Tensor]:
        """Batch ``i``'s generator, advanced past one transform seed per image (B,)."""
        gen = runtime.step_generator(self.cfg.train.seed, 12, epoch, i, self.rank)
        return gen, torch.randint(2**62, (self.cfg.eval.ft_batch_size,), generator=gen)

    def _streamed_epoch(
        self, epoch: int, shard: torch.Tensor, start: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Image folders: MAE's timm transform per full-resolution file, then mixup per batch."""
        bs = self.cfg.eval.ft_batch_size
        data = dataclasses.replace(self.cfg.data, image_size=self.out_size, mean=self.mean, std=self.std)
        plan = (
            (shard[k * bs : (k + 1) * bs], self._image_seeds(epoch, start + k)[1])
            for k in range(len(shard) // bs)
        )
        batches = iterate_finetune(
            self.dataset, plan, finetune_transform(data, self.cfg.eval),
            num_workers=self.cfg.data.num_workers, pin_memory=self.device.type == "cuda",
        )  # fmt: skip
        for i, (images, targets, _) in enumerate(batches, start=start):
            gen, _ = self._image_seeds(epoch, i)
            images, targets = runtime.to_device(images, self.device), runtime.to_device(targets, self.device)
            if self.mixup is not None:
                with runtime.seeded_global_rngs(int(torch.randint(2**62, (1,), generator=gen)), self.device):
                    images, targets = self.mixup(images, targets)
            yield images, targets


def run_finetune(cfg: Config, checkpoint_spec: str, out_dir: str | Path, **run: Any) -> dict[str, Any]:
    """Fine-tune the encoder of ``checkpoint_spec`` on ``cfg.data`` (``eval.ft_*``) and score it on the
    test split: :func:`~semmae.train.classify.train_classifier` with :class:`FinetuneTask`."""
    return train_classifier(FinetuneTask, cfg, checkpoint_spec, out_dir, **run)


class FinetuneTask(ClassifierTask):
    """The classifier's step on augmented, mixed batches."""

    kind = "finetune"
    desc = "finetune"
    nonfinite_hint = "lower eval.ft_base_lr or use train.precision=fp32"

    @staticmethod
    def head(
        cfg: Config, encoder: ViTEncoder, num_classes: int, device: torch.device
    ) -> tuple[nn.Module, dict[str, Any]]:
        e = cfg.eval
        model = build_classifier(
            encoder, num_classes, global_pool=e.ft_global_pool, drop_path_rate=e.ft_drop_path
        )
        return model, {"global_pool": e.ft_global_pool, "drop_path_rate": e.ft_drop_path}

    @staticmethod
    def check_settings(cfg: Config, world: int) -> None:
        check_lr_floor(cfg.eval.ft_min_lr, *cfg.eval.ft_peak_lr(world)[1:])

    @classmethod
    def build(
        cls, cfg: Config, spec: str, parts: ClassifierParts, device: torch.device
    ) -> tuple[FinetuneTask, Plan, torch.optim.Optimizer]:
        e = cfg.eval
        plan = finetune_plan(cfg, len(parts.train), runtime.world_size())
        groups = layer_decay_groups(
            parts.model,
            depth=parts.encoder.depth,
            layer_decay=e.ft_layer_decay,
            weight_decay=e.ft_weight_decay,
        )
        return cls(cfg, spec, parts, plan, device), plan, adamw(groups, plan.peak_lr, (0.9, 0.999))

    def result_fields(self, plan: Plan) -> dict[str, Any]:
        e = self.cfg.eval
        return {
            "eval": "finetune", "lr": plan.peak_lr,
            "layer_decay": e.ft_layer_decay, "effective_batch": plan.effective_batch,
        }  # fmt: skip

    def __init__(
        self, cfg: Config, spec: str, parts: ClassifierParts, plan: Plan, device: torch.device
    ) -> None:
        super().__init__(cfg, spec, parts, device)
        self.data = FinetuneBatches(
            parts.train, cfg, parts.encoder.img_size, **self.norm, device=device,
            num_classes=parts.arch["num_classes"],
        )  # fmt: skip
        self.loss_fn = make_loss(cfg, self.data.mixup)
        self.steps_per_epoch = plan.steps_per_epoch

    def batches(self, epoch: int, start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.data.epoch(epoch, self.steps_per_epoch, start)

    def step(self, net: nn.Module, batch: Any, step: int) -> tuple[torch.Tensor, int]:
        images, targets = batch  # (B, C, S, S) augmented; (B,) ids or (B, classes) soft targets
        with runtime.autocast(self.device, self.cfg.train.precision):
            logits = net(images)
        return self.loss_fn(logits.float(), targets), images.shape[0]
