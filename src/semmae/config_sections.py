"""The config's sections: typed dataclasses whose fields are the keys, each checking its own values.

A field's annotation is its type and, as a ``Literal``, its choices (read by
:func:`semmae.config_checks.coerce`); each section's ``check()`` holds the rules within the section.
Rules that join sections live in :func:`semmae.config.validate`, the only place.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Literal, get_args

from semmae import names
from semmae.config_checks import (
    at_least,
    check_lr_floor,
    device_name,
    finite_values,
    positive,
    scale_range,
    scaled_lr,
)
from semmae.config_eval import EvalConfig
from semmae.config_parts import PartLearnerArch, PartsConfig
from semmae.errors import ConfigError
from semmae.model_sizes import preset_sizes

__all__ = ["DataConfig", "EvalConfig", "MaskingConfig", "ModelConfig", "PartLearnerArch", "PartsConfig",
           "PipelineConfig", "TrainConfig"]  # fmt: skip


MAX_IMAGE_SIZE = 8192  # pixels a side: far beyond any ViT recipe, before a resize runs out of memory
MAX_WARMUP_EPOCHS = 1e6  # a warm-up in steps must fit an integer


@dataclass
class DataConfig:
    """Which images to train on and how to augment them.

    Attributes:
        name: a dataset of :data:`semmae.names.DatasetName`.
        root: dataset location; for Fashion-MNIST None means: env ``SEMMAE_FASHION_MNIST``, then the
            Debian package path, then a torchvision download.
        limit: use only the first N images of each split (None = all).
        image_size: side of the (square) images fed to the model.
        in_chans: image channels (1 grey, 3 RGB); images are converted to this.
        crop_scale: random-resized-crop area range; ``[1.0, 1.0]`` disables cropping.
        crop_ratio: random-resized-crop aspect-ratio range.
        hflip: random horizontal flip.
        mean: per-channel normalisation mean (length 1 or in_chans).
        std: per-channel normalisation std.
        on_corrupt: what to do with an unreadable image file: ``warn`` (skip it) or ``error``.
        toy_size: number of images per split of the synthetic toy-parts and toy-relations datasets.
        num_workers: DataLoader workers for streamed datasets.
        crop_pct: evaluation view of image folders: short side resized to ``image_size / crop_pct``
            (bicubic), then the centre ``image_size`` square. None = 0.875 (timm/MAE's 256 -> 224).
            Only image folders are read at full resolution; the small sets are stored at their
            training size, which is crop_pct 1.0.
        decode: where pretraining decodes an image folder's JPEGs: ``cpu`` (in the DataLoader
            workers, PIL; MAE's crops pixel for pixel) or ``device`` (the workers read the bytes,
            ``torchvision.io.decode_jpeg`` decodes each batch on the training device: nvJPEG on a
            GPU, for when the CPU cores cannot keep up; see :mod:`semmae.data.device_decode`).
    """

    name: names.DatasetName = "fashion_mnist"
    root: str | None = None
    limit: int | None = None
    image_size: int = 28
    in_chans: int = 1
    crop_scale: list[float] = field(default_factory=lambda: [0.2, 1.0])
    crop_ratio: list[float] = field(default_factory=lambda: [0.75, 1.3333])
    hflip: bool = True
    mean: list[float] = field(default_factory=lambda: [0.2860])
    std: list[float] = field(default_factory=lambda: [0.3530])
    on_corrupt: Literal["warn", "error"] = "warn"
    toy_size: int = 2000
    num_workers: int = 0
    crop_pct: float | None = None
    decode: Literal["cpu", "device"] = "cpu"

    def check(self) -> None:
        """Ranges and lengths of the data fields; raises ConfigError naming the key."""
        at_least("data", self, 1, "image_size", "limit")
        if self.image_size > MAX_IMAGE_SIZE:
            raise ConfigError(
                f"config key 'data.image_size' must be at most {MAX_IMAGE_SIZE} (pixels a side), got {self.image_size}"
            )
        at_least("data", self, 0, "num_workers")
        if self.in_chans not in (1, 3):
            raise ConfigError(f"config key 'data.in_chans' must be 1 (grey) or 3 (RGB), got {self.in_chans}")
        finite_values("data.std", self.std, positive=True)  # it divides
        finite_values("data.mean", self.mean)
        scale_range("data.crop_scale", self.crop_scale)
        lo, hi = self.crop_ratio if len(self.crop_ratio) == 2 else (-1.0, -1.0)
        if not 0.0 < lo <= hi < math.inf:
            raise ConfigError(
                f"config key 'data.crop_ratio' must be [lo, hi] with 0 < lo <= hi (e.g. [0.75, 1.3333]), "
                f"got {self.crop_ratio}"
            )
        if self.name == "image_folder" and not self.root:
            raise ConfigError(
                "data.name=image_folder needs data.root=DIR (a folder of images, or of class subfolders)"
            )
        if self.decode == "device" and self.name != "image_folder":
            raise ConfigError(
                "config key 'data.decode=device' decodes image-folder files; this dataset is in memory"
            )
        if len(self.mean) not in (1, self.in_chans) or len(self.std) != len(self.mean):
            raise ConfigError("config keys 'data.mean' and 'data.std' need 1 or data.in_chans values each")
        pct = self.crop_pct
        if pct is not None and not 0.0 < pct <= 1.0:
            raise ConfigError(f"config key 'data.crop_pct' must be in (0, 1] (e.g. 0.875), got {pct}")
        if pct is not None and pct != 1.0 and self.name != "image_folder":
            raise ConfigError(
                f"config key 'data.crop_pct' applies to image folders only ({self.name} is stored at "
                "its training size); leave it unset"
            )


@dataclass
class ModelConfig:
    """The MAE. ``name`` picks a preset (:data:`semmae.names.ModelPreset`); any field set here overrides it.

    ``img_size`` and ``in_chans`` default to the data's.
    """

    name: names.ModelPreset = "mae_fmnist_tiny"
    patch_size: int | None = None
    embed_dim: int | None = None
    depth: int | None = None
    num_heads: int | None = None
    decoder_embed_dim: int | None = None
    decoder_depth: int | None = None
    decoder_num_heads: int | None = None
    mlp_ratio: float | None = None
    norm_pix_loss: bool = True

    def check(self) -> None:
        """Sizes set here are positive (that the patch size divides the image size is a cross-section
        rule), the decoder may have no blocks, the MLP ratio is positive and finite, and each width,
        the preset's where unset, splits into its heads and its sin-cos position embedding."""
        sizes = ("patch_size", "embed_dim", "depth", "num_heads", "decoder_embed_dim", "decoder_num_heads")
        at_least("model", self, 1, *sizes)
        at_least("model", self, 0, "decoder_depth")
        positive("model", self, "mlp_ratio")
        preset = preset_sizes(self.name)
        for width, heads in (("embed_dim", "num_heads"), ("decoder_embed_dim", "decoder_num_heads")):
            dim = getattr(self, width) or preset[width]
            count = getattr(self, heads) or preset[heads]
            if dim % count:
                raise ConfigError(
                    f"model.{width} ({dim}) must be divisible by model.{heads} ({count}); "
                    f"e.g. model.{heads}={max(1, dim // 64)} with 64-wide heads"
                )
            if dim % 4:
                raise ConfigError(
                    f"model.{width} must be divisible by 4 (the 2-D sin-cos position embedding), got {dim}"
                )


