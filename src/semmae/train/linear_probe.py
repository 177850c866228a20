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
import json
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
from semmae.engine.loop import LoopResult, Plan, Task, TrainLoop, make_plan
from semmae.engine.rundir import prepare_run_dir
from semmae.eval.features import evaluate_classifier, labelled_split
from semmae.eval.linear_mae import FrozenProbe, lars_optimizer, probe_data, probe_plan
from semmae.models.encoder import check_encoder_fits, load_encoder


class LinearProbeTask(Task):
    """Cross-entropy of the probe head on freshly cropped micro-batches of the train split."""

    kind = "linear_probe"
    nonfinite_hint = "lower eval.linear_blr or use train.precision=fp32"

    def __init__(
        self, cfg: Config, spec: str, parts: dict[str, Any], micro_batch: int, device: torch.device
    ) -> None:
        self.cfg, self.spec, self.parts, self.device = cfg, spec, parts, device
        self.model, self.arch = parts["model"], parts["arch"]
        self.norm = {"mean": list(parts["meta"]["mean"]), "std": list(parts["meta"]["std"])}
        data = dataclasses.replace(probe_data(cfg), **self.norm)
        self.data = PretrainBatches(
            parts["train"], data, micro_batch, cfg.train.seed, runtime.rank(), runtime.world_size(), device
        )
        self.loss_fn = nn.CrossEntropyLoss()

    def batches(self, epoch: int, start: int) -> Iterator[Any]:
        return self.data.epoch(epoch, start)

    def step(self, net: nn.Module, batch: Any, step: int) -> tuple[torch.Tensor, int]:
        with runtime.autocast(self.device, self.cfg.train.precision):
            logits = net(batch.images)
        return self.loss_fn(logits.float(), batch.targets.to(self.device)), batch.images.shape[0]

    def extra_state(self) -> dict[str, Any]:
        return {
            "encoder": self.spec,
            "normalization": self.norm,
            "classes": list(self.parts["train"].classes),
        }


def _build(cfg: Config, spec: str, device: torch.device) -> dict[str, Any]:
    encoder, meta = load_encoder(spec, map_location=device)
    check_encoder_fits(encoder, cfg.data.image_size, cfg.data.in_chans)
    train, test = labelled_split(cfg, "train"), labelled_split(cfg, "test")
    dim = int(encoder.arch["embed_dim"])
    model = FrozenProbe(encoder, dim, len(train.classes), feature=cfg.eval.feature).to(device)
    arch = {**encoder.arch, "num_classes": len(train.classes), "feature": cfg.eval.feature}
    return dict(encoder=encoder, meta=meta, train=train, test=test, model=model, arch=arch)


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
        parts = _build(cfg, checkpoint_spec, device)
        e = cfg.eval
        pp = probe_plan(cfg, len(parts["train"]), runtime.world_size())
        plan = make_plan(
            steps_per_epoch=pp.steps_per_epoch, epochs=e.linear_epochs, max_steps=None,
            warmup_epochs=e.linear_warmup_epochs, peak_lr=pp.peak_lr, min_lr=0.0,
            effective_batch=pp.effective_batch, accum=pp.accum_steps,
        )  # fmt: skip
        optimizer = lars_optimizer(parts["model"].head, plan.peak_lr, e.linear_weight_decay)
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
            return early if early is not None else _score(task, plan, result, logger, t0)


def _score(
    task: LinearProbeTask, plan: Plan, result: LoopResult, logger: MetricsLogger, t0: float
) -> dict[str, Any]:
    """Top-1 (and top-5) on the test split under the evaluation view; also written to ``summary.json``."""
    cfg, p, e = task.cfg, task.parts, task.cfg.eval
    scores = evaluate_classifier(
        task.model, p["test"], num_classes=p["arch"]["num_classes"], batch_size=e.batch_size,
        device=task.device, precision=cfg.train.precision, out_size=p["encoder"].img_size,
        num_workers=cfg.data.num_workers, **task.norm,
    )  # fmt: skip
    logger.log(result.step, epoch=e.linear_epochs, **{f"test_{k}": v for k, v in scores.items()})
    out = {
        "eval": "linear", "protocol": "mae", **scores, "checkpoint": task.spec, "dataset": cfg.data.name,
        "feature": e.feature, "out": str(logger.path.parent), "train_loss": result.last_loss,
        "lr": plan.peak_lr, "blr": e.linear_blr, "effective_batch": plan.effective_batch,
        "accum_steps": plan.accum, "optimizer": "lars", "epochs": e.linear_epochs, "steps": result.step,
        "n_train": len(p["train"]), "n_test": len(p["test"]), "seconds": round(time.perf_counter() - t0, 2),
    }  # fmt: skip
    if runtime.is_main():
        (logger.path.parent / "summary.json").write_text(json.dumps(out, indent=2) + "\n")
    return out
