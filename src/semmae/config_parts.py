"""The config's part-learning sections: the part learner's architecture and stage 1's settings.

Split from :mod:`semmae.config_sections` (which re-exports both) because the architecture is also
what :class:`semmae.parts.learner.PartLearner` is built from and what its checkpoints record.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from semmae.config_checks import at_least, check_lr_floor, positive


@dataclass
class PartLearnerArch:
    """The part learner's architecture (DESIGN.md §2.2), less the sizes its backbone fixes.

    The fields of the ``parts`` config section that build :class:`semmae.parts.learner.PartLearner`;
    its checkpoints store them and the backbone's sizes as one flat dict. Paper-silent defaults.

    Attributes:
        num_parts: K (2 <= K <= L).
        tau: correlation temperature (paper-silent default 0.1); ``learn_tau`` makes it a parameter.
        tau_min: floor of a learnable tau (paper-silent default 0.01).
        mlp_hidden: hidden width of the MLP g -> K part tokens (paper-silent default 512).
        center_tokens: subtract each image's mean patch token before the cosine with the part
            tokens (paper-silent default True). ViT patch tokens of one image share a large common
            direction (MAE tokens on toy-parts: mean pairwise cosine 0.98), so uncentred cosines
            hardly differ between locations. The k-means baseline gets the same centring.
        blur_sigma: Gaussian blur of the maps (3x3 kernel); 0 disables it (paper-silent default 1.0).
        blur_padding: ``replicate`` or ``reflect`` border of the blur (paper-silent default
            ``replicate``; either keeps the maps a partition).
        straight_through: feed the decoder the hard (one-hot argmax) partition in the forward
            pass, with the soft maps' gradient (straight-through). Paper-silent default True: with
            soft maps the decoder's instance norms read layout from tiny variations of a
            near-constant map, so the argmax labels need not describe the layout.
        style_dim: width of the style vector w = MLP(g) (paper-silent default 128).
        decoder_channels: width of the first decoder block (halved per upsampling).
        decoder_min_channels: floor of the decoder widths (paper-silent default 16).
        decoder_upsample: ``nearest`` or ``bilinear`` x2 upsampling (paper-silent default nearest).
    """

    num_parts: int = 4
    tau: float = 0.1
    learn_tau: bool = False
    tau_min: float = 0.01
    mlp_hidden: int = 512
    center_tokens: bool = True
    blur_sigma: float = 1.0
    blur_padding: Literal["replicate", "reflect"] = "replicate"
    straight_through: bool = True
    style_dim: int = 128
    decoder_channels: int = 128
    decoder_min_channels: int = 16
    decoder_upsample: Literal["nearest", "bilinear"] = "nearest"

    def learner_arch(self) -> PartLearnerArch:
        """The architecture fields alone (a ``parts`` section holds more)."""
        return PartLearnerArch(**{f.name: getattr(self, f.name) for f in dataclasses.fields(PartLearnerArch)})

    def check(self) -> None:
        """K and the temperatures; raises ConfigError naming the key."""
        at_least("parts", self, 2, "num_parts")
        positive("parts", self, "tau", "tau_min")


@dataclass
class PartsConfig(PartLearnerArch):
    """Stage 1, the semantic part learner (DESIGN.md §2.2). Paper-silent choices are fields.

    The architecture fields are :class:`PartLearnerArch`'s. Run-level settings (device, precision,
    seed, log_every, ckpt_every_steps, progress_bar) come from the ``train`` section.

    Attributes:
        backbone: the frozen encoder: our checkpoint (``.pt``), an official MAE ``.pth``, a timm
            ViT weights file (``.safetensors``/``.pth``) or ``random:<mae preset>`` (for tests).
        global_token: ``cls`` or ``mean`` of patch tokens (paper: the CLS token).
        lambda_div: weight of the diversity loss (paper-silent default 1.0).
        lambda_area: weight of the part-usage (area entropy) term inside the diversity loss
            (paper-silent default 1.0).
        label_source: maps the labels are the argmax of: ``raw`` (the softmax partition) or
            ``blurred`` (what the decoder sees) (paper-silent default ``raw``).
        min_part_share: a part covering less than this share of all locations counts as empty
            in the monitoring metrics (paper-silent default 0.01).
        cache_features: compute backbone features once for the un-augmented images and train on
            the cache (small data; then the reconstruction target is the un-augmented image).
        cache_dtype: ``float16`` or ``float32`` storage of the feature cache.
        epochs, batch_size, lr, weight_decay: the part learner's AdamW optimisation.
        warmup_epochs: linear lr warm-up (fractional epochs allowed) before the cosine.
        min_lr: floor of the cosine schedule.
        max_steps: stop after this many steps (None = epochs decide).
        clip_grad: max gradient norm (None = no clipping).
        export_scale: export labels at the patch grid (1) or x2 finer (2, bilinear maps, argmax).
        eval_limit: test images used for the final part metrics and k-means baseline (None = all).
        eval_kmeans: also score a k-means baseline on the same backbone's patch tokens.
        num_vis: images in the per-epoch grids in ``images/``.
        image_every_epochs: write image grids every N epochs (0 = only at the end).
    """

    backbone: str | None = None
    global_token: Literal["cls", "mean"] = "cls"
    lambda_div: float = 1.0
    lambda_area: float = 1.0
    label_source: Literal["raw", "blurred"] = "raw"
    min_part_share: float = 0.01
    cache_features: bool = True
    cache_dtype: Literal["float16", "float32"] = "float16"
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_epochs: float = 0.0
    min_lr: float = 0.0
    max_steps: int | None = None
    clip_grad: float | None = None
    export_scale: Literal[1, 2] = 1
    eval_limit: int | None = 2000
    eval_kmeans: bool = True
    num_vis: int = 8
    image_every_epochs: int = 1

    def check(self) -> None:
        """The architecture's checks, then the optimisation's; raises ConfigError naming the key."""
        super().check()
        at_least("parts", self, 1, "batch_size", "epochs", "max_steps")
        at_least("parts", self, 0, "lambda_div", "lambda_area")
        check_lr_floor(self.min_lr, self.lr, ("parts.min_lr", "parts.lr"))  # no world size scales it
