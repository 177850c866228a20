"""MAE's linear probe (``eval.linear_protocol=mae``) as a trainer on the one training loop.

He et al. 2022, appendix A.1 (Table 10): a linear classifier on the frozen encoder's class token,
preceded by a BatchNorm without affine parameters (eps 1e-6: it only standardises the features),
trained with LARS (momentum 0.9, weight decay 0) at lr = blr x batch / 256 (blr 0.1, batch 16384,
reached by gradient accumulation where memory demands), 90 epochs of which 10 warm up, then a
cosine; every epoch sees a new RandomResizedCrop + flip of every train image, and the score is
top-1 on the held-out split under the evaluation view. The fast protocol beside it
(``eval.linear_protocol=fast``, :mod:`semmae.eval.linear`) fits an lr grid on cached features.

LARS is timm's (``timm.optim.Lars``, trust coefficient 0.001): the weight matrix is always
adapted by its trust ratio (``always_adapt``, since with weight decay 0 timm would otherwise skip
it), the bias is not, as in MAE's probe.

:class:`~semmae.engine.loop.TrainLoop` owns the lr schedule, gradient accumulation up to
``eval.linear_batch_size``, the non-finite guard, signals, checkpoints and ``--resume``. The crops
(``eval.linear_crop_scale``; full-resolution files of image folders are cropped in the loader's
workers) come from :class:`~semmae.engine.batches.PretrainBatches`, so batches are a pure function
of (seed, epoch, micro-batch, rank). The result names its protocol (``"protocol": "mae"``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from timm.optim import Lars
from torch import nn

from semmae import runtime
from semmae.config import Config, DataConfig
from semmae.config_checks import scaled_lr
from semmae.engine.batches import PretrainBatches
from semmae.engine.schedule import Plan, make_plan
from semmae.errors import ConfigError
from semmae.eval.features import TokenEncoder, pool_tokens
from semmae.eval.linear import BN_EPS, HEAD_INIT_STD
from semmae.models.vit_encoder import ViTEncoder
from semmae.train.classify import ClassifierParts, ClassifierTask, train_classifier

MOMENTUM = 0.9


class ProbeHead(nn.Module):
    """``Linear(BatchNorm1d(D, affine=False, eps=1e-6)(features))``: (B, D) -> (B, num_classes)."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(dim, affine=False, eps=BN_EPS)
        self.linear = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.linear.weight, std=HEAD_INIT_STD)
        nn.init.zeros_(self.linear.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm(features))


class FrozenProbe(nn.Module):
    """A frozen encoder's pooled token (CLS by default) through a :class:`ProbeHead`.

    The encoder never trains: its parameters need no gradient, it runs under ``no_grad`` and stays
    in eval mode whatever ``train()`` is called with (only the head's BatchNorm statistics move).

    Args:
        encoder: module with ``forward_features(images (B, C, S, S)) -> (B, 1 + L, D)``.
        dim: D.
        num_classes: classes of the probe.
        feature: ``cls`` (MAE) or ``mean``.
    """

    def __init__(self, encoder: TokenEncoder, dim: int, num_classes: int, feature: str = "cls") -> None:
        super().__init__()
        self.encoder = encoder
        self.encoder.requires_grad_(False)  # type: ignore[attr-defined]
        self.head = ProbeHead(dim, num_classes)
        self.feature = feature

    def train(self, mode: bool = True) -> FrozenProbe:
        super().train(mode)
        self.encoder.eval()  # type: ignore[attr-defined]
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, S, S) normalised images -> (B, num_classes) logits."""
        with torch.no_grad():
            features = pool_tokens(self.encoder.forward_features(images), self.feature)
        return self.head(features.float())


def lars_optimizer(head: ProbeHead, lr: float, weight_decay: float = 0.0) -> Lars:
    """timm LARS over the head: the weight adapted by its trust ratio, the bias plain SGD-momentum."""
    groups = [
        {"params": [head.linear.weight], "weight_decay": weight_decay, "always_adapt": True},
        {"params": [head.linear.bias], "weight_decay": 0.0, "always_adapt": False},
    ]
    return Lars(groups, lr=lr, momentum=MOMENTUM, weight_decay=weight_decay)


def probe_plan(cfg: Config, num_train: int, world: int) -> Plan:
    """The MAE probe's plan on the loop: micro-batches of ``min(eval.batch_size, batch / world)``
    accumulated to the effective batch ``eval.linear_batch_size``, peak lr ``eval.linear_blr`` x
    batch / 256, ``eval.linear_warmup_epochs`` of linear warm-up then a half cosine to 0 over
    ``eval.linear_epochs`` (the last partial batch of an epoch is dropped).

    Raises:
        ConfigError: ``eval.linear_batch_size`` is not a multiple of the micro-batch x world, or
            the train split holds less than one effective batch.
    """
    e = cfg.eval
    micro = max(1, min(e.batch_size, e.linear_batch_size // world))
    if e.linear_batch_size % (micro * world):
        raise ConfigError(
            f"eval.linear_batch_size {e.linear_batch_size} must be a multiple of eval.batch_size ({micro}) "
            f"x {world} process(es); change either"
        )
    steps = num_train // e.linear_batch_size
    if steps < 1:
        raise ConfigError(
            f"one MAE-probe step needs eval.linear_batch_size={e.linear_batch_size} images but the train "
            f"split has {num_train}; lower eval.linear_batch_size"
        )
    return make_plan(
        steps_per_epoch=steps, epochs=e.linear_epochs, max_steps=None,
        warmup_epochs=e.linear_warmup_epochs, peak_lr=scaled_lr(e.linear_blr, e.linear_batch_size), min_lr=0.0,
        effective_batch=e.linear_batch_size, accum=e.linear_batch_size // (micro * world),
    )  # fmt: skip


def probe_data(cfg: Config) -> DataConfig:
    """The probe's augmentation: RandomResizedCrop (``eval.linear_crop_scale``) + flip, nothing else."""
    return dataclasses.replace(cfg.data, crop_scale=list(cfg.eval.linear_crop_scale), hflip=True)


