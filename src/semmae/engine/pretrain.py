"""The pretraining loop (MAE and SemMAE): one code path for CPU, one GPU and DDP.

Time is owned here: the loop computes training progress (for λ schedules) and derives a generator
per micro-batch, so masks and crops are a pure function of (seed, epoch, micro-batch, rank).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from semmae import runtime
from semmae.config import Config
from semmae.engine.batches import PretrainBatches
from semmae.engine.build import build_masking, build_model
from semmae.engine.logging import MetricsLogger
from semmae.engine.monitor import PretrainMonitor
from semmae.engine.optim import build_adamw, scaled_lr
from semmae.engine.pretrain_state import load_resume_state, save_state
from semmae.engine.rundir import prepare_run_dir
from semmae.engine.schedule import set_lr, warmup_cosine
from semmae.engine.signals import StopRequest
from semmae.errors import ConfigError, SemmaeError

log = logging.getLogger(__name__)


class NonFiniteLossError(SemmaeError):
    """Training produced a NaN/Inf loss; a checkpoint of the last good state exists."""


@dataclass
class Plan:
    """Step arithmetic of a run (all counts per rank)."""

    micro_per_epoch: int
    accum: int
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    peak_lr: float
    effective_batch: int

    @property
    def epochs(self) -> int:
        return math.ceil(self.total_steps / self.steps_per_epoch)


@dataclass
class LoopState:
    """Mutable counters saved in checkpoints."""

    step: int = 0
    loss_sum: torch.Tensor | None = None
    loss_count: int = 0
    window_start: float = field(default_factory=time.perf_counter)
    window_images: int = 0
    last_loss: float = float("nan")


def make_plan(cfg: Config, micro_per_epoch: int, world: int) -> Plan:
    """Turn epochs / batch / accumulation / world size into step counts and the peak lr."""
    tc = cfg.train
    steps_per_epoch = micro_per_epoch // tc.accum_steps
    if steps_per_epoch < 1:
        raise ConfigError(
            f"one optimiser step needs {tc.batch_size * tc.accum_steps * world} images but the data has fewer "
            "per epoch; lower train.batch_size or train.accum_steps, or raise data.limit"
        )
    total = tc.epochs * steps_per_epoch
    if tc.max_steps is not None:
        total = min(total, tc.max_steps) if tc.epochs > 0 else tc.max_steps
    if total < 1:
        raise ConfigError("nothing to train: set train.epochs >= 1 or train.max_steps >= 1")
    eff = tc.batch_size * tc.accum_steps * world
    return Plan(
        micro_per_epoch=micro_per_epoch,
        accum=tc.accum_steps,
        steps_per_epoch=steps_per_epoch,
        total_steps=total,
        warmup_steps=int(round(tc.warmup_epochs * steps_per_epoch)),
        peak_lr=scaled_lr(tc.base_lr, eff),
        effective_batch=eff,
    )


def _load_parts(cfg: Config, dataset: Any) -> tuple[Any, int | None]:
    if cfg.masking.name != "semantic":
        return None, None
    if cfg.masking.parts is None:
        raise ConfigError(
            "masking.name=semantic needs a part-map file: set masking.parts=FILE.npy "
            "(from `semmae parts export` or `semmae parts from-masks`)"
        )
    from semmae.data.partmaps import load_part_maps

    maps = load_part_maps(cfg.masking.parts, dataset=dataset)
    return maps, maps.manifest.num_parts


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
        A summary dict (also written to ``summary.json`` when training completes).
    """
    from semmae.data import build_dataset

    device = runtime.resolve_device(cfg.train.device)
    if cfg.train.precision == "bf16" and device.type == "cpu" and not runtime.cpu_has_native_bf16():
        log.warning("this CPU has no native bf16 instructions: bf16 autocast will be much slower than fp32")
    with runtime.distributed_session(device):
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
        plan = make_plan(cfg, batches.micro_batches_per_epoch(), runtime.world_size())
        optimizer = build_adamw(model, plan.peak_lr, cfg.train.weight_decay, tuple(cfg.train.betas))
        state = LoopState()
        if resume:
            state.step = load_resume_state(run_dir, model, optimizer, cfg)
        ddp = DistributedDataParallel(model) if runtime.is_distributed() else model
        monitor = PretrainMonitor(cfg, run_dir, model, masking, device, part_maps, num_parts)
        loop = _Loop(
            cfg, run_dir, model, ddp, optimizer, masking, batches, plan, state, monitor, device, num_parts
        )
        return loop.run(stop_at_step)


