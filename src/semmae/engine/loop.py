"""The one training loop: pretraining, part learning and fine-tuning each plug a :class:`Task` into it.

The loop owns everything that is the same for every trainer: the step arithmetic
(:class:`~semmae.engine.schedule.Plan`),
the lr of each step, gradient accumulation (and DDP's ``no_sync`` on the micro-steps between
optimiser steps), the log window (mean loss, lr, img/s) and its progress bar, the non-finite
guard, stop-on-signal, checkpoint cadence, ``stop_at_step`` and resume. A task supplies its
micro-batches, the forward + loss of one micro-batch, and its epoch-end work.

The non-finite guard never syncs the host per step: each step's loss updates a device-side flag,
which is read at log steps and before every checkpoint, together with one check that every
parameter is finite. So ``checkpoints/last.pt`` only ever holds finite state.
"""

from __future__ import annotations

import abc
import contextlib
import json
import logging
import math
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from semmae import runtime
from semmae.engine.logging import MetricsLogger
from semmae.engine.rundir import has_checkpoint
from semmae.engine.schedule import Plan, set_lr
from semmae.engine.signals import StopRequest
from semmae.engine.state import (
    LAST,
    load_run_state,
    missing_checkpoint_message,
    params_finite,
    save_run_state,
)
from semmae.errors import CheckpointError, NonFiniteLossError
from semmae.models.checkpoint import set_rng_state

log = logging.getLogger(__name__)


class Task(abc.ABC):
    """What one trainer supplies to :class:`TrainLoop` (``batches`` and ``step`` are required; the other hooks default to doing nothing).

    Attributes:
        kind: checkpoint kind (``mae``, ``parts``, ``finetune``); a resume checks it.
        model: the trained module (unwrapped); ``arch`` its constructor arguments.
        clip_grad: max gradient norm before each optimiser step, or None.
        nonfinite_hint: what to change when the loss becomes non-finite (for the error message).
    """

    kind: str = ""
    model: nn.Module
    arch: dict[str, Any]
    clip_grad: float | None = None
    nonfinite_hint: str = "lower the learning rate"

    @abc.abstractmethod
    def batches(self, epoch: int, start: int) -> Iterable[Any]:
        """Micro-batches ``start, start + 1, ...`` of ``epoch`` (a pure function of seed and index)."""

    @abc.abstractmethod
    def step(self, net: nn.Module, batch: Any, step: int) -> tuple[torch.Tensor, int]:
        """Forward + loss of one micro-batch through ``net`` (the model, DDP-wrapped when distributed).

        Returns:
            The scalar loss (the loop does the backward pass) and the micro-batch's image count.
        """

    def log_metrics(self, step: int) -> dict[str, Any]:
        """Extra metrics of a log step (after optimiser step ``step``)."""
        return {}

    def on_epoch_end(self, epoch: int, step: int, final: bool) -> dict[str, Any]:
        """Epoch-end work after the epoch's checkpoint; returns metrics to log."""
        return {}

    def extra_state(self) -> dict[str, Any]:
        """The trainer's own checkpoint keys (plain data and tensors only)."""
        return {}

    def load_extra_state(self, ckpt: dict[str, Any]) -> None:
        """Check and restore the trainer's own keys on resume (raise CheckpointError on a mismatch)."""
        return None  # a trainer without keys of its own has nothing to restore


@dataclass
class LoopResult:
    """How :meth:`TrainLoop.run` ended.

    Attributes:
        step: optimiser steps done; epoch: whole epochs done.
        interrupted: the signal number, -1 for ``stop_at_step``, None when not interrupted.
        already_complete: the run had finished before this call (a ``--resume`` of a done run).
        last_loss: mean loss of the last log window (NaN when nothing was logged).
        wall_s: seconds spent in :meth:`TrainLoop.run`.
    """

    step: int
    epoch: int
    interrupted: int | None
    already_complete: bool
    last_loss: float
    wall_s: float

    def early_summary(self, run_dir: Path) -> dict[str, Any] | None:
        """What a trainer returns when there is nothing to score: None when it should score.

        A stopped run gives ``{"interrupted", "step", "out"}``; a ``--resume`` of a finished run
        gives the ``summary.json`` it wrote then, with ``already_complete: true``.
        """
        if self.interrupted is not None:
            return {"interrupted": self.interrupted, "step": self.step, "out": str(run_dir)}
        summary = Path(run_dir) / "summary.json"
        if self.already_complete and summary.is_file():
            return {**json.loads(summary.read_text()), "already_complete": True}
        return None


def finite_or_none(value: float) -> float | None:
    """``value``, or None for NaN (no loss logged yet) so that summaries stay valid JSON."""
    return value if math.isfinite(value) else None


class TrainLoop:
    """Runs a :class:`Task` for ``plan.total_steps`` optimiser steps into ``run_dir``.

    Args:
        task: the trainer's batches, step and hooks.
        plan: step arithmetic.
        optimizer: optimiser of ``task.model``.
        run_dir: the run directory (checkpoints go to ``run_dir/checkpoints``).
        logger: where log rows go.
        config: the resolved config dict stored in checkpoints.
        train: the ``train`` config section (``log_every``, ``ckpt_every_steps``, ``progress_bar``,
            ``precision``).
        device: where the model lives.
        desc: progress-bar label.
        show_bar: also needs ``train.progress_bar``; only the main process shows one.
        keep_every_epochs: also keep ``checkpoints/epoch_0010.pt`` every N epochs (0 = never).
    """

    def __init__(self, task: Task, plan: Plan, optimizer: torch.optim.Optimizer, run_dir: Path,
                 logger: MetricsLogger, *, config: dict[str, Any], train: Any, device: torch.device,
                 desc: str, show_bar: bool = True, keep_every_epochs: int = 0) -> None:  # fmt: skip
        self.task, self.plan, self.optimizer, self.run_dir = task, plan, optimizer, Path(run_dir)
        self.logger, self.config, self.device, self.desc = logger, config, device, desc
        runtime.configure_backends(device)  # malloc reuse; TF32 / cudnn.benchmark on CUDA
        runtime.configure_attention(task.model, device, train.precision)  # unfused on a CPU in bf16
        self.log_every, self.ckpt_every = train.log_every, train.ckpt_every_steps
        self.show_bar = show_bar and train.progress_bar and runtime.is_main()
        self.keep_every = keep_every_epochs
        self.step, self.epoch, self.saved_step = 0, 0, None
        self.saved_window: dict[str, Any] | None = None  # the log window of the last checkpoint
        self.last_loss = float("nan")
        self.nonfinite = torch.zeros((), dtype=torch.bool, device=device)
        self._reset_window(time.perf_counter())

    def resume(self) -> None:
        """Restore model, optimiser, the task's state and the RNGs from ``checkpoints/last.pt``.

        A run directory whose start failed before its first checkpoint has nothing to restore: the
        run starts from scratch (:func:`~semmae.engine.rundir.prepare_run_dir` has said so).

        Raises:
            CheckpointError: the run has trained but its ``last.pt`` is gone, or that checkpoint does
                not belong to this run (another kind, architecture or config).
        """
        if not has_checkpoint(self.run_dir):
            lost = missing_checkpoint_message(self.run_dir)
            if lost is not None:
                raise CheckpointError(lost)
            return
        t = self.task
        ckpt = load_run_state(
            self.run_dir,
            kind=t.kind,
            arch=t.arch,
            model=t.model,
            optimizer=self.optimizer,
            config=self.config,
        )
        t.load_extra_state(ckpt)
        self._restore_window(ckpt.get("log_window"))
        set_rng_state(ckpt["rng"])  # last: restoring the task's state may draw random numbers
        self.step = self.saved_step = int(ckpt["step"])
        self.epoch = self.step // self.plan.steps_per_epoch
        log.info("resumed %s at step %d", self.run_dir, self.step)

    def run(self, stop_at_step: int | None = None) -> LoopResult:
        """Train to ``plan.total_steps``, or until SIGTERM/SIGINT or ``stop_at_step`` (checkpointed)."""
        t0, plan = time.perf_counter(), self.plan
        if self.step >= plan.total_steps:
            log.info("run already complete at step %d", self.step)
            return self._result(None, t0, already_complete=True)
        model = self.task.model
        net = DistributedDataParallel(model) if runtime.is_distributed() else model
        bar = tqdm(total=plan.total_steps, initial=self.step, desc=self.desc, unit="step",
                   disable=not self.show_bar, dynamic_ncols=True)  # fmt: skip
        halt = None
        with StopRequest() as stop, bar:
            for epoch in range(self.step // plan.steps_per_epoch, plan.epochs):
                self.epoch = epoch
                halt = self._run_epoch(epoch, net, stop, stop_at_step, bar)
                if halt is not None or self.step >= plan.total_steps:
                    break
        return self._result(halt, t0)

    def _result(self, halt: int | None, t0: float, already_complete: bool = False) -> LoopResult:
        epochs, wall = self.step // self.plan.steps_per_epoch, time.perf_counter() - t0
        return LoopResult(self.step, epochs, halt, already_complete, self.last_loss, wall)

    def _run_epoch(self, epoch: int, net: nn.Module, stop: StopRequest, stop_at_step: int | None,
                   bar: tqdm) -> int | None:  # fmt: skip
        """The rest of ``epoch``; returns the signal number (-1: ``stop_at_step``) if halted."""
        plan = self.plan
        first = (self.step - epoch * plan.steps_per_epoch) * plan.accum
        last = plan.steps_per_epoch * plan.accum
        self.task.model.train()
        for index, batch in enumerate(self.task.batches(epoch, first), start=first):
            if index >= last:
                break
            boundary = (index + 1) % plan.accum == 0
            self._micro_step(net, batch, index, boundary)
            if not boundary:
                continue
            self._optimizer_step()
            bar.update(1)
            if self.step % self.log_every == 0 or self.step == plan.total_steps:
                self._log_window(bar)
            halt = stop.signum or (-1 if stop_at_step == self.step else None)
            if halt is not None or (self.ckpt_every and self.step % self.ckpt_every == 0):
                self.checkpoint(epoch)
            if halt is not None:
                return halt
            if self.step >= plan.total_steps:
                break
        self._end_of_epoch(epoch)
        return None

    def _micro_step(self, net: nn.Module, batch: Any, index: int, boundary: bool) -> None:
        accum = self.plan.accum
        if index % accum == 0:
            set_lr(self.optimizer, self.plan.lr(self.step))
        if self.loss_count == 0:
            self.loss_sum = torch.zeros((), device=self.device)
        sync = boundary or not runtime.is_distributed()
        # DDP: the forward of a micro-step that is not the last of its optimiser step skips the
        # gradient all-reduce; the last one reduces the accumulated gradients once.
        with net.no_sync() if not sync else contextlib.nullcontext():
            loss, images = self.task.step(net, batch, self.step)
        (loss / accum if accum > 1 else loss).backward()
        loss = loss.detach()
        self.loss_sum += loss
        self.loss_count += 1
        self.nonfinite |= ~torch.isfinite(loss)  # stays on the device: no host sync per step
        self.window_images += images * runtime.world_size()

    def _optimizer_step(self) -> None:
        if self.task.clip_grad is not None:
            torch.nn.utils.clip_grad_norm_(self.task.model.parameters(), self.task.clip_grad)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1

    def _reset_window(self, now: float) -> None:
        self.loss_sum, self.loss_count, self.window_images, self.window_start = None, 0, 0, now

    def _window_state(self) -> dict[str, Any]:
        """The open log window's loss sum (every rank's, in rank order) and micro-step count, for the
        checkpoint: a resumed run logs the mean loss an uninterrupted one would. Collective."""
        mine = self.loss_sum.detach().cpu() if self.loss_count else None
        return {"loss_sums": runtime.all_gather_object(mine), "loss_count": self.loss_count}

    def _restore_window(self, window: dict[str, Any] | None) -> None:
        """Reopen the log window a checkpoint saved (none in checkpoints of earlier versions)."""
        if not window or not window.get("loss_count"):
            return
        sums = window["loss_sums"]
        # Resumed on another number of processes, every rank takes the mean of the saved sums.
        mine = sums[runtime.rank()] if len(sums) == runtime.world_size() else torch.stack(sums).mean()
        self.loss_sum, self.loss_count = mine.to(self.device), int(window["loss_count"])

    def _log_window(self, bar: tqdm) -> None:
        """Mean loss since the last log (one host sync, log steps only), lr, img/s and the task's metrics."""
        loss = runtime.all_reduce_mean(self.loss_sum / max(1, self.loss_count)).item()
        now = time.perf_counter()
        img_s = self.window_images / max(1e-9, now - self.window_start)
        metrics: dict[str, Any] = dict(
            epoch=self.step / self.plan.steps_per_epoch, loss=loss,
            lr=max(g["lr"] for g in self.optimizer.param_groups), img_per_s=img_s,
        )  # fmt: skip
        metrics.update(self.task.log_metrics(self.step))
        self.logger.log(self.step, **metrics)
        bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{img_s:.0f}")
        self.last_loss = loss
        self._reset_window(now)
        if not math.isfinite(loss):
            self._stop_nonfinite(f"loss became {loss}")

    def _check_finite(self) -> None:
        """Before a checkpoint: no non-finite loss since the start and every parameter finite (one sync)."""
        bad = torch.stack([self.nonfinite, ~params_finite(self.task.model).to(self.device)]).any()
        if runtime.is_distributed():
            bad = runtime.all_reduce_mean(bad.float()) > 0
        if bool(bad):
            self._stop_nonfinite("the loss or the parameters became non-finite")

    def _stop_nonfinite(self, what: str) -> None:
        if runtime.is_main():
            self._save(self.run_dir / "checkpoints" / "nonfinite.pt", self.epoch)  # for debugging only
        last = self.run_dir / LAST
        if self.saved_step is not None and last.is_file():
            kept = f"the last good checkpoint is {last} (step {self.saved_step}); fix, then --resume"
        else:
            kept = "no checkpoint was kept; fix, then start again"
        raise NonFiniteLossError(f"{what} by step {self.step}; {kept} ({self.task.nonfinite_hint})")

    def _save(self, path: Path, epoch: int, window: dict[str, Any] | None = None) -> None:
        t = self.task
        extra = {**t.extra_state(), **({"log_window": window} if window is not None else {})}
        save_run_state(
            path, kind=t.kind, arch=t.arch, model=t.model, optimizer=self.optimizer, step=self.step,
            epoch=epoch, config=self.config, plan=asdict(self.plan), extra=extra,
        )  # fmt: skip

    def checkpoint(self, epoch: int) -> None:
        """Check finiteness, then write ``checkpoints/last.pt`` (main process writes, all wait)."""
        self._check_finite()
        self.saved_window = self._window_state()
        if runtime.is_main():
            self._save(self.run_dir / LAST, epoch, self.saved_window)
        self.saved_step = self.step
        runtime.barrier()

    def _end_of_epoch(self, epoch: int) -> None:
        done = epoch + 1 if self.step % self.plan.steps_per_epoch == 0 else epoch
        self.checkpoint(done)
        if self.keep_every and (epoch + 1) % self.keep_every == 0 and runtime.is_main():
            self._save(
                self.run_dir / "checkpoints" / f"epoch_{epoch + 1:04d}.pt", epoch + 1, self.saved_window
            )
        metrics = self.task.on_epoch_end(epoch, self.step, self.step >= self.plan.total_steps)
        if metrics:
            self.logger.log(self.step, epoch=epoch + 1, **metrics)
