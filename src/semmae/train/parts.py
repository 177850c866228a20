"""Stage-1 part learning (DESIGN.md §2.2) on :class:`~semmae.engine.loop.TrainLoop`, in one process.

Writes a run directory (DESIGN.md §4): ``config.yaml``, ``metrics.jsonl`` + ``tb/`` (loss terms,
tau, part-area entropy, empty parts), ``checkpoints/last.pt`` (full state, atomic), ``images/``
(input | part overlay | reconstruction per epoch) and, when the test split has ground-truth
part masks, ``partseg.json`` with the learner's and a k-means baseline's part metrics.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from semmae import config as config_lib
from semmae.data import build_dataset, iterate_batches
from semmae.data.folder import whole_image_view
from semmae.data.transforms import augment_batch, center_batch, denormalize, normalize
from semmae.engine.logging import MetricsLogger
from semmae.engine.loop import Task, TrainLoop, finite_or_none
from semmae.engine.optim import adamw
from semmae.engine.rundir import prepare_run_dir
from semmae.engine.schedule import Plan, make_plan
from semmae.errors import CheckpointError, ConfigError
from semmae.eval.partseg import kmeans_part_baseline, part_metrics
from semmae.parts.backbone import (
    FeatureCache,
    FrozenBackbone,
    check_backbone_fits,
    compute_feature_cache,
    load_backbone,
)
from semmae.parts.export import iter_labels
from semmae.parts.labels import maps_to_labels
from semmae.parts.learner import PartLearner
from semmae.parts.losses import count_empty_parts, parts_loss
from semmae.runtime import autocast, resolve_device, seed_everything, step_generator, world_size
from semmae.viz.parts import part_grid

log = logging.getLogger(__name__)


def norm_stats(cfg: config_lib.Config, meta: dict[str, Any]) -> tuple[list[float], list[float]]:
    """Input normalisation: the backbone's own (as its loader reports it), except for a random
    backbone, which has none and takes the data section's."""
    mean, std = list(cfg.data.mean), list(cfg.data.std)
    if meta.get("kind") != "random" and meta.get("mean") and meta.get("std"):
        b_mean, b_std = [float(v) for v in meta["mean"]], [float(v) for v in meta["std"]]
        if (b_mean, b_std) != (mean, std):
            log.warning("using the backbone's normalisation mean=%s std=%s (data section says %s / %s)",
                        b_mean, b_std, mean, std)  # fmt: skip
        mean, std = b_mean, b_std
    return mean, std


