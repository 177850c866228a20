"""The config's evaluation section: kNN, the linear probes and fine-tuning (``eval.*``).

Split from :mod:`semmae.config_sections` (which re-exports it), as :mod:`semmae.config_parts` is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from semmae import names
from semmae.config_checks import (
    at_least,
    augment_policy,
    finite_values,
    fractions,
    positive,
    scale_range,
    scaled_lr,
)
from semmae.errors import ConfigError


@dataclass
class EvalConfig:
    """Frozen-feature and fine-tuning evaluation (device, precision and seed come from ``train``).

    Attributes:
        knn_k, knn_t: weighted kNN neighbours and temperature (DINO's 20 and 0.07).
        knn_chunk_size: test queries per similarity matrix (memory: chunk x N_train floats).
        feature: ``cls`` or ``mean`` (of patch tokens after the final norm).
        batch_size: images per forward when extracting features or evaluating a classifier.
        linear_epochs, linear_lrs, linear_batch_size, linear_val_frac: the linear probe's lr grid,
            trained in one pass; the lr with the best accuracy on the held-out share of train wins.
        linear_optimizer: ``sgd`` (momentum 0.9; small-batch stand-in for MAE's LARS) or ``adamw``.
        linear_weight_decay: decay of the probe (MAE: 0).
        linear_warmup_epochs: linear lr warm-up before the cosine.
        ft_*: fine-tuning recipe: epochs, batch per process, base lr (x batch / 256), min lr,
            warm-up, layer decay, weight decay, drop path, mixup/cutmix alphas (0 and 0 turn
            mixing off), label smoothing, random-erasing probability, global pool (``avg``/``token``).
        ft_crop_scale: the fine-tune random-resized-crop area range (MAE: [0.08, 1]); never taken
            from ``data.crop_scale``, which is pretraining's.
        ft_auto_augment: timm RandAugment spec of the fine-tune transform for image folders
            (MAE: ``rand-m9-mstd0.5-inc1``; empty = none).
        linear_protocol: ``fast`` (the lr grid on cached centre-crop features above) or ``mae``
            (MAE's probe: RandomResizedCrop + flip every epoch, BatchNorm(affine=False) + linear
            head on the frozen CLS token, LARS, lr = ``linear_blr`` x batch / 256, trained on the
            whole train split, scored on test). With ``mae``, ``linear_batch_size`` is the
            effective batch over all processes, reached by accumulating micro-batches of
            ``batch_size``; ``linear_epochs``, ``linear_warmup_epochs`` and ``linear_weight_decay``
            apply to both protocols.
        linear_blr: base lr of the ``mae`` probe (MAE: 0.1 at batch 16384).
        linear_crop_scale: random-resized-crop area range of the ``mae`` probe (MAE: [0.08, 1]).
    """

    knn_k: int = 20
    knn_t: float = 0.07
    knn_chunk_size: int = 1024
    feature: names.FeatureName = "cls"
    batch_size: int = 256
    linear_epochs: int = 30
    linear_lrs: list[float] = field(default_factory=lambda: [0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0])
    linear_batch_size: int = 256
    linear_val_frac: float = 0.1
    linear_optimizer: names.ProbeOptimizer = "sgd"
    linear_weight_decay: float = 0.0
    linear_warmup_epochs: float = 1.0
    ft_epochs: int = 5
    ft_batch_size: int = 128
    ft_base_lr: float = 5e-4
    ft_layer_decay: float = 0.65
    ft_weight_decay: float = 0.05
    ft_drop_path: float = 0.1
    ft_mixup: float = 0.8
    ft_cutmix: float = 1.0
    ft_label_smoothing: float = 0.1
    ft_warmup_epochs: float = 1.0
    ft_min_lr: float = 1e-6
    ft_reprob: float = 0.25
    ft_global_pool: names.GlobalPool = "avg"
    ft_crop_scale: list[float] = field(default_factory=lambda: [0.08, 1.0])
    ft_auto_augment: str = "rand-m9-mstd0.5-inc1"
    linear_protocol: Literal["fast", "mae"] = "fast"
    linear_blr: float = 0.1
    linear_crop_scale: list[float] = field(default_factory=lambda: [0.08, 1.0])

    def check(self) -> None:
        """Counts, crop ranges and the probe's lr; raises ConfigError naming the key."""
        sizes = ("knn_k", "knn_chunk_size", "batch_size", "linear_batch_size", "linear_epochs")
        at_least("eval", self, 1, *sizes, "ft_batch_size", "ft_epochs")
        scale_range("eval.ft_crop_scale", self.ft_crop_scale)
        scale_range("eval.linear_crop_scale", self.linear_crop_scale)
        positive("eval", self, "linear_blr", "knn_t", "ft_base_lr")
        at_least("eval", self, 0, "linear_weight_decay", "linear_warmup_epochs", "ft_weight_decay",
                 "ft_warmup_epochs", "ft_min_lr", "ft_mixup", "ft_cutmix")  # fmt: skip
        fractions("eval", self, "ft_drop_path", "ft_label_smoothing", "linear_val_frac")
        fractions("eval", self, "ft_reprob", one=True)
        augment_policy("eval.ft_auto_augment", self.ft_auto_augment)
        if not self.linear_lrs:
            raise ConfigError("config key 'eval.linear_lrs' must list at least one learning rate")
        finite_values("eval.linear_lrs", self.linear_lrs, positive=True)

    def ft_peak_lr(self, world: int) -> tuple[int, float, tuple[str, str]]:
        """Fine-tuning's effective batch and peak lr on ``world`` ranks, and (for errors) their settings."""
        eff = self.ft_batch_size * world
        return (
            eff,
            scaled_lr(self.ft_base_lr, eff),
            ("eval.ft_min_lr", f"eval.ft_base_lr={self.ft_base_lr:g} x effective batch {eff} / 256"),
        )
