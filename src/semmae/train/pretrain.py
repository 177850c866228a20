"""MAE / SemMAE pretraining: one code path for CPU, one GPU and DDP, on :class:`~semmae.engine.loop.TrainLoop`.

Masks and crops are a pure function of (seed, epoch, micro-batch, rank): each micro-batch carries
its own generator, and the masking progress (for λ schedules) comes from the optimiser step.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from semmae import runtime
from semmae.config import Config
from semmae.data import build_dataset
from semmae.data.partmaps import PartMapManifest, load_part_maps
from semmae.engine.batches import MicroBatch, PretrainBatches
from semmae.engine.build import build_masking, build_model
from semmae.engine.logging import MetricsLogger
from semmae.engine.loop import Task, TrainLoop
from semmae.engine.optim import build_adamw
from semmae.engine.rundir import prepare_run_dir
from semmae.engine.schedule import Plan, make_plan
from semmae.engine.state import parameter_digest
from semmae.errors import CheckpointError, ConfigError
from semmae.masking import MaskingStrategy
from semmae.masking.schedule import lambda_schedule, masking_progress
from semmae.models import MaskedAutoencoderViT
from semmae.train.monitor import PretrainMonitor

log = logging.getLogger(__name__)


def pretrain_plan(cfg: Config, micro_per_epoch: int, world: int) -> Plan:
    """Turn epochs / batch / accumulation / world size into step counts and the peak lr.

    Raises:
        ConfigError: one optimiser step needs more images than an epoch has, or nothing to train.
    """
    tc = cfg.train
    eff, peak_lr, lr_settings = tc.peak_lr(world)
    steps_per_epoch = micro_per_epoch // tc.accum_steps
    if steps_per_epoch < 1:
        raise ConfigError(
            f"one optimiser step needs {eff} images but the data has fewer per epoch; lower train.batch_size "
            "or train.accum_steps (or raise data.limit, if set, or add images)"
        )
    return make_plan(
        steps_per_epoch=steps_per_epoch, epochs=tc.epochs, max_steps=tc.max_steps,
        warmup_epochs=tc.warmup_epochs, peak_lr=peak_lr, min_lr=tc.min_lr, effective_batch=eff,
        accum=tc.accum_steps, lr_settings=lr_settings,
    )  # fmt: skip


def _load_parts(cfg: Config, dataset: Any) -> tuple[Any, int | None]:
    parts = cfg.masking.part_map_file()
    if parts is None:
        if cfg.masking.parts is not None:
            log.warning(
                "masking.parts is read by masking.name=semantic only; %s masking ignores it", cfg.masking.name
            )
        return None, None
    maps = load_part_maps(parts, dataset=dataset)
    return maps, maps.manifest.num_parts


def _as_json(manifest: dict[str, Any]) -> str:
    """What identifies part maps in their manifest, as canonical JSON (a tuple grid and its list form
    compare equal); not ``created``: the same export made again is the same maps."""
    return json.dumps({k: v for k, v in manifest.items() if k != "created"}, sort_keys=True)


class PretrainTask(Task):
    """The MAE's step: mask the micro-batch (with this step's progress), forward, loss."""

    kind = "mae"
    nonfinite_hint = "lower train.base_lr, add train.clip_grad=1.0 or use train.precision=fp32"

    def __init__(self, cfg: Config, model: MaskedAutoencoderViT, masking: MaskingStrategy,
                 batches: PretrainBatches, plan: Plan, monitor: PretrainMonitor, device: torch.device,
                 num_parts: int | None, part_maps: PartMapManifest | None = None) -> None:  # fmt: skip
        self.cfg, self.model, self.masking, self.data = cfg, model, masking, batches
        self.plan, self.monitor, self.device, self.num_parts = plan, monitor, device, num_parts
        self.part_maps = asdict(part_maps) if part_maps is not None else None
        self.arch = dict(model.arch)
        self.clip_grad = cfg.train.clip_grad

    def extra_state(self) -> dict[str, Any]:
        """The manifest of the part maps a semantic run trains on (what its resume must find again)."""
        return {} if self.part_maps is None else {"part_maps": self.part_maps}

    def load_extra_state(self, ckpt: dict[str, Any]) -> None:
        """Refuse to resume semantic masking with other part maps at the same path: the masks of
        the remaining steps would come from maps the run did not start with."""
        saved = ckpt.get("part_maps")
        if saved is None or self.part_maps is None:
            return
        if _as_json(saved) != _as_json(self.part_maps):
            keys = {**saved, **self.part_maps}.keys() - {"created"}
            differ = sorted(k for k in keys if saved.get(k) != self.part_maps.get(k))
            raise CheckpointError(
                f"masking.parts {self.cfg.masking.parts!r} is not the part-map file this run started with "
                f"(its manifest differs in {', '.join(differ)}); put that file back, or train the new maps "
                "into another --out"
            )

    def progress(self, step: int) -> float:
        """Masking progress in [0, 1] at optimiser step ``step``."""
        return masking_progress(
            step, self.plan.total_steps, self.plan.steps_per_epoch, self.cfg.masking.step_per
        )

    def batches(self, epoch: int, start: int) -> Any:  # type: ignore[override]
        return self.data.epoch(epoch, start=start)

    def step(self, net: nn.Module, batch: MicroBatch, step: int) -> tuple[torch.Tensor, int]:
        mask = self.masking(
            batch.images.shape[0], self.model.num_patches, part_labels=batch.part_labels,
            num_parts=self.num_parts, progress=self.progress(step), generator=batch.generator,
            device=self.device,
        )  # fmt: skip
        with runtime.autocast(self.device, self.cfg.train.precision):
            out = net(batch.images, mask)
        return out.loss, batch.images.shape[0]

    def log_metrics(self, step: int) -> dict[str, Any]:
        metrics: dict[str, Any] = {"progress": self.progress(step - 1)}
        if self.cfg.masking.name == "semantic":
            mc = self.cfg.masking
            metrics["lambda"] = lambda_schedule(mc.schedule, mc.gamma)(metrics["progress"])
        return metrics

    def on_epoch_end(self, epoch: int, step: int, final: bool) -> dict[str, Any]:
        return self.monitor.on_epoch_end(epoch, final)


def run_pretrain(
    cfg: Config,
    out_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    stop_at_step: int | None = None,
) -> dict[str, Any]:
    """Pretrain an MAE with the masking of ``cfg.masking`` and write a run directory.

    Args:
        cfg: resolved config (data, model, masking, train sections are used).
        out_dir: run directory (see DESIGN.md §4).
        resume: continue from ``out_dir/checkpoints/last.pt``.
        overwrite: replace a non-empty ``out_dir``.
        stop_at_step: behave as if interrupted after this optimiser step (checkpoint, return);
            used by preemption drills and the resume tests.

    Returns:
        A summary dict (also written to ``summary.json`` when training completes); ``interrupted``
        holds the signal number (-1: ``stop_at_step``) of a stopped run.
    """
    device = runtime.resolve_device(cfg.train.device)
    if cfg.train.precision == "bf16" and device.type == "cpu" and not runtime.cpu_has_native_bf16():
        log.warning("this CPU has no native bf16 instructions: bf16 autocast will be much slower than fp32")
    with runtime.distributed_session(device):
        cfg.train.check_pretraining(runtime.world_size())  # before any data (the CLI checked before torch)
        run_dir = prepare_run_dir(out_dir, cfg, resume=resume, overwrite=overwrite)
        runtime.seed_everything(cfg.train.seed)
        train_set = build_dataset(cfg.data, "train")
        part_maps, num_parts = _load_parts(cfg, train_set)
        model = build_model(cfg).to(device)
        masking = build_masking(cfg, model.grid)
        batches = PretrainBatches(
            train_set, cfg.data, cfg.train.batch_size, cfg.train.seed, runtime.rank(), runtime.world_size(),
            device, part_maps=part_maps, grid=model.grid, num_parts=num_parts,
        )  # fmt: skip
        plan = pretrain_plan(cfg, batches.micro_batches_per_epoch(), runtime.world_size())
        optimizer = build_adamw(model, plan.peak_lr, cfg.train.weight_decay, tuple(cfg.train.betas))
        monitor = PretrainMonitor(cfg, run_dir, model, masking, device, part_maps, num_parts)
        manifest = part_maps.manifest if part_maps is not None else None
        task = PretrainTask(cfg, model, masking, batches, plan, monitor, device, num_parts, manifest)
        with MetricsLogger(run_dir) as logger:
            loop = TrainLoop(
                task, plan, optimizer, run_dir, logger, config=cfg.to_dict(), train=cfg.train, device=device,
                desc="pretrain", keep_every_epochs=cfg.train.keep_every_epochs,
            )  # fmt: skip
            if resume:
                loop.resume()
            if loop.step == 0:
                monitor.on_start()
            result = loop.run(stop_at_step)
        digests = runtime.all_gather_object(parameter_digest(model))
        return monitor.summary(plan, result, digests)