class PartsTask(Task):
    """The part learner's (``model``) step on features of the frozen ``backbone`` for the training
    images ``ds``: cached at the centre crop (``cache``), or of augmented crops."""

    kind = "parts"
    model: PartLearner
    nonfinite_hint = "lower parts.lr or set parts.clip_grad=1.0"

    def __init__(self, cfg: config_lib.Config, device: torch.device, run_dir: Path, ds: Any,
                 backbone: FrozenBackbone, meta: dict[str, Any], learner: PartLearner, plan: Plan) -> None:  # fmt: skip
        self.cfg, self.device, self.run_dir, self.ds = cfg, device, run_dir, ds
        self.backbone, self.meta, self.model, self.plan = backbone, meta, learner, plan
        self.arch, self.clip_grad = dict(learner.arch), cfg.parts.clip_grad
        self.mean, self.std = norm_stats(cfg, meta)
        self.cache: FeatureCache | None = self.build_cache() if cfg.parts.cache_features else None
        self.last_terms: dict[str, torch.Tensor] = {}
        self.last_maps: torch.Tensor | None = None
        self.last_row: dict[str, Any] = {}  # the last log step's metrics

    def normalised_center(self, images_u8: torch.Tensor) -> torch.Tensor:
        """(B, C, S, S) uint8 -> centre-cropped, normalised float images on the device."""
        images01, _ = center_batch(images_u8, out_size=self.ds.image_size)
        return normalize(images01.to(self.device), self.mean, self.std)

    def build_cache(self) -> FeatureCache:
        """Backbone features of every training image at the centre crop."""

        def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            for images_u8, _, idx in iterate_batches(self.ds, torch.arange(len(self.ds)), 256):
                yield self.normalised_center(images_u8), idx

        dtype = torch.float16 if self.cfg.parts.cache_dtype == "float16" else torch.float32
        t0 = time.perf_counter()
        cache = compute_feature_cache(
            self.backbone, batches, device=self.device, dtype=dtype,
            autocast=lambda: autocast(self.device, self.cfg.train.precision),
        )  # fmt: skip
        log.info(
            "cached backbone features of %d images in %.1fs", len(cache.indices), time.perf_counter() - t0
        )
        return cache

    def batches(self, epoch: int, start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        bs, per_epoch = self.cfg.parts.batch_size, self.plan.steps_per_epoch
        perm = torch.randperm(len(self.ds), generator=step_generator(self.cfg.train.seed, 0, epoch))
        perm = perm[start * bs : per_epoch * bs]
        for images_u8, _, idx in iterate_batches(self.ds, perm, bs, drop_last=len(self.ds) >= bs):
            yield images_u8, idx

    def inputs(self, images_u8: torch.Tensor, idx: torch.Tensor, step: int) -> tuple[torch.Tensor, ...]:
        """(F, g, target) for one batch: from the cache (centre) or through augmentation + backbone."""
        if self.cache is not None:
            f, g = self.cache.get(idx, self.device)
            return f, g, self.normalised_center(images_u8)
        d = self.cfg.data
        images01, _ = augment_batch(
            images_u8, out_size=self.ds.image_size, scale=tuple(d.crop_scale), ratio=tuple(d.crop_ratio),
            hflip=d.hflip, generator=step_generator(self.cfg.train.seed, 1, step),
        )  # fmt: skip
        target = normalize(images01.to(self.device), self.mean, self.std)
        with autocast(self.device, self.cfg.train.precision):
            f, g = self.backbone(target)
        return f, g, target

    def step(self, net: nn.Module, batch: Any, step: int) -> tuple[torch.Tensor, int]:
        images_u8, idx = batch
        p = self.cfg.parts
        f, g, target = self.inputs(images_u8, idx, step)
        with autocast(self.device, self.cfg.train.precision):
            out = net(f, g)
        terms = parts_loss(
            out.recon, target, out.maps_raw, lambda_div=p.lambda_div, lambda_area=p.lambda_area
        )
        self.last_terms = {k: v.detach() for k, v in terms.items() if k != "loss"}
        self.last_maps = out.maps_raw.detach()
        return terms["loss"], len(idx)

    def log_metrics(self, step: int) -> dict[str, Any]:
        """The last step's loss terms, tau, empty parts and part areas (host syncs: log steps only)."""
        row: dict[str, Any] = {k: float(v) for k, v in self.last_terms.items()}
        maps = self.last_maps
        row.update(
            tau=float(self.model.tau),
            empty_parts=count_empty_parts(maps_to_labels(maps), self.model.num_parts, self.cfg.parts.min_part_share),
            area_hist=[round(float(v), 4) for v in maps.float().mean(dim=(0, 2, 3))],
        )  # fmt: skip
        self.last_row = row
        return row

    def on_epoch_end(self, epoch: int, step: int, final: bool) -> dict[str, Any]:
        done = step >= (epoch + 1) * self.plan.steps_per_epoch
        every, shown = self.cfg.parts.image_every_epochs, epoch + 1 if done else epoch
        if (done and every and (epoch + 1) % every == 0) or final:
            write_image_grid(self, self.run_dir / "images" / f"parts_epoch{shown:04d}_step{step:06d}.png")
        return {}

    def extra_state(self) -> dict[str, Any]:
        backbone: dict[str, Any] = {
            "spec": self.meta["spec"], "hash": self.meta["hash"], "global_token": self.backbone.global_token,
        }  # fmt: skip
        if self.meta.get("kind") == "random":
            # A random-init backbone cannot be rebuilt from its spec; keep its weights.
            backbone["state"] = self.backbone.encoder.state_dict()
        return {"backbone": backbone, "norm": {"mean": self.mean, "std": self.std}}

    def load_extra_state(self, ckpt: dict[str, Any]) -> None:
        if ckpt["backbone"]["hash"] != self.meta["hash"]:
            raise CheckpointError(
                f"the config does not match the run in {str(self.run_dir)!r}; resume with its config.yaml"
            )
        if "state" in ckpt["backbone"]:
            current = self.backbone.encoder.state_dict()
            same = all(torch.equal(v.cpu(), current[k].cpu()) for k, v in ckpt["backbone"]["state"].items())
            self.backbone.encoder.load_state_dict(ckpt["backbone"]["state"])
            if self.cache is not None and not same:
                self.cache = self.build_cache()


def _setup(
    cfg: config_lib.Config, out_dir: str | Path, resume: bool, overwrite: bool
) -> tuple[PartsTask, Any]:
    """Check the settings, then build the run directory, learner, optimiser and task."""
    config_lib.validate(cfg)
    if world_size() > 1:
        raise ConfigError("'semmae parts train' runs in one process; launch it without torchrun")
    device = resolve_device(cfg.train.device)
    seed_everything(cfg.train.seed)
    backbone, meta = load_backbone(cfg.parts.backbone, cfg.parts.global_token)
    # Checked against the config first so a mismatch fails before any data is read.
    check_backbone_fits(backbone, cfg.data.image_size, cfg.data.in_chans, cfg.parts.num_parts)
    # The same whole-image view that `parts export` labels (image folders; in-memory sets as they are).
    ds = whole_image_view(build_dataset(cfg.data, "train"))
    check_backbone_fits(backbone, ds.image_size, ds.in_chans, cfg.parts.num_parts)
    run_dir = prepare_run_dir(out_dir, cfg, resume=resume, overwrite=overwrite)
    backbone = backbone.to(device)
    learner = PartLearner(
        cfg.parts.learner_arch(), embed_dim=backbone.embed_dim, grid=backbone.grid,
        img_size=backbone.img_size, in_chans=backbone.in_chans,
    ).to(device)  # fmt: skip
    p = cfg.parts
    optimizer = adamw(
        [{"params": list(learner.parameters()), "weight_decay": p.weight_decay}], p.lr, (0.9, 0.999)
    )
    plan = make_plan(
        steps_per_epoch=max(1, len(ds) // p.batch_size), epochs=p.epochs, max_steps=p.max_steps,
        warmup_epochs=p.warmup_epochs, peak_lr=p.lr, min_lr=p.min_lr, effective_batch=p.batch_size,
        lr_settings=("parts.min_lr", "parts.lr"),
    )  # fmt: skip
    return PartsTask(cfg, device, run_dir, ds, backbone, meta, learner, plan), optimizer


@torch.no_grad()
def write_image_grid(run: PartsTask, path: Path) -> Path:
    """input | part overlay | reconstruction for the first ``parts.num_vis`` training images."""
    idx = torch.arange(min(run.cfg.parts.num_vis, len(run.ds)))
    x = run.normalised_center(run.ds.load(idx))
    run.model.eval()
    with autocast(run.device, run.cfg.train.precision):
        out = run.model(*run.backbone(x))
    run.model.train()
    maps = out.maps_raw if run.cfg.parts.label_source == "raw" else out.maps
    recon = denormalize(out.recon.float(), run.mean, run.std).clamp(0, 1)
    return part_grid(
        denormalize(x, run.mean, run.std),
        maps_to_labels(maps).long(),
        run.model.num_parts,
        path,
        recon=recon,
    )


def evaluate_parts(run: PartsTask, logger: MetricsLogger, step: int) -> dict[str, Any] | None:
    """Part metrics of the learner and of a k-means baseline on the test split's ground truth.

    Returns:
        ``{"learner": metrics, "kmeans": metrics | None, "num_images", "num_gt_parts", ...}`` or
        None when the dataset has no ground-truth part masks. Also written to ``partseg.json`` and
        logged to ``logger`` at ``step``.
    """
    ds = build_dataset(run.cfg.data, "test")
    if ds.part_masks is None or ds.num_gt_parts is None:
        return None
    p = run.cfg.parts
    n = len(ds) if p.eval_limit is None else min(p.eval_limit, len(ds))
    idx_all, labels, tokens = [], [], []
    run.model.eval()
    for idx, lab, tok in iter_labels(
        run.model, run.backbone, ds, torch.arange(n), batch_size=256, device=run.device,
        mean=run.mean, std=run.std, label_source=p.label_source, precision=run.cfg.train.precision,
        with_tokens=p.eval_kmeans,
    ):  # fmt: skip
        idx_all.append(idx)
        labels.append(lab.long())
        tokens.append(tok)
    gt = ds.part_masks[torch.cat(idx_all)].long()
    k, k_gt = run.model.num_parts, int(ds.num_gt_parts)
    result: dict[str, Any] = {
        "split": "test", "num_images": n, "num_parts": k, "num_gt_parts": k_gt,
        "grid": list(run.model.grid),
        "learner": part_metrics(torch.cat(labels), gt, k, k_gt, min_share=p.min_part_share),
        "kmeans": None,
    }  # fmt: skip
    if p.eval_kmeans:
        km = kmeans_part_baseline(
            torch.cat(tokens), k, seed=run.cfg.train.seed, grid=run.model.grid,
            center=run.model.center_tokens,
        )  # fmt: skip
        result["kmeans"] = part_metrics(km, gt, k, k_gt, min_share=p.min_part_share)
    (run.run_dir / "partseg.json").write_text(json.dumps(result, indent=2) + "\n")
    flat = {f"partseg/{who}_{m}": result[who][m] for who in ("learner", "kmeans") if result[who]
            for m in ("nmi", "ari", "miou", "empty_parts")}  # fmt: skip
    logger.log(step, **flat)
    return result


def run_parts_train(
    cfg: config_lib.Config,
    out_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    stop_at_step: int | None = None,
) -> dict[str, Any]:
    """Train the stage-1 part learner on a frozen backbone.

    Args:
        cfg: validated config; uses ``data``, ``parts`` and the run-level ``train`` fields.
        out_dir: the run directory.
        resume: continue the run in ``out_dir`` from ``checkpoints/last.pt``.
        overwrite: wipe ``out_dir`` first.
        stop_at_step: checkpoint and return after this step, as if interrupted (resume drills).

    Returns:
        ``run_dir``, ``checkpoint``, ``complete``, ``steps``, ``epochs``, the last logged
        ``loss``/``rec``/``div``/``empty_parts``, and ``partseg`` (the :func:`evaluate_parts`
        result or None); a stopped run returns ``{"interrupted": signum or -1, "step", ...}``.

    Raises:
        ConfigError, DataError, CheckpointError, RunDirError: user-fixable problems, one line each.
    """
    run, optimizer = _setup(cfg, out_dir, resume, overwrite)
    with MetricsLogger(run.run_dir) as logger:
        loop = TrainLoop(
            run, run.plan, optimizer, run.run_dir, logger, config=cfg.to_dict(), train=cfg.train,
            device=run.device, desc="parts",
        )  # fmt: skip
        if resume:
            loop.resume()
        log.info(
            "part learner: K=%d on a %dx%d grid, %d steps (%d per epoch), %s features",
            run.model.num_parts, *run.model.grid, run.plan.total_steps, run.plan.steps_per_epoch,
            "cached" if run.cache is not None else "augmented",
        )  # fmt: skip
        result = loop.run(stop_at_step)
        checkpoint = str(run.run_dir / "checkpoints" / "last.pt")
        if result.interrupted is not None:
            return {"interrupted": result.interrupted, "step": result.step, "run_dir": str(run.run_dir),
                    "checkpoint": checkpoint, "complete": False}  # fmt: skip
        partseg = evaluate_parts(run, logger, result.step)
    last = run.last_row
    return {
        "run_dir": str(run.run_dir), "checkpoint": checkpoint, "complete": True,
        "already_complete": result.already_complete, "steps": result.step, "epochs": result.epoch,
        "loss": finite_or_none(result.last_loss), "rec": last.get("rec"), "div": last.get("div"),
        "empty_parts": last.get("empty_parts"), "partseg": partseg,
    }  # fmt: skip