@dataclass
class MaskingConfig:
    """How patches are hidden.

    Attributes:
        name: the strategy: ``random``, ``block`` or ``semantic``.
        ratio: share of patches hidden, in (0, 1).
        min_block: smallest block (in patches) for ``block`` masking.
        schedule: λ schedule of ``semantic`` (:func:`semmae.masking.schedule.lambda_schedule`).
        gamma: exponent of the ``power`` / ``reversed`` schedules.
        step_per: advance λ per ``step`` or per ``epoch`` (as the paper's code).
        parts: part-map file (``.npy`` with its manifest) for the training split.
    """

    name: names.MaskingName = "random"
    ratio: float = 0.75
    min_block: int = 4
    schedule: names.ScheduleName = "power"
    gamma: float = 2.0
    step_per: names.ProgressUnit = "step"
    parts: str | None = None

    def check(self) -> None:
        """The masking ratio is a share of the patches."""
        if not 0.0 < self.ratio < 1.0:
            raise ConfigError(f"config key 'masking.ratio' must be in (0, 1), got {self.ratio}")

    def part_map_file(self) -> str | None:
        """The part-map file a pretraining run reads: ``parts`` for ``semantic``, None otherwise.

        Not a load-time rule: pipelines and studies fill ``parts`` per stage.

        Raises:
            ConfigError: ``semantic`` without ``parts``.
        """
        if self.name != "semantic":
            return None
        if self.parts is None:
            raise ConfigError(
                "masking.name=semantic needs a part-map file: set masking.parts=FILE.npy "
                "(from `semmae parts export` or `semmae parts from-masks`)"
            )
        return self.parts


@dataclass
class TrainConfig:
    """The pretraining recipe (MAE's: AdamW (0.9, 0.95), wd 0.05, lr = base_lr × batch / 256).

    Attributes:
        epochs: passes over the data.
        max_steps: stop after this many optimiser steps (None = epochs decide).
        batch_size: images per optimiser step per process (before accumulation).
        accum_steps: gradient-accumulation steps; effective batch = batch × accum × world size.
        base_lr: learning rate at effective batch 256.
        min_lr: floor of the cosine schedule.
        warmup_epochs: linear warm-up length (fractional epochs allowed).
        weight_decay: AdamW decay (not on biases, norms, tokens, position embeddings).
        precision: ``fp32`` or ``bf16`` (autocast).
        seed: seeds data order, augmentation and masks; a resumed run repeats them exactly.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N``.
        log_every: write a metrics line every N steps.
        ckpt_every_steps: also checkpoint every N steps (0 = only at epoch ends).
        keep_every_epochs: keep a periodic ``checkpoints/epoch_0010.pt`` (4-digit epoch) every N epochs (0 = never).
        image_every_epochs: write reconstruction grids every N epochs (0 = never, end always).
        knn_every_epochs: run the kNN monitor every N epochs (0 = only at the end, -1 = never).
        knn_train: train images used by the kNN monitor.
        knn_test: test images used by the kNN monitor.
        clip_grad: max gradient norm (None = no clipping).
        progress_bar: show a tqdm bar.
        compile: ``torch.compile`` the model for training (pays on GPUs; off by default, as on CPUs
            compiling costs minutes and gains little).
    """

    epochs: int = 1
    max_steps: int | None = None
    batch_size: int = 128
    accum_steps: int = 1
    base_lr: float = 1.5e-4
    min_lr: float = 0.0
    warmup_epochs: float = 0.0
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    precision: Literal["fp32", "bf16"] = "fp32"
    seed: int = 0
    device: str = "auto"
    log_every: int = 20
    ckpt_every_steps: int = 200
    keep_every_epochs: int = 0
    image_every_epochs: int = 1
    knn_every_epochs: int = 0
    knn_train: int = 5000
    knn_test: int = 1000
    clip_grad: float | None = None
    progress_bar: bool = True
    compile: bool = False

    def check(self) -> None:
        """Counts and lengths of the pretraining recipe; raises ConfigError naming the key."""
        at_least("train", self, 1, "batch_size", "accum_steps", "log_every", "max_steps")
        at_least("train", self, 0, "epochs", "ckpt_every_steps", "warmup_epochs", "min_lr", "weight_decay")
        at_least("train", self, 0, "keep_every_epochs", "image_every_epochs")
        at_least("train", self, 1, "knn_train", "knn_test")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(
                f"config key 'train.betas' must be two AdamW betas in [0, 1) (MAE's [0.9, 0.95]), got {self.betas}"
            )
        at_least("train", self, -1, "knn_every_epochs")
        positive("train", self, "base_lr", "clip_grad")
        if self.warmup_epochs > MAX_WARMUP_EPOCHS:
            raise ConfigError(
                f"config key 'train.warmup_epochs' must be at most {MAX_WARMUP_EPOCHS:g} (MAE warms up for 40 "
                f"of 800 epochs), got {self.warmup_epochs:g}"
            )
        device_name("train.device", self.device)
        if not 0 <= self.seed < 2**63:  # torch.manual_seed takes a 64-bit integer
            raise ConfigError(f"config key 'train.seed' must be in [0, 2**63), got {self.seed}")

    def peak_lr(self, world: int) -> tuple[int, float, tuple[str, str]]:
        """Effective batch and peak lr on ``world`` ranks, and (for errors) the settings they come from."""
        eff = self.batch_size * self.accum_steps * world
        return (
            eff,
            scaled_lr(self.base_lr, eff),
            ("train.min_lr", f"train.base_lr={self.base_lr:g} x effective batch {eff} / 256"),
        )

    def check_pretraining(self, world: int | None = None) -> None:
        """The rules of the commands that pretrain (pretrain, pipeline, study), before torch loads.

        Something to train, and ``min_lr`` under the peak lr on ``world`` ranks (None: torchrun's
        ``WORLD_SIZE``, else 1). Not part of :meth:`check`: evaluation and part learning read their
        own epochs and lr, and a shared recipe may set ``train.epochs: 0``.

        Raises:
            ConfigError: ``train.epochs`` is 0 and ``train.max_steps`` unset, or ``min_lr`` is above the peak.
        """
        if self.epochs == 0 and self.max_steps is None:
            raise ConfigError(
                "nothing to train: train.epochs is 0 and train.max_steps unset; set either to >= 1"
            )
        world = int(os.environ.get("WORLD_SIZE", 1)) if world is None else world
        check_lr_floor(self.min_lr, *self.peak_lr(world)[1:])


@dataclass
class PipelineConfig:
    """The one-command pipeline and the masking study.

    Attributes:
        stages: which stages of :data:`semmae.names.PipelineStage` run (always in that order).
        seeds: seeds of the masking study.
        study_methods: masking variants compared by ``semmae study``
            (:data:`semmae.names.StudyMethod`).
    """

    stages: list[names.PipelineStage] = field(default_factory=lambda: list(get_args(names.PipelineStage)))
    seeds: list[int] = field(default_factory=lambda: [0])
    study_methods: list[names.StudyMethod] = field(
        default_factory=lambda: ["random", "block", "semantic", "intra", "inter", "reversed"]
    )

    def check(self) -> None:
        """Each stage, seed and method at most once (a repeat would run and count twice), and one at least."""
        for name in ("stages", "seeds", "study_methods"):
            values = getattr(self, name)
            if not values:
                raise ConfigError(f"config key 'pipeline.{name}' must list at least one value")
            if len(set(values)) != len(values):
                raise ConfigError(f"config key 'pipeline.{name}' lists a value twice: {values}")
        if not all(0 <= seed < 2**63 for seed in self.seeds):  # each becomes a run's train.seed
            raise ConfigError(f"config key 'pipeline.seeds' must hold seeds in [0, 2**63), got {self.seeds}")
