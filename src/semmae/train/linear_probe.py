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
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from semmae import runtime
from semmae.config import Config
from semmae.engine.batches import PretrainBatches
from semmae.engine.logging import MetricsLogger
from semmae.engine.loop import LoopResult, Plan, TrainLoop, make_plan
from semmae.engine.rundir import prepare_run_dir
from semmae.eval.linear_mae import FrozenProbe, ProbePlan, lars_optimizer, probe_data, probe_plan
from semmae.models.vit_encoder import ViTEncoder
from semmae.train.classify import ClassifierParts, ClassifierTask, Head, load_classifier, score_on_test


class LinearProbeTask(ClassifierTask):
    """Cross-entropy of the probe head on freshly cropped micro-batches of the train split."""

    kind = "linear_probe"
    nonfinite_hint = "lower eval.linear_blr or use train.precision=fp32"

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


def _probe_head(cfg: Config, device: torch.device) -> Head:
    def head(encoder: ViTEncoder, num_classes: int) -> tuple[nn.Module, dict[str, Any]]:
        probe = FrozenProbe(encoder, int(encoder.arch["embed_dim"]), num_classes, feature=cfg.eval.feature)
        return probe.to(device), {"feature": cfg.eval.feature}

    return head


def run_linear_probe(
    cfg: Config,
    checkpoint_spec: str,
    out_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    stop_at_step: int | None = None,
) -> dict[str, Any]:
    """Train MAE's linear probe on the frozen encoder of ``checkpoint_spec``; score it on the test split.

    Writes a run directory (``config.yaml``, ``metrics.jsonl``, ``checkpoints/last.pt`` of kind
    ``linear_probe``, ``summary.json``); runs under torchrun with DDP.

    Args:
        cfg: resolved config (``data``, ``eval.linear_*``, ``eval.batch_size`` (micro-batch),
            ``eval.feature``, ``train.device/precision/seed/log_every/ckpt_every_steps``).
        checkpoint_spec: the encoder (see :func:`~semmae.models.encoder.load_encoder`).
        out_dir: the run directory.
        resume, overwrite: as every training command.
        progress: show a progress bar (also needs ``train.progress_bar``).
        stop_at_step: checkpoint and return after this step, as if interrupted.

    Returns:
        ``{"eval": "linear", "protocol": "mae", "top1", ["top5"], "lr", "blr", "effective_batch",
        "epochs", "steps", ...}``; an interrupted run returns ``{"interrupted", "step", "out"}``.
    """
    device = runtime.resolve_device(cfg.train.device)
    with runtime.distributed_session(device):
        t0 = time.perf_counter()
        run_dir = prepare_run_dir(out_dir, cfg, resume=resume, overwrite=overwrite)
        runtime.seed_everything(cfg.train.seed + runtime.rank())
        parts = load_classifier(cfg, checkpoint_spec, device, _probe_head(cfg, device), t0)
        e = cfg.eval
        pp = probe_plan(cfg, len(parts.train), runtime.world_size())
        plan = probe_schedule(cfg, pp)
        optimizer = lars_optimizer(parts.model.head, plan.peak_lr, e.linear_weight_decay)
        task = LinearProbeTask(cfg, checkpoint_spec, parts, pp.micro_batch, device)
        with MetricsLogger(run_dir) as logger:
            loop = TrainLoop(
                task, plan, optimizer, run_dir, logger, config=cfg.to_dict(), train=cfg.train, device=device,
                desc="linear probe (mae)", show_bar=progress,
            )  # fmt: skip
            if resume:
                loop.resume()
            result = loop.run(stop_at_step)
            early = result.early_summary(run_dir)
            return early if early is not None else _score(task, plan, result, logger)


def _score(task: LinearProbeTask, plan: Plan, result: LoopResult, logger: MetricsLogger) -> dict[str, Any]:
    """The test-split score under the evaluation view, with the probe's settings."""
    e = task.cfg.eval
    return score_on_test(task, result, logger, e.linear_epochs, {
        "eval": "linear", "protocol": "mae", "feature": e.feature, "train_loss": result.last_loss,
        "lr": plan.peak_lr, "blr": e.linear_blr, "effective_batch": plan.effective_batch,
        "accum_steps": plan.accum, "optimizer": "lars",
    })  # fmt: skip
