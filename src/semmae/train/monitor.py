"""What a pretraining run shows while it trains: image grids, the kNN monitor, the summary."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

from semmae import runtime
from semmae.config import Config
from semmae.data import build_dataset
from semmae.data.transforms import center_batch, denormalize, labels_to_patch_grid, normalize
from semmae.engine.loop import LoopResult, finite_or_none
from semmae.engine.schedule import Plan
from semmae.eval.features import encode_batches, eval_batches
from semmae.eval.knn import knn_classify, topk_accuracy
from semmae.masking import MaskingStrategy
from semmae.masking import build as build_strategy
from semmae.models import MaskedAutoencoderViT
from semmae.viz.masks import mask_overlay_grid, save_tiles
from semmae.viz.recon import reconstruction_panels

log = logging.getLogger(__name__)

PROGRESS_POINTS = (0.0, 0.25, 0.5, 0.75, 1.0)


class PretrainMonitor:
    """Writes ``images/`` grids and kNN accuracy at epoch ends, and ``summary.json`` at the end.

    Only rank 0 does work; other ranks wait at a barrier.
    """

    def __init__(self, cfg: Config, run_dir: Path, model: MaskedAutoencoderViT, masking: MaskingStrategy,
                 device: torch.device, part_maps: Any | None, num_parts: int | None) -> None:  # fmt: skip
        self.cfg, self.run_dir, self.model, self.masking = cfg, Path(run_dir), model, masking
        self.device, self.part_maps, self.num_parts = device, part_maps, num_parts
        self.last_knn: float | None = None
        self._probe: dict[str, torch.Tensor] | None = None
        self._splits: dict[str, Any] = {}

    def split(self, name: str) -> Any:
        """The ``train`` or ``test`` dataset of ``cfg.data``, built once per run."""
        if name not in self._splits:
            self._splits[name] = build_dataset(self.cfg.data, name)
        return self._splits[name]

    def probe_batch(self) -> dict[str, torch.Tensor]:
        """8 fixed training images (normalised, centre) and their part labels, for every grid."""
        if self._probe is None:
            ds = self.split("train")
            idx = torch.arange(min(8, len(ds)))
            maps = self.part_maps.lookup(idx) if self.part_maps is not None else None
            x01, maps = center_batch(ds.load(idx), out_size=self.cfg.data.image_size, part_maps=maps)
            self._probe = {"images01": x01, "images": normalize(x01, self.cfg.data.mean, self.cfg.data.std)}
            if maps is not None:
                self._probe["labels"] = labels_to_patch_grid(maps, self.model.grid, self.num_parts)
        return self._probe

    def on_start(self) -> None:
        """For part-guided masking: one grid of the same images' masks across training progress."""
        if not runtime.is_main() or self.part_maps is None:
            runtime.barrier()
            return
        probe = self.probe_batch()
        labels = probe["labels"]
        masks = [self.masking(labels.shape[0], self.model.num_patches, part_labels=labels, num_parts=self.num_parts,
                              progress=p, generator=torch.Generator().manual_seed(0)).mask
                 for p in PROGRESS_POINTS]  # fmt: skip
        titles = ["parts"] + [f"progress {p:g}" for p in PROGRESS_POINTS]
        mask_overlay_grid(
            probe["images01"], labels, masks, self.model.grid, self.num_parts,
            self.run_dir / "images" / "masks_progress.png", titles=titles,
        )  # fmt: skip
        runtime.barrier()

    def on_epoch_end(self, epoch: int, final: bool) -> dict[str, Any]:
        """Grids every ``image_every_epochs`` and kNN every ``knn_every_epochs`` (and at the end)."""
        tc = self.cfg.train
        metrics: dict[str, Any] = {}
        if runtime.is_main():
            was_training = self.model.training
            self.model.eval()
            if final or (tc.image_every_epochs > 0 and (epoch + 1) % tc.image_every_epochs == 0):
                self.save_reconstructions(epoch + 1)
            knn_due = tc.knn_every_epochs > 0 and (epoch + 1) % tc.knn_every_epochs == 0
            if tc.knn_every_epochs >= 0 and (final or knn_due):
                metrics.update(self.knn())
            self.model.train(was_training)
        runtime.barrier()
        return metrics

    @torch.no_grad()
    def save_reconstructions(self, epoch: int) -> Path:
        """``images/recon_epoch_0003.png`` (4-digit epoch) for the probe images under a fixed random mask."""
        probe = self.probe_batch()
        x = probe["images"].to(self.device)
        mask = build_strategy("random", ratio=self.cfg.masking.ratio)(
            x.shape[0], self.model.num_patches, generator=torch.Generator().manual_seed(0), device=self.device
        )
        # forward, not __call__: a train.compile model would compile again (eval, no grad, batch 8).
        out = self.model.forward(x, mask)
        panels = reconstruction_panels(x, out.pred, out.mask, self.model.patch_size, self.model.norm_pix_loss)
        tiles = denormalize(panels.flatten(0, 1), self.cfg.data.mean, self.cfg.data.std).clamp(0, 1).cpu()
        path = self.run_dir / "images" / f"recon_epoch_{epoch:04d}.png"
        return save_tiles(tiles, path, panels.shape[1], upscale=max(1, 112 // panels.shape[-2]))

    def encode(self, dataset: Any, indices: torch.Tensor) -> torch.Tensor:
        """CLS features (N, D) float32, on the device, of ``dataset[indices]`` under the eval transform."""
        d = self.cfg.data
        batches = eval_batches(dataset, indices, 256, d.image_size, d.mean, d.std)
        feats, _ = encode_batches(self.model, batches, len(indices), device=self.device,
                                  precision=self.cfg.train.precision, progress=False, desc="kNN monitor")  # fmt: skip
        return feats.to(self.device)

    def knn(self) -> dict[str, float]:
        """Weighted kNN (k=20, T=0.07) on CLS features of held-out subsets of train and test."""
        t0 = time.perf_counter()
        tc, ec = self.cfg.train, self.cfg.eval
        train, test = self.split("train"), self.split("test")
        if int((train.targets >= 0).sum()) == 0:
            log.info("kNN monitor skipped: the dataset has no labels")
            return {}
        tr_idx = torch.arange(min(tc.knn_train, len(train)))
        if int(train.targets[tr_idx].unique().numel()) < 2:
            log.info("kNN monitor skipped: its images hold one class (any classifier scores 100%%)")
            return {}
        te_idx = torch.arange(min(tc.knn_test, len(test)))
        ftr, fte = (self.encode(ds, idx) for ds, idx in ((train, tr_idx), (test, te_idx)))
        tr_labels = train.targets[tr_idx].to(self.device)
        scores = knn_classify(
            ftr, tr_labels, fte, k=ec.knn_k, temperature=ec.knn_t, num_classes=len(train.classes)
        )
        res = topk_accuracy(scores, test.targets[te_idx].to(self.device))
        self.last_knn = float(res["top1"])
        log.info("kNN top1 %.2f%% (%d train / %d test, %.1fs)", self.last_knn, len(tr_idx), len(te_idx),
                 time.perf_counter() - t0)  # fmt: skip
        return {"knn_top1": self.last_knn}

    def summary(self, plan: Plan, result: LoopResult, digests: list[str]) -> dict[str, Any]:
        """The run's summary; written to ``summary.json`` only when training completed.

        ``digests`` holds every rank's parameter digest (identical under correct DDP). A ``--resume``
        of a finished run keeps the summary it already has and reports ``already_complete``.
        """
        if result.already_complete and (kept := result.early_summary(self.run_dir)) is not None:
            return kept
        done = result.interrupted is None and result.step >= plan.total_steps
        summary = {
            "complete": done, "step": result.step, "total_steps": plan.total_steps, "epochs": plan.epochs,
            "effective_batch": plan.effective_batch, "peak_lr": plan.peak_lr, "final_loss": finite_or_none(result.last_loss),
            "knn_top1": self.last_knn, "wall_s": round(result.wall_s, 2), "interrupted": result.interrupted,
            "masking": self.cfg.masking.name, "checkpoint": str(self.run_dir / "checkpoints" / "last.pt"),
            "world_size": runtime.world_size(), "rank_param_digests": digests,
        }  # fmt: skip
        if done and runtime.is_main():
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary
