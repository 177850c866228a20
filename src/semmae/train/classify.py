"""What the two classifiers on a pretrained encoder share: fine-tuning and MAE's linear probe.

Both load an encoder and the labelled splits (refusing data the encoder cannot take), put a head
on it, train on the one loop with a checkpoint that names the encoder, its normalisation and the
class list, and are scored once on the test split under the evaluation view, with the score also
written to ``summary.json``.
"""

from __future__ import annotations

import json
import time
from abc import abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from semmae import runtime
from semmae.config import Config
from semmae.data import ImageSet
from semmae.encoder_spec import absolute_spec, same_encoder
from semmae.engine.logging import MetricsLogger
from semmae.engine.loop import LoopResult, Task, TrainLoop, finite_or_none
from semmae.engine.rundir import prepare_run_dir
from semmae.engine.schedule import Plan
from semmae.errors import CheckpointError
from semmae.eval.features import evaluate_classifier, labelled_split
from semmae.models.encoder import check_encoder_fits, load_encoder
from semmae.models.vit_encoder import ViTEncoder


@dataclass
class ClassifierParts:
    """An encoder with its head and data.

    Attributes:
        encoder: the pretrained ViT encoder (inside ``model``).
        train, test: the labelled splits.
        model: encoder + head, taking (B, C, S, S) images to (B, classes) logits.
        arch: the checkpoint's architecture record (the encoder's, the class count, the head's).
        norm: ``{"mean", "std"}`` lists the encoder expects.
    """

    encoder: ViTEncoder
    train: ImageSet
    test: ImageSet
    model: nn.Module
    arch: dict[str, Any]
    norm: dict[str, list[float]]


def load_classifier(
    cfg: Config, spec: str, device: torch.device, task_type: type[ClassifierTask]
) -> ClassifierParts:
    """The encoder of ``spec`` with ``task_type``'s head on it, and the labelled splits of ``cfg.data``.

    Raises:
        CheckpointError: ``spec`` names no usable encoder. DataError/ConfigError: data the encoder
            cannot take (channels, image size) or a split without labels.
    """
    encoder, meta = load_encoder(spec, map_location=device)
    check_encoder_fits(encoder, cfg.data.image_size, cfg.data.in_chans)
    train, test = labelled_split(cfg, "train"), labelled_split(cfg, "test")
    model, head_arch = task_type.head(cfg, encoder, len(train.classes), device)
    arch = {**encoder.arch, "num_classes": len(train.classes), **head_arch}
    norm = {"mean": list(meta["mean"]), "std": list(meta["std"])}
    return ClassifierParts(encoder, train, test, model, arch, norm)


class ClassifierTask(Task):
    """A :class:`Task` training ``parts.model``; its checkpoint names the encoder, normalisation and classes.

    A trainer subclasses it with its head (:meth:`head`), its plan and optimiser (:meth:`build`),
    its step, and the settings its result reports (:meth:`result_fields`); :func:`train_classifier`
    runs it.
    """

    desc: str = "classifier"  # the progress bar's label

    def __init__(self, cfg: Config, spec: str, parts: ClassifierParts, device: torch.device) -> None:
        self.cfg, self.spec, self.parts, self.device = cfg, spec, parts, device
        self.model, self.arch, self.norm = parts.model, parts.arch, parts.norm

    @staticmethod
    @abstractmethod
    def head(
        cfg: Config, encoder: ViTEncoder, num_classes: int, device: torch.device
    ) -> tuple[nn.Module, dict[str, Any]]:
        """The classifier this trainer puts on ``encoder``, on ``device``, and its fields of the arch record."""

    @staticmethod
    def check_settings(cfg: Config, world: int) -> None:  # noqa: B027 - a hook; most trainers have nothing to check
        """Refuse settings that are wrong whatever the data (before any is read); none by default.

        Raises:
            ConfigError: a setting this trainer cannot run with.
        """

    @classmethod
    @abstractmethod
    def build(
        cls, cfg: Config, spec: str, parts: ClassifierParts, device: torch.device
    ) -> tuple[ClassifierTask, Plan, torch.optim.Optimizer]:
        """The task, its plan and its optimiser."""

    @abstractmethod
    def result_fields(self, plan: Plan) -> dict[str, Any]:
        """What the result reports besides the scores (``eval``, the trainer's settings, ...)."""

    def extra_state(self) -> dict[str, Any]:
        return {
            "encoder": self.spec,
            "encoder_absolute": absolute_spec(self.spec),  # a resume may run from another folder
            "normalization": self.norm,
            "classes": list(self.parts.train.classes),
        }

    def load_extra_state(self, ckpt: dict[str, Any]) -> None:
        """Refuse to resume from another ``--checkpoint`` than the run started from: its result
        would name an encoder it was not trained from."""
        saved = ckpt.get("encoder_absolute", ckpt.get("encoder"))
        if isinstance(saved, str) and not same_encoder(saved, self.spec):
            raise CheckpointError(
                f"this run was started from --checkpoint {saved!r}, not {self.spec!r}; resume it with "
                "that --checkpoint, or train the new one into another --out"
            )


def train_classifier(
    task_type: type[ClassifierTask],
    cfg: Config,
    spec: str,
    out_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    stop_at_step: int | None = None,
) -> dict[str, Any]:
    """Train ``task_type``'s classifier on the encoder of ``spec`` on the one loop; score it on the test split.

    Writes a run directory (``config.yaml``, ``metrics.jsonl``, ``tb/``, ``checkpoints/last.pt`` of
    the task's kind, ``summary.json``); runs under torchrun with DDP (indices sharded by rank).

    Args:
        task_type: the trainer (:class:`~semmae.train.finetune.FinetuneTask`,
            :class:`~semmae.train.linear_probe.LinearProbeTask`).
        cfg: resolved config (``data``, the trainer's ``eval.*`` keys, ``train.device/precision/seed/
            log_every/ckpt_every_steps/progress_bar``).
        spec: the encoder (see :func:`~semmae.models.encoder.load_encoder`).
        out_dir: the run directory.
        resume: continue from ``out_dir/checkpoints/last.pt``.
        overwrite: replace a non-empty ``out_dir``.
        progress: show a progress bar (also needs ``train.progress_bar``).
        stop_at_step: checkpoint and return after this step, as if interrupted (resume drills).

    Returns:
        ``{"eval", "top1", ["top5"], "train_loss", "lr", "epochs", "steps", ...}`` (see
        :func:`score_on_test`); a stopped run returns ``{"interrupted": signum or -1, "step", "out"}``.
    """
    device = runtime.resolve_device(cfg.train.device)
    with runtime.distributed_session(device):
        t0 = time.perf_counter()
        task_type.check_settings(cfg, runtime.world_size())
        run_dir = prepare_run_dir(out_dir, cfg, resume=resume, overwrite=overwrite)
        runtime.seed_everything(cfg.train.seed + runtime.rank())  # heads and drop path draw from it
        parts = load_classifier(cfg, spec, device, task_type)
        task, plan, optimizer = task_type.build(cfg, spec, parts, device)
        with MetricsLogger(run_dir) as logger:
            loop = TrainLoop(
                task, plan, optimizer, run_dir, logger, config=cfg.to_dict(), train=cfg.train, device=device,
                desc=task.desc, show_bar=progress,
            )  # fmt: skip
            if resume:
                loop.resume()
            result = loop.run(stop_at_step)
            early = result.early_summary(run_dir)
            if early is not None:
                return early
            return score_on_test(task, plan, result, logger, t0)


def score_on_test(
    task: ClassifierTask, plan: Plan, result: LoopResult, logger: MetricsLogger, started: float
) -> dict[str, Any]:
    """Top-1 (and top-5) of ``task.model`` on the test split; the result, also in ``summary.json``.

    Args:
        task: the trained task (its :meth:`~ClassifierTask.result_fields` join the scores).
        plan: the run's plan (its epochs are logged with the score).
        result: the loop's result (its last step is where the score is logged).
        logger: the run's metrics logger (its folder is the run directory).
        started: ``time.perf_counter()`` when the run began (for ``seconds``).
    """
    cfg, p, epochs = task.cfg, task.parts, plan.epochs
    scores = evaluate_classifier(  # the bare module: ranks see different batch counts here
        task.model, p.test, num_classes=p.arch["num_classes"], batch_size=cfg.eval.batch_size,
        device=task.device, precision=cfg.train.precision, out_size=p.encoder.img_size,
        num_workers=cfg.data.num_workers, **task.norm,
    )  # fmt: skip
    logger.log(result.step, epoch=epochs, **{f"test_{k}": v for k, v in scores.items()})
    out = {
        **task.result_fields(plan), "train_loss": finite_or_none(result.last_loss), **scores, "checkpoint": task.spec, "dataset": cfg.data.name,
        "out": str(logger.path.parent), "epochs": epochs, "steps": result.step, "n_train": len(p.train),
        "n_test": len(p.test), "seconds": round(time.perf_counter() - started, 2),
    }  # fmt: skip
    if runtime.is_main():
        (logger.path.parent / "summary.json").write_text(json.dumps(out, indent=2) + "\n")
    return out
