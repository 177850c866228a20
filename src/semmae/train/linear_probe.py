"""MAE's linear probe (``eval.linear_protocol=mae``) as a trainer on the one training loop.

The parts (head, frozen encoder, LARS, batch arithmetic) are :mod:`semmae.eval.linear_mae`'s; this
module plugs them into :class:`~semmae.engine.loop.TrainLoop`, which owns the lr schedule, gradient
accumulation up to ``eval.linear_batch_size``, the non-finite guard, signals, checkpoints and
``--resume``. Every epoch re-crops every train image (RandomResizedCrop ``eval.linear_crop_scale``
+ flip; full-resolution files of image folders are cropped in the loader's workers) through
:class:`~semmae.engine.batches.PretrainBatches`, so batches are a pure function of (seed, epoch,
micro-batch, rank). The probe trains on the whole train split and is scored on the test split
under the evaluation view. The result names its protocol (``"protocol": "mae"``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from semmae import runtime
from semmae.config import Config
from semmae.engine.batches import PretrainBatches
from semmae.engine.loop import LoopResult, Plan, make_plan
from semmae.eval.linear_mae import FrozenProbe, ProbePlan, lars_optimizer, probe_data, probe_plan
from semmae.models.vit_encoder import ViTEncoder
from semmae.train.classify import ClassifierParts, ClassifierTask, Head, train_classifier


class LinearProbeTask(ClassifierTask):
    """Cross-entropy of the probe head on freshly cropped micro-batches of the train split."""

    kind = "linear_probe"
    desc = "linear probe (mae)"
    nonfinite_hint = "lower eval.linear_blr or use train.precision=fp32"

    @staticmethod
    def head(cfg: Config, device: torch.device) -> Head:
        def probe(encoder: ViTEncoder, num_classes: int) -> tuple[nn.Module, dict[str, Any]]:
            model = FrozenProbe(
                encoder, int(encoder.arch["embed_dim"]), num_classes, feature=cfg.eval.feature
            )
            return model.to(device), {"feature": cfg.eval.feature}

        return probe

    @classmethod
    def build(
        cls, cfg: Config, spec: str, parts: ClassifierParts, device: torch.device
    ) -> tuple[LinearProbeTask, Plan, torch.optim.Optimizer]:
        pp = probe_plan(cfg, len(parts.train), runtime.world_size())
        plan = probe_schedule(cfg, pp)
        optimizer = lars_optimizer(parts.model.head, plan.peak_lr, cfg.eval.linear_weight_decay)
        return cls(cfg, spec, parts, pp.micro_batch, device), plan, optimizer

    def result_fields(self, plan: Plan, result: LoopResult) -> tuple[int, dict[str, Any]]:
        e = self.cfg.eval
        return e.linear_epochs, {
            "eval": "linear", "protocol": "mae", "feature": e.feature, "train_loss": result.last_loss,
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


def probe_schedule(cfg: Config, pp: ProbePlan) -> Plan:
    """MAE's probe schedule on the loop: ``eval.linear_warmup_epochs`` of linear warm-up, then a
    half cosine to 0 over ``eval.linear_epochs``, one lr per optimiser step."""
    e = cfg.eval
    return make_plan(
        steps_per_epoch=pp.steps_per_epoch, epochs=e.linear_epochs, max_steps=None,
        warmup_epochs=e.linear_warmup_epochs, peak_lr=pp.peak_lr, min_lr=0.0,
        effective_batch=pp.effective_batch, accum=pp.accum_steps,
    )  # fmt: skip


def run_linear_probe(cfg: Config, checkpoint_spec: str, out_dir: str | Path, **run: Any) -> dict[str, Any]:
    """Train MAE's linear probe (``eval.linear_*``) on the frozen encoder of ``checkpoint_spec`` and score
    it on the test split: :func:`~semmae.train.classify.train_classifier` with :class:`LinearProbeTask`."""
    return train_classifier(LinearProbeTask, cfg, checkpoint_spec, out_dir, **run)