class _Loop:
    """The epoch/step loop of :func:`run_pretrain` (kept separate so each method stays small)."""

    def __init__(
        self, cfg, run_dir, model, ddp, optimizer, masking, batches, plan, state, monitor, device, num_parts
    ):  # noqa: ANN001, PLR0913
        self.cfg, self.run_dir, self.model, self.ddp = cfg, Path(run_dir), model, ddp
        self.optimizer, self.masking, self.batches, self.plan = optimizer, masking, batches, plan
        self.state, self.monitor, self.device, self.num_parts = state, monitor, device, num_parts
        self.logger = MetricsLogger(self.run_dir)
        self.t0 = time.perf_counter()

    def progress(self, step: int) -> float:
        from semmae.masking.schedule import masking_progress

        mc = self.cfg.masking
        return masking_progress(step, self.plan.total_steps, self.plan.steps_per_epoch, mc.step_per)

    def run(self, stop_at_step: int | None) -> dict[str, Any]:
        plan, state = self.plan, self.state
        if state.step >= plan.total_steps:
            log.info("run already complete at step %d", state.step)
            return self.finish(interrupted=None)
        start_epoch = state.step // plan.steps_per_epoch
        bar = tqdm(
            total=plan.total_steps, initial=state.step, desc="pretrain", unit="step",
            disable=not (self.cfg.train.progress_bar and runtime.is_main()), dynamic_ncols=True,
        )  # fmt: skip
        interrupted: int | None = None
        with StopRequest() as stop, bar:
            if state.step == 0:
                self.monitor.on_start()
            for epoch in range(start_epoch, plan.epochs):
                interrupted = self.run_epoch(epoch, stop, stop_at_step, bar)
                if interrupted is not None or state.step >= plan.total_steps:
                    break
        return self.finish(interrupted)

    def run_epoch(self, epoch: int, stop: StopRequest, stop_at_step: int | None, bar: tqdm) -> int | None:
        plan, state = self.plan, self.state
        first_micro = (state.step - epoch * plan.steps_per_epoch) * plan.accum
        last_micro = plan.steps_per_epoch * plan.accum
        self.model.train()
        for mb in self.batches.epoch(epoch, start=first_micro):
            if mb.index >= last_micro:
                break
            boundary = (mb.index + 1) % plan.accum == 0
            self.micro_step(mb, boundary)
            if not boundary:
                continue
            self.optimizer_step()
            bar.update(1)
            if state.step % self.cfg.train.log_every == 0 or state.step == plan.total_steps:
                self.log_window(epoch, bar)
            ckpt_every = self.cfg.train.ckpt_every_steps
            if ckpt_every and state.step % ckpt_every == 0:
                self.checkpoint(epoch)
            halt = stop.signum if stop.requested else (-1 if stop_at_step == state.step else None)
            if halt is not None:
                self.checkpoint(epoch)
                return halt
            if state.step >= plan.total_steps:
                break
        self.end_of_epoch(epoch)
        return None

    def micro_step(self, mb, boundary: bool) -> None:  # noqa: ANN001
        plan, state = self.plan, self.state
        if state.loss_sum is None or state.loss_count == 0:
            state.loss_sum = torch.zeros((), device=self.device)
        if mb.index % plan.accum == 0:
            set_lr(self.optimizer, self.lr(state.step))
        mask = self.masking(
            mb.images.shape[0], self.model.num_patches, part_labels=mb.part_labels, num_parts=self.num_parts,
            progress=self.progress(state.step), generator=mb.generator, device=self.device,
        )  # fmt: skip
        sync = boundary or not runtime.is_distributed()
        ctx = self.ddp.no_sync() if not sync else contextlib.nullcontext()
        with ctx, runtime.autocast(self.device, self.cfg.train.precision):
            out = self.ddp(mb.images, mask)
        (out.loss / plan.accum).backward()
        state.loss_sum += out.loss.detach()
        state.loss_count += 1
        state.window_images += mb.images.shape[0] * runtime.world_size()

    def optimizer_step(self) -> None:
        if self.cfg.train.clip_grad is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.clip_grad)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.step += 1

    def lr(self, step: int) -> float:
        p = self.plan
        return warmup_cosine(step, p.total_steps, p.warmup_steps, p.peak_lr, self.cfg.train.min_lr)

    def log_window(self, epoch: int, bar: tqdm) -> None:
        state = self.state
        loss = runtime.all_reduce_mean(
            state.loss_sum / max(1, state.loss_count)
        ).item()  # host sync, log steps only
        now = time.perf_counter()
        img_s = state.window_images / max(1e-9, now - state.window_start)
        metrics: dict[str, Any] = dict(
            epoch=state.step / self.plan.steps_per_epoch, loss=loss, lr=self.optimizer.param_groups[0]["lr"],
            img_per_s=img_s, progress=self.progress(state.step - 1),
        )  # fmt: skip
        if self.cfg.masking.name == "semantic":
            from semmae.masking.schedule import lambda_schedule

            metrics["lambda"] = lambda_schedule(self.cfg.masking.schedule, self.cfg.masking.gamma)(
                metrics["progress"]
            )
        self.logger.log(state.step, **metrics)
        bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{img_s:.0f}")
        state.last_loss = loss
        state.loss_count, state.window_images, state.window_start = 0, 0, now
        if not math.isfinite(loss):
            self.on_nonfinite(epoch, loss)

    def on_nonfinite(self, epoch: int, loss: float) -> None:
        last = self.run_dir / "checkpoints" / "last.pt"
        save_state(self.run_dir / "checkpoints" / "nonfinite.pt", self, epoch)
        self.logger.close()
        raise NonFiniteLossError(
            f"loss became {loss} at step {self.state.step}; the last good checkpoint is {last} "
            "(lower train.base_lr, add train.clip_grad=1.0 or use train.precision=fp32, then --resume)"
        )

    def checkpoint(self, epoch: int) -> None:
        if runtime.is_main():
            save_state(self.run_dir / "checkpoints" / "last.pt", self, epoch)
        runtime.barrier()

    def end_of_epoch(self, epoch: int) -> None:
        self.checkpoint(epoch + 1 if self.state.step % self.plan.steps_per_epoch == 0 else epoch)
        keep = self.cfg.train.keep_every_epochs
        if keep and (epoch + 1) % keep == 0 and runtime.is_main():
            save_state(self.run_dir / "checkpoints" / f"epoch_{epoch + 1:04d}.pt", self, epoch + 1)
        final = self.state.step >= self.plan.total_steps
        metrics = self.monitor.on_epoch_end(epoch, final)
        if metrics:
            self.logger.log(self.state.step, epoch=epoch + 1, **metrics)

    def finish(self, interrupted: int | None) -> dict[str, Any]:
        self.logger.close()
        wall = time.perf_counter() - self.t0
        digests = runtime.all_gather_object(parameter_digest(self.model))
        return self.monitor.summary(
            self.state.step, self.plan, interrupted, wall, self.state.last_loss, digests
        )


def parameter_digest(model: torch.nn.Module) -> str:
    """sha256 (16 hex) of every parameter's bytes: equal digests mean bit-identical weights."""
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]
