"""End-to-end fine-tuning of an encoder as a classifier (MAE's recipe, DESIGN.md §2.4).

The classifier is :func:`~semmae.models.vit.build_classifier` (timm ViT, global average pool,
drop path). Optimiser: AdamW (0.9, 0.999) at lr = ``ft_base_lr`` x effective batch / 256 with
layer-wise lr decay ``ft_layer_decay`` (:func:`~semmae.models.vit.layer_decay_groups`: embeddings
lowest, head highest; no weight decay on biases, norms, the CLS token or the positions). Per-step
linear warm-up then cosine to ``ft_min_lr``. Regularisation: random resized crop + flip
(``semmae.data.transforms.augment_batch``), timm ``Mixup``/CutMix with label smoothing
(``SoftTargetCrossEntropy``; plain label-smoothed cross-entropy when both alphas are 0) and timm
random erasing. Not included: RandAugment (MAE uses (9, 0.5)).

Reproducibility: data order, crops, mixing and erasing are a pure function of (seed, epoch,
batch, rank). timm's Mixup and RandomErasing draw from the global Python/NumPy/torch generators,
so they run inside a block that seeds those from the batch key and restores them afterwards.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from semmae import runtime
from semmae.config import Config
from semmae.engine.logging import MetricsLogger
from semmae.engine.rundir import prepare_run_dir
from semmae.engine.schedule import set_lr, warmup_cosine
from semmae.engine.signals import StopRequest
from semmae.errors import CheckpointError, ConfigError, RunDirError
from semmae.eval.features import evaluate_classifier, labelled_split
from semmae.models.checkpoint import (
    load_checkpoint,
    load_state_strict,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from semmae.models.vit import layer_decay_groups

log = logging.getLogger(__name__)


def make_mixup(cfg: Config, num_classes: int) -> Any | None:
    """timm ``Mixup`` from ``eval.ft_mixup/ft_cutmix/ft_label_smoothing``; None when both alphas are 0."""
    e = cfg.eval
    if e.ft_mixup <= 0 and e.ft_cutmix <= 0:
        return None
    if e.ft_batch_size % 2:
        raise ConfigError(f"mixup/cutmix need an even eval.ft_batch_size, got {e.ft_batch_size}")
    from timm.data import Mixup

    return Mixup(
        mixup_alpha=e.ft_mixup,
        cutmix_alpha=e.ft_cutmix,
        label_smoothing=e.ft_label_smoothing,
        num_classes=num_classes,
    )


def make_loss(cfg: Config, mixup: Any | None) -> nn.Module:
    """Soft-target cross-entropy after mixup, else cross-entropy with label smoothing."""
    if mixup is not None:
        from timm.loss import SoftTargetCrossEntropy

        return SoftTargetCrossEntropy()
    return nn.CrossEntropyLoss(label_smoothing=cfg.eval.ft_label_smoothing)


@contextlib.contextmanager
def seeded_global_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Seed Python/NumPy/torch global generators with ``seed`` inside the block, restore after."""
    py_state, np_state = random.getstate(), np.random.get_state()
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def train_step(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    *,
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    device: torch.device,
    precision: str = "fp32",
) -> torch.Tensor:
    """One optimiser step on a ready batch; returns the detached loss (no host sync).

    Args:
        model: the classifier (possibly DDP-wrapped), in train mode.
        images: (B, C, S, S) normalised, augmented images on ``device``.
        targets: (B,) class ids, or (B, C) soft targets after mixup.
        optimizer: its param groups already carry this step's lr.
        loss_fn: maps (logits (B, C) float32, targets) to a scalar.
        device, precision: autocast settings.
    """
    with runtime.autocast(device, precision):
        logits = model(images)
    loss = loss_fn(logits.float(), targets)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


@dataclass
class FinetunePlan:
    """Step arithmetic of a fine-tune (counts per rank)."""

    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    peak_lr: float
    effective_batch: int


