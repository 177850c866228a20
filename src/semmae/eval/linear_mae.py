"""MAE's linear-probing protocol (``eval.linear_protocol=mae``): the parts a trainer is built from.

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
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from timm.optim import Lars
from torch import nn

from semmae.config import Config, DataConfig
from semmae.errors import ConfigError
from semmae.eval.features import TokenEncoder, pool_tokens

PROTOCOLS = ("fast", "mae")
BN_EPS = 1e-6
HEAD_INIT_STD = 0.01  # a small head: the standardised features start near a uniform prediction
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


@dataclass(frozen=True)
class ProbePlan:
    """Batch arithmetic and lr schedule of one MAE probe run.

    Attributes:
        micro_batch: images per forward per process.
        accum_steps: micro-batches per optimiser step.
        effective_batch: ``micro_batch x accum_steps x world`` (= ``eval.linear_batch_size``).
        steps_per_epoch: optimiser steps per epoch (the last partial batch is dropped).
        peak_lr: ``eval.linear_blr x effective_batch / 256``.
    """

    micro_batch: int
    accum_steps: int
    effective_batch: int
    steps_per_epoch: int
    peak_lr: float


def probe_plan(cfg: Config, num_train: int, world: int) -> ProbePlan:
    """The MAE probe's plan: micro-batch ``min(eval.batch_size, batch / world)``, accumulation to the rest.

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
    return ProbePlan(
        micro_batch=micro,
        accum_steps=e.linear_batch_size // (micro * world),
        effective_batch=e.linear_batch_size,
        steps_per_epoch=steps,
        peak_lr=e.linear_blr * e.linear_batch_size / 256,
    )


def probe_data(cfg: Config) -> DataConfig:
    """The probe's augmentation: RandomResizedCrop (``eval.linear_crop_scale``) + flip, nothing else.

    The returned data section drives :class:`semmae.engine.batches.PretrainBatches` (crops of the
    full-resolution files for image folders, the batched path for in-memory sets), so the probe's
    batches are as reproducible as pretraining's.
    """
    return dataclasses.replace(cfg.data, crop_scale=list(cfg.eval.linear_crop_scale), hflip=True)
