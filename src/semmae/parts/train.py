"""Training loop of the stage-1 part learner (DESIGN.md §2.2), in one process.

Writes a run directory (DESIGN.md §4): ``config.yaml``, ``metrics.jsonl`` + ``tb/`` (loss terms,
tau, part-area entropy, empty parts), ``checkpoints/last.pt`` (full state, atomic), ``images/``
(input | part overlay | reconstruction per epoch) and, when the test split has ground-truth
part masks, ``partseg.json`` with the learner's and a k-means baseline's part metrics.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from semmae import config as config_lib
from semmae.engine.logging import MetricsLogger
from semmae.engine.rundir import prepare_run_dir
from semmae.engine.schedule import set_lr, warmup_cosine
from semmae.errors import CheckpointError, ConfigError, SemmaeError
from semmae.models.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from semmae.parts.backbone import (
    FeatureCache,
    FrozenBackbone,
    check_backbone_fits,
    compute_feature_cache,
    load_backbone,
)
from semmae.parts.labels import maps_to_labels
from semmae.parts.learner import PartLearner
from semmae.parts.losses import count_empty_parts, parts_loss
from semmae.runtime import autocast, resolve_device, seed_everything, step_generator, world_size

log = logging.getLogger(__name__)


def learner_kwargs(parts: config_lib.PartsConfig, backbone: FrozenBackbone) -> dict[str, Any]:
    """Constructor arguments of the :class:`PartLearner` for this config and backbone."""
    return dict(
        embed_dim=backbone.embed_dim, num_parts=parts.num_parts, grid=list(backbone.grid),
        img_size=backbone.img_size, in_chans=backbone.in_chans, tau=parts.tau,
        learn_tau=parts.learn_tau, tau_min=parts.tau_min, mlp_hidden=parts.mlp_hidden,
        center_tokens=parts.center_tokens,
        blur_sigma=parts.blur_sigma, blur_padding=parts.blur_padding,
        straight_through=parts.straight_through, style_dim=parts.style_dim,
        decoder_channels=parts.decoder_channels, decoder_min_channels=parts.decoder_min_channels,
        decoder_upsample=parts.decoder_upsample,
    )  # fmt: skip


def norm_stats(cfg: config_lib.Config, meta: dict[str, Any]) -> tuple[list[float], list[float]]:
    """Input normalisation: the backbone's own (as its loader reports it), except for a random
    backbone, which has none and takes the data section's."""
    mean, std = list(cfg.data.mean), list(cfg.data.std)
    if meta.get("kind") != "random" and meta.get("mean") and meta.get("std"):
        b_mean, b_std = [float(v) for v in meta["mean"]], [float(v) for v in meta["std"]]
        if (b_mean, b_std) != (mean, std):
            log.warning(
                "using the backbone's normalisation mean=%s std=%s (data section says %s / %s)",
                b_mean,
                b_std,
                mean,
                std,
            )
        mean, std = b_mean, b_std
    return mean, std


@dataclass
class _Run:
    """Everything the loop touches."""

    cfg: config_lib.Config
    device: torch.device
    run_dir: Path
    ds: Any
    backbone: FrozenBackbone
    meta: dict[str, Any]
    learner: PartLearner
    optimizer: torch.optim.Optimizer
    mean: list[float]
    std: list[float]
    cache: FeatureCache | None
    steps_per_epoch: int
    total_steps: int
    step: int = 0
    epoch: int = 0


def _normalised_center(run: _Run, images_u8: torch.Tensor) -> torch.Tensor:
    from semmae.data.transforms import center_batch, normalize

    images01, _ = center_batch(images_u8, out_size=run.ds.image_size)
    return normalize(images01.to(run.device), run.mean, run.std)


def _build_cache(run: _Run) -> FeatureCache:
    from semmae.data import iterate_batches

    def batches():  # noqa: ANN202 - iterator of (images, indices)
        for images_u8, _, idx in iterate_batches(run.ds, torch.arange(len(run.ds)), 256):
            yield _normalised_center(run, images_u8), idx

    dtype = torch.float16 if run.cfg.parts.cache_dtype == "float16" else torch.float32
    t0 = time.perf_counter()
    cache = compute_feature_cache(
        run.backbone, batches, device=run.device, dtype=dtype,
        autocast=lambda: autocast(run.device, run.cfg.train.precision),
    )  # fmt: skip
    log.info("cached backbone features of %d images in %.1fs", len(cache.indices), time.perf_counter() - t0)
    return cache