def make_plan(cfg: Config, num_train: int, world: int) -> FinetunePlan:
    """Steps, warm-up and peak lr from ``cfg.eval`` and the training-set size."""
    e = cfg.eval
    per_epoch = num_train // (e.ft_batch_size * world)
    if per_epoch < 1:
        raise ConfigError(
            f"one fine-tuning step needs {e.ft_batch_size * world} images but the data has "
            f"{num_train}; lower eval.ft_batch_size or raise data.limit"
        )
    if e.ft_epochs < 1:
        raise ConfigError(f"config key 'eval.ft_epochs' must be at least 1, got {e.ft_epochs}")
    eff = e.ft_batch_size * world
    return FinetunePlan(
        per_epoch,
        e.ft_epochs * per_epoch,
        round(e.ft_warmup_epochs * per_epoch),
        e.ft_base_lr * eff / 256.0,
        eff,
    )


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
            from timm.data.random_erasing import RandomErasing

            self.erase = RandomErasing(cfg.eval.ft_reprob, mode="pixel", max_count=1, device=str(device))

    def epoch(
        self, epoch: int, per_epoch: int, start: int = 0
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches ``start .. per_epoch - 1`` of ``epoch``: ``(images, targets or soft targets)``."""
        from semmae.data import iterate_batches
        from semmae.data.transforms import augment_batch, normalize

        bs, seed, d = self.cfg.eval.ft_batch_size, self.cfg.train.seed, self.cfg.data
        perm = torch.randperm(len(self.dataset), generator=runtime.step_generator(seed, 11, epoch))
        shard = perm[: per_epoch * bs * self.world][self.rank :: self.world][start * bs :]
        batches = iterate_batches(self.dataset, shard, bs, num_workers=d.num_workers, drop_last=True)
        for i, (images_u8, targets, _) in enumerate(batches, start=start):
            gen = runtime.step_generator(seed, 12, epoch, i, self.rank)
            images, _ = augment_batch(
                images_u8.to(self.device, non_blocking=True),
                out_size=self.out_size,
                scale=tuple(d.crop_scale),
                ratio=tuple(d.crop_ratio),
                hflip=d.hflip,
                generator=gen,
            )
            images, targets = normalize(images, self.mean, self.std), targets.to(self.device)
            with seeded_global_rng(int(torch.randint(2**62, (1,), generator=gen)), self.device):
                if self.erase is not None:
                    images = self.erase(images)
                if self.mixup is not None:
                    images, targets = self.mixup(images, targets)
            yield images, targets


def _build(cfg: Config, spec: str, device: torch.device) -> dict[str, Any]:
    """Encoder, data splits and classifier of a fine-tune (refusing data the encoder cannot take)."""
    from semmae.models.encoder import check_encoder_fits, load_encoder
    from semmae.models.vit import build_classifier

    encoder, meta = load_encoder(spec, map_location=device)
    check_encoder_fits(encoder, cfg.data.image_size, cfg.data.in_chans)
    train, test = labelled_split(cfg, "train"), labelled_split(cfg, "test")
    e = cfg.eval
    model = build_classifier(
        encoder, len(train.classes), global_pool=e.ft_global_pool, drop_path_rate=e.ft_drop_path
    )
    arch = {
        **encoder.arch,
        "num_classes": len(train.classes),
        "global_pool": e.ft_global_pool,
        "drop_path_rate": e.ft_drop_path,
    }
    return dict(encoder=encoder, meta=meta, train=train, test=test, model=model, arch=arch)


def _resume(run_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer, arch: dict[str, Any]) -> int:
    """Restore model, optimiser and RNG from ``run_dir/checkpoints/last.pt``; returns the step."""
    path = run_dir / "checkpoints" / "last.pt"
    if not path.is_file():
        raise RunDirError(
            f"nothing to resume in {str(run_dir)!r} (no checkpoints/last.pt); run without --resume"
        )
    ckpt = load_checkpoint(path)
    if ckpt.get("kind") != "finetune" or ckpt.get("arch") != arch:
        raise CheckpointError(
            f"{path} is not a fine-tune of this classifier ({ckpt.get('kind')!r}, arch "
            f"{ckpt.get('arch')}); resume with the run's own config.yaml and checkpoint"
        )
    load_state_strict(model, ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    set_rng_state(ckpt["rng"])
    return int(ckpt["step"])


def run_finetune(
    cfg: Config,
    checkpoint_spec: str,
    out_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    stop_at_step: int | None = None,
) -> dict[str, Any]:
    """Fine-tune the encoder of ``checkpoint_spec`` on ``cfg.data`` and score it on the test split.

    Writes a run directory (``config.yaml``, ``metrics.jsonl``, ``tb/``, ``checkpoints/last.pt`` of
    kind ``finetune``, ``summary.json``). Runs under torchrun with DDP (indices sharded by rank).

    Args:
        cfg: resolved config (``data``, ``eval.ft_*``, ``train.device/precision/seed/log_every/
            ckpt_every_steps/progress_bar``).
        checkpoint_spec: the encoder (see :func:`~semmae.models.encoder.load_encoder`).
        out_dir: the run directory.
        resume: continue from ``out_dir/checkpoints/last.pt``.
        overwrite: replace a non-empty ``out_dir``.
        progress: show a progress bar (also needs ``train.progress_bar``).
        stop_at_step: checkpoint and return after this step, as if interrupted (resume drills).

    Returns:
        ``{"eval": "finetune", "top1", ["top5"], "train_loss", "lr", "epochs", "steps", ...}``; an
        interrupted run returns ``{"interrupted": signum or -1, "step": ...}`` without scores.
    """
    device = runtime.resolve_device(cfg.train.device)
    with runtime.distributed_session(device):
        run_dir = prepare_run_dir(out_dir, cfg, resume=resume, overwrite=overwrite)
        runtime.seed_everything(cfg.train.seed + runtime.rank())  # drop path draws from the global RNG
        parts = _build(cfg, checkpoint_spec, device)
        e, model = cfg.eval, parts["model"]
        plan = make_plan(cfg, len(parts["train"]), runtime.world_size())
        groups = layer_decay_groups(
            model, depth=parts["encoder"].depth, layer_decay=e.ft_layer_decay, weight_decay=e.ft_weight_decay
        )
        optimizer = torch.optim.AdamW(groups, lr=plan.peak_lr, betas=(0.9, 0.999))
        step = _resume(run_dir, model, optimizer, parts["arch"]) if resume else 0
        ddp = DistributedDataParallel(model) if runtime.is_distributed() else model
        loop = _Loop(cfg, checkpoint_spec, run_dir, parts, ddp, optimizer, plan, device, step)
        return loop.run(stop_at_step, progress and cfg.train.progress_bar and runtime.is_main())


class _Loop:
    """The epoch/step loop of :func:`run_finetune` (``parts`` from :func:`_build`)."""

    def __init__(self, cfg: Config, spec: str, run_dir: Path, parts: dict[str, Any], ddp: nn.Module,
                 optimizer: torch.optim.Optimizer, plan: FinetunePlan, device: torch.device,
                 step: int) -> None:  # fmt: skip
        self.cfg, self.spec, self.run_dir, self.parts, self.ddp = cfg, spec, run_dir, parts, ddp
        self.model, self.optimizer, self.plan = parts["model"], optimizer, plan
        self.device, self.step = device, step
        self.norm = {"mean": list(parts["meta"]["mean"]), "std": list(parts["meta"]["std"])}
        num_classes, img_size = parts["arch"]["num_classes"], parts["encoder"].img_size
        self.batches = FinetuneBatches(
            parts["train"], cfg, img_size, **self.norm, device=device, num_classes=num_classes
        )
        self.loss_fn = make_loss(cfg, self.batches.mixup)
        self.loss_sum, self.loss_count, self.last_loss = torch.zeros((), device=device), 0, float("nan")
        self.window = (time.perf_counter(), step)

    def run(self, stop_at_step: int | None, show_bar: bool) -> dict[str, Any]:
        t0, plan, e, p = time.perf_counter(), self.plan, self.cfg.eval, self.parts
        bar = tqdm(
            total=plan.total_steps, initial=self.step, desc="finetune", unit="step", disable=not show_bar
        )
        with StopRequest() as stop, bar, MetricsLogger(self.run_dir) as logger:
            for epoch in range(self.step // plan.steps_per_epoch, e.ft_epochs):
                halt = self.run_epoch(epoch, stop, stop_at_step, bar, logger)
                if halt is not None:
                    return {"interrupted": halt, "step": self.step, "out": str(self.run_dir)}
            scores = evaluate_classifier(  # the bare module: ranks see different batch counts here
                self.model, p["test"], num_classes=p["arch"]["num_classes"], batch_size=e.batch_size,
                device=self.device, precision=self.cfg.train.precision, out_size=p["encoder"].img_size,
                num_workers=self.cfg.data.num_workers, **self.norm,
            )  # fmt: skip
            logger.log(self.step, epoch=e.ft_epochs, **{f"test_{k}": v for k, v in scores.items()})
        result = {
            "eval": "finetune", **scores, "checkpoint": self.spec, "dataset": self.cfg.data.name,
            "out": str(self.run_dir), "train_loss": self.last_loss, "lr": plan.peak_lr,
            "layer_decay": e.ft_layer_decay, "epochs": e.ft_epochs, "steps": self.step,
            "effective_batch": plan.effective_batch, "n_train": len(p["train"]), "n_test": len(p["test"]),
            "seconds": round(time.perf_counter() - t0, 2),
        }  # fmt: skip
        if runtime.is_main():
            (self.run_dir / "summary.json").write_text(json.dumps(result, indent=2) + "\n")
        return result

    def run_epoch(self, epoch: int, stop: StopRequest, stop_at_step: int | None, bar: tqdm,
                  logger: MetricsLogger) -> int | None:  # fmt: skip
        """Train the rest of ``epoch``; returns the signal number (-1: ``stop_at_step``) if halted."""
        plan, tc = self.plan, self.cfg.train
        self.ddp.train()
        start = self.step - epoch * plan.steps_per_epoch
        for images, targets in self.batches.epoch(epoch, plan.steps_per_epoch, start):
            lr = warmup_cosine(
                self.step, plan.total_steps, plan.warmup_steps, plan.peak_lr, self.cfg.eval.ft_min_lr
            )
            set_lr(self.optimizer, lr)
            kw = dict(
                optimizer=self.optimizer, loss_fn=self.loss_fn, device=self.device, precision=tc.precision
            )
            self.loss_sum += train_step(self.ddp, images, targets, **kw)
            self.loss_count += 1
            self.step += 1
            bar.update(1)
            if self.step % tc.log_every == 0 or self.step == plan.total_steps:
                self.log(logger, bar, images.shape[0])
            halt = stop.signum if stop.requested else (-1 if stop_at_step == self.step else None)
            if halt is not None or (tc.ckpt_every_steps and self.step % tc.ckpt_every_steps == 0):
                self.checkpoint(epoch)
            if halt is not None:
                return halt
        self.checkpoint(epoch + 1)
        return None

    def log(self, logger: MetricsLogger, bar: tqdm, batch: int) -> None:
        """Mean loss since the last log (one host sync), lr and throughput."""
        loss = runtime.all_reduce_mean(self.loss_sum / max(1, self.loss_count)).item()
        (t_start, step_start), now = self.window, time.perf_counter()
        img_s = (self.step - step_start) * batch * runtime.world_size() / max(1e-9, now - t_start)
        lr = max(g["lr"] for g in self.optimizer.param_groups)
        logger.log(self.step, epoch=self.step / self.plan.steps_per_epoch, loss=loss, lr=lr, img_per_s=img_s)
        bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{img_s:.0f}")
        self.loss_sum, self.loss_count, self.last_loss = torch.zeros_like(self.loss_sum), 0, loss
        self.window = (now, self.step)
        if not math.isfinite(loss):
            raise ConfigError(
                f"the fine-tuning loss became {loss} at step {self.step}; lower eval.ft_base_lr or "
                "use train.precision=fp32 (the last checkpoint is kept)"
            )

    def checkpoint(self, epoch: int) -> None:
        """Full state to ``checkpoints/last.pt`` (atomic; rank 0 writes, all ranks wait)."""
        if runtime.is_main():
            state = {
                "kind": "finetune", "model": self.model.state_dict(), "arch": self.parts["arch"],
                "optimizer": self.optimizer.state_dict(), "scaler": None, "step": self.step, "epoch": epoch,
                "rng": rng_state(), "config": self.cfg.to_dict(), "encoder": self.spec,
                "normalization": self.norm, "classes": list(self.parts["train"].classes),
            }  # fmt: skip
            save_checkpoint(self.run_dir / "checkpoints" / "last.pt", state)
        runtime.barrier()