class LinearProbeTask(ClassifierTask):
    """Cross-entropy of the probe head on freshly cropped micro-batches of the train split."""

    kind = "linear_probe"
    desc = "linear probe (mae)"
    nonfinite_hint = "lower eval.linear_blr or use train.precision=fp32"

    @staticmethod
    def head(
        cfg: Config, encoder: ViTEncoder, num_classes: int, device: torch.device
    ) -> tuple[nn.Module, dict[str, Any]]:
        model = FrozenProbe(encoder, int(encoder.arch["embed_dim"]), num_classes, feature=cfg.eval.feature)
        return model.to(device), {"feature": cfg.eval.feature}

    @classmethod
    def build(
        cls, cfg: Config, spec: str, parts: ClassifierParts, device: torch.device
    ) -> tuple[LinearProbeTask, Plan, torch.optim.Optimizer]:
        world = runtime.world_size()
        plan = probe_plan(cfg, len(parts.train), world)
        optimizer = lars_optimizer(parts.model.head, plan.peak_lr, cfg.eval.linear_weight_decay)
        return cls(cfg, spec, parts, plan.effective_batch // (plan.accum * world), device), plan, optimizer

    def result_fields(self, plan: Plan) -> dict[str, Any]:
        e = self.cfg.eval
        return {
            "eval": "linear", "protocol": "mae", "feature": e.feature,
            "lr": plan.peak_lr, "blr": e.linear_blr, "effective_batch": plan.effective_batch,
            "accum_steps": plan.accum, "optimizer": "lars",
        }  # fmt: skip

    def __init__(
        self, cfg: Config, spec: str, parts: ClassifierParts, micro_batch: int, device: torch.device
    ) -> None:
        super().__init__(cfg, spec, parts, device)
        data = dataclasses.replace(probe_data(cfg), **self.norm)
        self.data = PretrainBatches(
            parts.train, data, micro_batch, cfg.train.seed, runtime.rank(), runtime.world_size(), device
        )
        self.loss_fn = nn.CrossEntropyLoss()

    def batches(self, epoch: int, start: int) -> Iterator[Any]:
        return self.data.epoch(epoch, start)

    def step(self, net: nn.Module, batch: Any, step: int) -> tuple[torch.Tensor, int]:
        with runtime.autocast(self.device, self.cfg.train.precision):
            logits = net(batch.images)
        return self.loss_fn(logits.float(), batch.targets.to(self.device)), batch.images.shape[0]


def run_linear_probe(cfg: Config, checkpoint_spec: str, out_dir: str | Path, **run: Any) -> dict[str, Any]:
    """Train MAE's linear probe (``eval.linear_*``) on the frozen encoder of ``checkpoint_spec`` and score
    it on the test split: :func:`~semmae.train.classify.train_classifier` with :class:`LinearProbeTask`."""
    return train_classifier(LinearProbeTask, cfg, checkpoint_spec, out_dir, **run)