def _setup(cfg: config_lib.Config, out_dir: str | Path, resume: bool, overwrite: bool) -> _Run:
    from semmae.data import build_dataset

    config_lib.validate(cfg)
    if world_size() > 1:
        raise ConfigError("'semmae parts train' runs in one process; launch it without torchrun")
    device = resolve_device(cfg.train.device)
    seed_everything(cfg.train.seed)
    backbone, meta = load_backbone(cfg.parts.backbone, cfg.parts.global_token)
    # Checked against the config first so a mismatch fails before any data is read.
    check_backbone_fits(backbone, cfg.data.image_size, cfg.data.in_chans, cfg.parts.num_parts)
    ds = build_dataset(cfg.data, "train")
    check_backbone_fits(backbone, ds.image_size, ds.in_chans, cfg.parts.num_parts)
    run_dir = prepare_run_dir(out_dir, cfg, resume=resume, overwrite=overwrite)
    backbone = backbone.to(device)
    learner = PartLearner(**learner_kwargs(cfg.parts, backbone)).to(device)
    optimizer = torch.optim.AdamW(learner.parameters(), lr=cfg.parts.lr, weight_decay=cfg.parts.weight_decay)
    bs = cfg.parts.batch_size
    steps_per_epoch = max(1, len(ds) // bs)
    total = cfg.parts.max_steps or cfg.parts.epochs * steps_per_epoch
    mean, std = norm_stats(cfg, meta)
    run = _Run(
        cfg, device, run_dir, ds, backbone, meta, learner, optimizer, mean, std, None, steps_per_epoch, total
    )
    if cfg.parts.cache_features:
        run.cache = _build_cache(run)
    return run


def _checkpoint_state(run: _Run) -> dict[str, Any]:
    backbone_info: dict[str, Any] = {
        "spec": run.meta["spec"], "hash": run.meta["hash"], "global_token": run.backbone.global_token,
    }  # fmt: skip
    if str(run.meta["spec"]).startswith("random:"):
        # A random-init backbone cannot be rebuilt from its spec; keep its weights.
        backbone_info["state"] = run.backbone.encoder.state_dict()
    return {
        "kind": "parts",
        "model": run.learner.state_dict(),
        "arch": dict(run.learner.arch),
        "backbone": backbone_info,
        "norm": {"mean": run.mean, "std": run.std},
        "config": run.cfg.to_dict(),
        "step": run.step,
        "epoch": run.epoch,
        "optimizer": run.optimizer.state_dict(),
        "rng": rng_state(),
    }


def _resume(run: _Run) -> None:
    path = run.run_dir / "checkpoints" / "last.pt"
    if not path.is_file():
        log.info("no checkpoint in %s; starting from scratch", run.run_dir)
        return
    ckpt = load_checkpoint(path)
    if ckpt.get("kind") != "parts":
        raise CheckpointError(f"{str(path)!r} is not a part-learner checkpoint")
    if ckpt["arch"] != run.learner.arch or ckpt["backbone"]["hash"] != run.meta["hash"]:
        raise CheckpointError(
            f"the config does not match the run in {str(run.run_dir)!r}; resume with its config.yaml"
        )
    run.learner.load_state_dict(ckpt["model"])
    if "state" in ckpt["backbone"]:
        current = run.backbone.encoder.state_dict()
        same = all(torch.equal(v.cpu(), current[k].cpu()) for k, v in ckpt["backbone"]["state"].items())
        run.backbone.encoder.load_state_dict(ckpt["backbone"]["state"])
        if run.cfg.parts.cache_features and not same:
            run.cache = _build_cache(run)
    run.optimizer.load_state_dict(ckpt["optimizer"])
    run.step, run.epoch = int(ckpt["step"]), int(ckpt["epoch"])
    set_rng_state(ckpt["rng"])
    log.info("resumed %s at step %d (epoch %d)", run.run_dir, run.step, run.epoch)


def _batch_inputs(run: _Run, images_u8: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(F, g, target) for one batch: from the cache (centre) or through augmentation + backbone."""
    if run.cache is not None:
        f, g = run.cache.get(idx, run.device)
        return f, g, _normalised_center(run, images_u8)
    from semmae.data.transforms import augment_batch, normalize

    d = run.cfg.data
    images01, _ = augment_batch(
        images_u8, out_size=run.ds.image_size, scale=tuple(d.crop_scale), ratio=tuple(d.crop_ratio),
        hflip=d.hflip, generator=step_generator(run.cfg.train.seed, 1, run.step),
    )  # fmt: skip
    target = normalize(images01.to(run.device), run.mean, run.std)
    with autocast(run.device, run.cfg.train.precision):
        f, g = run.backbone(target)
    return f, g, target


def _train_step(
    run: _Run, images_u8: torch.Tensor, idx: torch.Tensor
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    p = run.cfg.parts
    lr = warmup_cosine(run.step, run.total_steps, int(p.warmup_epochs * run.steps_per_epoch), p.lr, p.min_lr)
    set_lr(run.optimizer, lr)
    f, g, target = _batch_inputs(run, images_u8, idx)
    with autocast(run.device, run.cfg.train.precision):
        out = run.learner(f, g)
    terms = parts_loss(out.recon, target, out.maps_raw, lambda_div=p.lambda_div, lambda_area=p.lambda_area)
    run.optimizer.zero_grad(set_to_none=True)
    terms["loss"].backward()
    if p.clip_grad is not None:
        torch.nn.utils.clip_grad_norm_(run.learner.parameters(), p.clip_grad)
    run.optimizer.step()
    terms = {k: v.detach() for k, v in terms.items()}
    terms["lr"] = torch.tensor(lr)
    return terms, out.maps_raw.detach()


def _log_step(
    run: _Run, logger: MetricsLogger, terms: dict[str, torch.Tensor], maps: torch.Tensor, img_s: float
) -> dict[str, Any]:
    row: dict[str, Any] = {k: float(v) for k, v in terms.items()}
    if not math.isfinite(row["loss"]):
        raise SemmaeError(f"the part-learner loss became non-finite at step {run.step}; lower parts.lr")
    labels = maps_to_labels(maps)
    row.update(
        epoch=run.epoch, tau=float(run.learner.tau), img_per_s=round(img_s, 1),
        empty_parts=count_empty_parts(labels, run.learner.num_parts, run.cfg.parts.min_part_share),
        area_hist=[round(float(v), 4) for v in maps.float().mean(dim=(0, 2, 3))],
    )  # fmt: skip
    logger.log(run.step, **row)
    return row


@torch.no_grad()
def write_image_grid(run: _Run, path: Path) -> Path:
    """input | part overlay | reconstruction for the first ``parts.num_vis`` training images."""
    from semmae.data.transforms import denormalize
    from semmae.viz.parts import part_grid

    idx = torch.arange(min(run.cfg.parts.num_vis, len(run.ds)))
    x = _normalised_center(run, run.ds.load(idx))
    run.learner.eval()
    with autocast(run.device, run.cfg.train.precision):
        out = run.learner(*run.backbone(x))
    run.learner.train()
    maps = out.maps_raw if run.cfg.parts.label_source == "raw" else out.maps
    recon = denormalize(out.recon.float(), run.mean, run.std).clamp(0, 1)
    return part_grid(
        denormalize(x, run.mean, run.std),
        maps_to_labels(maps).long(),
        run.learner.num_parts,
        path,
        recon=recon,
    )


def _run_epochs(run: _Run, logger: MetricsLogger) -> dict[str, Any]:
    from semmae.data import iterate_batches

    tc, p = run.cfg.train, run.cfg.parts
    bs, last_row = p.batch_size, {}
    bar = tqdm(
        total=run.total_steps,
        initial=run.step,
        desc="parts",
        unit="step",
        disable=None if tc.progress_bar else True,
    )
    t0, seen = time.perf_counter(), 0
    while run.step < run.total_steps:
        perm = torch.randperm(len(run.ds), generator=step_generator(tc.seed, 0, run.epoch))
        skip = run.step - run.epoch * run.steps_per_epoch
        perm = perm[skip * bs : run.steps_per_epoch * bs]
        for images_u8, _, idx in iterate_batches(run.ds, perm, bs, drop_last=len(run.ds) >= bs):
            terms, maps = _train_step(run, images_u8, idx)
            run.step += 1
            seen += len(idx)
            bar.update(1)
            if run.step % tc.log_every == 0 or run.step == run.total_steps:
                last_row = _log_step(run, logger, terms, maps, seen / max(1e-9, time.perf_counter() - t0))
                bar.set_postfix(loss=f"{last_row['loss']:.4f}", img_s=f"{last_row['img_per_s']:.0f}")
                t0, seen = time.perf_counter(), 0
            if tc.ckpt_every_steps and run.step % tc.ckpt_every_steps == 0:
                save_checkpoint(run.run_dir / "checkpoints" / "last.pt", _checkpoint_state(run))
            if run.step >= run.total_steps:
                break
        done_epoch = run.step >= (run.epoch + 1) * run.steps_per_epoch
        if done_epoch:
            run.epoch += 1
        every = p.image_every_epochs
        if (done_epoch and every and run.epoch % every == 0) or run.step >= run.total_steps:
            write_image_grid(
                run, run.run_dir / "images" / f"parts_epoch{run.epoch:04d}_step{run.step:06d}.png"
            )
        save_checkpoint(run.run_dir / "checkpoints" / "last.pt", _checkpoint_state(run))
    bar.close()
    return last_row


def evaluate_parts(run: _Run, logger: MetricsLogger | None = None) -> dict[str, Any] | None:
    """Part metrics of the learner and of a k-means baseline on the test split's ground truth.

    Returns:
        ``{"learner": metrics, "kmeans": metrics | None, "num_images", "num_gt_parts", ...}`` or
        None when the dataset has no ground-truth part masks. Also written to ``partseg.json``.
    """
    from semmae.data import build_dataset
    from semmae.eval.partseg import kmeans_part_baseline, part_metrics
    from semmae.parts.export import iter_labels

    ds = build_dataset(run.cfg.data, "test")
    if ds.part_masks is None or ds.num_gt_parts is None:
        return None
    p = run.cfg.parts
    n = len(ds) if p.eval_limit is None else min(p.eval_limit, len(ds))
    idx_all, labels, tokens = [], [], []
    run.learner.eval()
    for idx, lab, tok in iter_labels(
        run.learner, run.backbone, ds, torch.arange(n), batch_size=256, device=run.device,
        mean=run.mean, std=run.std, label_source=p.label_source, precision=run.cfg.train.precision,
        with_tokens=p.eval_kmeans,
    ):  # fmt: skip
        idx_all.append(idx)
        labels.append(lab.long())
        tokens.append(tok)
    gt = ds.part_masks[torch.cat(idx_all)].long()
    k, k_gt = run.learner.num_parts, int(ds.num_gt_parts)
    result: dict[str, Any] = {
        "split": "test", "num_images": n, "num_parts": k, "num_gt_parts": k_gt,
        "grid": list(run.learner.grid),
        "learner": part_metrics(torch.cat(labels), gt, k, k_gt, min_share=p.min_part_share),
        "kmeans": None,
    }  # fmt: skip
    if p.eval_kmeans:
        km = kmeans_part_baseline(
            torch.cat(tokens), k, seed=run.cfg.train.seed, grid=run.learner.grid,
            center=run.learner.center_tokens,
        )  # fmt: skip
        result["kmeans"] = part_metrics(km, gt, k, k_gt, min_share=p.min_part_share)
    (run.run_dir / "partseg.json").write_text(json.dumps(result, indent=2) + "\n")
    if logger is not None:
        flat = {f"partseg/{who}_{m}": result[who][m] for who in ("learner", "kmeans") if result[who]
                for m in ("nmi", "ari", "miou", "empty_parts")}  # fmt: skip
        logger.log(run.step, **flat)
    return result


def run_parts_train(
    cfg: config_lib.Config, out_dir: str | Path, *, resume: bool = False, overwrite: bool = False
) -> dict[str, Any]:
    """Train the stage-1 part learner on a frozen backbone.

    Args:
        cfg: validated config; uses ``data``, ``parts`` and the run-level ``train`` fields.
        out_dir: the run directory.
        resume: continue the run in ``out_dir`` from ``checkpoints/last.pt``.
        overwrite: wipe ``out_dir`` first.

    Returns:
        ``run_dir``, ``checkpoint``, ``steps``, ``epochs``, the last logged ``loss``/``rec``/``div``,
        and ``partseg`` (the :func:`evaluate_parts` result or None).

    Raises:
        ConfigError, DataError, CheckpointError, RunDirError: user-fixable problems, one line each.
    """
    run = _setup(cfg, out_dir, resume, overwrite)
    if resume:
        _resume(run)
    log.info(
        "part learner: K=%d on a %dx%d grid, %d steps (%d per epoch), %s features",
        run.learner.num_parts, *run.learner.grid, run.total_steps, run.steps_per_epoch,
        "cached" if run.cache is not None else "augmented",
    )  # fmt: skip
    with MetricsLogger(run.run_dir) as logger:
        last = _run_epochs(run, logger) if run.step < run.total_steps else {}
        partseg = evaluate_parts(run, logger)
    return {
        "run_dir": str(run.run_dir),
        "checkpoint": str(run.run_dir / "checkpoints" / "last.pt"),
        "steps": run.step,
        "epochs": run.epoch,
        "loss": last.get("loss"),
        "rec": last.get("rec"),
        "div": last.get("div"),
        "empty_parts": last.get("empty_parts"),
        "partseg": partseg,
    }
