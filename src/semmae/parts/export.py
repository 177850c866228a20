"""Label whole splits with a trained part learner and write part-map files (DESIGN.md §4).

The file format (``.npy`` uint8 (N, h, w) + JSON manifest) belongs to
:mod:`semmae.data.partmaps`; this module only produces the labels. Each image is labelled on a
view of the WHOLE image: an image folder's file is resized to S x S ignoring its aspect ratio
(``semmae.data.folder.whole_image_view``; no letterbox, so no label is spent on padding), and the
small in-memory sets are stored that way already. The manifest records it as ``view: "whole"``,
and pretraining picks each crop's region out of the map. Under ``torchrun`` every rank
labels one contiguous shard of the split into the same memory-mapped file.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from semmae import config as config_lib
from semmae.data import build_dataset, iterate_batches
from semmae.data.folder import whole_image_view
from semmae.data.oracle import part_maps_from_masks
from semmae.data.partmap_writer import PartMapWriter, recover_set_aside_pair, write_part_maps
from semmae.data.partmaps import manifest_path, npy_path
from semmae.data.transforms import center_batch, normalize
from semmae.errors import CheckpointError, ConfigError, RunDirError
from semmae.file_kinds import refuse_part_map_out
from semmae.models.checkpoint import file_hash, load_checkpoint, load_state_strict
from semmae.parts.backbone import FrozenBackbone, load_backbone
from semmae.parts.labels import maps_to_labels
from semmae.parts.learner import PartLearner
from semmae.runtime import (
    autocast,
    barrier,
    broadcast_object,
    distributed_session,
    rank,
    resolve_device,
    world_size,
)

log = logging.getLogger(__name__)


def resolve_checkpoint(run: str | Path) -> Path:
    """A run directory's ``checkpoints/last.pt``, or ``run`` itself when it is a file."""
    path = Path(run)
    if path.is_file():
        return path
    ckpt = path / "checkpoints" / "last.pt"
    if not ckpt.is_file():
        raise CheckpointError(
            f"no part-learner checkpoint at {str(ckpt)!r}; train one with 'semmae parts train'"
        )
    return ckpt


def restore_backbone(ckpt: dict[str, Any], device: torch.device) -> FrozenBackbone:
    """Rebuild the frozen backbone a part-learner checkpoint was trained on.

    Raises:
        CheckpointError: the backbone file changed since training.
    """
    info = ckpt["backbone"]
    backbone, meta = load_backbone(info["spec"], info.get("global_token", "cls"))
    if "state" in info:  # a random-init backbone cannot be rebuilt from its spec: restore its weights
        load_state_strict(backbone.encoder, info["state"])
    elif meta["hash"] != info["hash"]:
        raise CheckpointError(
            f"backbone {info['spec']!r} changed since the part learner was trained (hash {meta['hash']} "
            f"!= {info['hash']}); restore that file or retrain the part learner"
        )
    return backbone.to(device)


def load_part_learner(
    run: str | Path, device: torch.device
) -> tuple[PartLearner, FrozenBackbone, dict[str, Any], Path]:
    """Load a trained part learner, its backbone and its checkpoint dict.

    Args:
        run: a ``semmae parts train`` run directory or its checkpoint file.
        device: where to put the modules.

    Returns:
        ``(learner (eval mode), backbone, checkpoint dict, checkpoint path)``.

    Raises:
        CheckpointError: missing or not a part-learner checkpoint.
    """
    path = resolve_checkpoint(run)
    ckpt = load_checkpoint(path)
    if ckpt.get("kind") != "parts":
        raise CheckpointError(
            f"checkpoint {str(path)!r} is a {ckpt.get('kind')!r} checkpoint, not a part learner"
        )
    learner = PartLearner.from_arch(ckpt["arch"])
    load_state_strict(learner, ckpt["model"])
    backbone = restore_backbone(ckpt, device)
    return learner.to(device).eval(), backbone, ckpt, path


@torch.no_grad()
def iter_labels(
    learner: PartLearner,
    backbone: FrozenBackbone,
    ds: Any,
    indices: torch.Tensor,
    *,
    batch_size: int,
    device: torch.device,
    mean: list[float],
    std: list[float],
    scale: int = 1,
    label_source: str = "raw",
    precision: str = "fp32",
    progress: bool = False,
    with_tokens: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
    """Label images in batches, each as ``ds`` reads it (export passes the whole-image view).

    Args:
        learner, backbone: trained modules on ``device``.
        ds: an ImageSet.
        indices: (N,) image indices, visited in order.
        batch_size: images per batch.
        device: where to run.
        mean, std: input normalisation of the backbone.
        scale: label-grid refinement (1 = patch grid).
        label_source: ``raw`` or ``blurred`` maps.
        precision: ``fp32`` or ``bf16``.
        progress: show a tqdm bar.
        with_tokens: also yield the backbone patch tokens (for the k-means baseline).

    Yields:
        ``(indices (B,), labels (B, h*scale, w*scale) uint8 on CPU, patch tokens (B, L, D) | None)``.
    """
    bar = tqdm(total=len(indices), desc="labelling", unit="img", disable=None if progress else True)
    for images_u8, _, idx in iterate_batches(ds, indices, batch_size):
        images01, _ = center_batch(images_u8, out_size=ds.image_size)
        x = normalize(images01.to(device), mean, std)
        with autocast(device, precision):
            f, g = backbone(x)
            out = learner(f, g)
        maps = out.maps_raw if label_source == "raw" else out.maps
        yield idx, maps_to_labels(maps, scale).cpu(), f.float().cpu() if with_tokens else None
        bar.update(len(idx))
    bar.close()


def _out_refusal(out_path: str | Path, overwrite: bool) -> str | None:
    """Why ``out_path`` may not be written (:func:`~semmae.file_kinds.refuse_part_map_out`), or None.

    An old pair a killed export left set aside is put back first, so it counts. Rank 0 only.
    """
    recover_set_aside_pair(npy_path(out_path))
    try:
        refuse_part_map_out(out_path, overwrite=overwrite)
    except RunDirError as exc:
        return str(exc)
    return None


def _warn_if_unfinished(ckpt: dict[str, Any], path: Path) -> None:
    """Say so when the part learner stopped before the end of its plan (its parts are not final)."""
    total = (ckpt.get("plan") or {}).get("total_steps")
    step = ckpt.get("step")
    if isinstance(total, int) and isinstance(step, int) and step < total and rank() == 0:
        log.warning(
            "the part learner in %s stopped at step %d of %d: its parts are not the finished ones; "
            "finish it with `semmae parts train --config RUN/config.yaml --out RUN --resume` first",
            path, step, total,
        )  # fmt: skip


def shard(num_images: int, rank_: int, world: int) -> torch.Tensor:
    """Contiguous index range of one rank: rank r gets [r*N/W, (r+1)*N/W)."""
    lo, hi = num_images * rank_ // world, num_images * (rank_ + 1) // world
    return torch.arange(lo, hi)


def export_part_maps(
    run_dir: str | Path,
    split: str,
    out_path: str | Path,
    *,
    batch_size: int = 256,
    device: str = "auto",
    overwrite: bool = False,
    progress: bool = True,
) -> Any:
    """Label every image of ``split`` with a trained part learner and write a part-map file.

    Args:
        run_dir: the part-learner run directory (or its checkpoint file).
        split: ``train`` or ``test``.
        out_path: the ``.npy`` file to write (its manifest goes next to it).
        batch_size: images per forward.
        device: ``auto``, ``cpu``, ``cuda``...
        overwrite: replace an existing file.
        progress: show a tqdm bar (rank 0).

    Returns:
        The :class:`semmae.data.partmaps.PartMapManifest` written.

    Raises:
        ConfigError: ``batch_size`` < 1.
        RunDirError: ``out_path`` holds files semmae did not write, or exists and ``overwrite``
            is False.
        CheckpointError: no usable part-learner checkpoint.
    """
    if batch_size < 1:
        raise ConfigError(f"the export batch size must be at least 1, got {batch_size}")
    dev = resolve_device(device)
    with distributed_session(dev):
        # Rank 0's view decides, so no rank sees the file another rank has just created.
        refusal = broadcast_object(_out_refusal(out_path, overwrite) if rank() == 0 else None)
        if refusal is not None:
            raise RunDirError(refusal)
        learner, backbone, ckpt, ckpt_path = load_part_learner(run_dir, dev)
        _warn_if_unfinished(ckpt, ckpt_path)
        cfg = config_lib.from_dict(ckpt["config"])
        ds = whole_image_view(build_dataset(cfg.data, split))
        scale = cfg.parts.export_scale
        grid = (learner.grid[0] * scale, learner.grid[1] * scale)
        writer = PartMapWriter.create(
            out_path, num_images=len(ds), grid=grid, dataset=ds.name, split=split,
            image_size=ds.image_size, num_parts=learner.num_parts, fingerprint=ds.fingerprint(),
            learner_hash=file_hash(ckpt_path), source="learner",
        )  # fmt: skip
        norm = ckpt["norm"]
        with writer:  # an error or Ctrl-C deletes the temporary files: the old pair stays
            for idx, labels, _ in iter_labels(
                learner, backbone, ds, shard(len(ds), rank(), world_size()), batch_size=batch_size,
                device=dev, mean=norm["mean"], std=norm["std"], scale=scale,
                label_source=cfg.parts.label_source, precision=cfg.train.precision,
                progress=progress and rank() == 0,
            ):  # fmt: skip
                writer.write(idx, labels)
            barrier()
            manifest = writer.close()
    log.info(
        "wrote %d part maps (%dx%d, K=%d) to %s and %s",
        len(ds), *grid, learner.num_parts, npy_path(out_path), manifest_path(out_path),
    )  # fmt: skip
    return manifest


def maps_from_masks(
    cfg: config_lib.Config, split: str, grid: int, out_path: str | Path, *, overwrite: bool = False
) -> Any:
    """Oracle part maps from a dataset's ground-truth part masks (majority vote per grid cell).

    Lets stage 2 run before stage 1, and gives stage 1 an upper reference.

    Args:
        cfg: config whose data section names a dataset with part masks (``toy_parts``).
        split: ``train`` or ``test``.
        grid: side h = w of the label grid (at most the image size).
        out_path: ``.npy`` file to write.
        overwrite: replace an existing file.

    Returns:
        The manifest written.

    Raises:
        DataError: the dataset has no part masks, or the grid is out of range.
        RunDirError: ``out_path`` holds files semmae did not write, or exists and ``overwrite``
            is False.
    """
    refusal = _out_refusal(out_path, overwrite)
    if refusal is not None:
        raise RunDirError(refusal)
    ds = build_dataset(cfg.data, split)
    labels = part_maps_from_masks(ds, (grid, grid))
    return write_part_maps(
        out_path, labels, dataset=ds.name, split=split, image_size=ds.image_size,
        num_parts=int(ds.num_gt_parts), fingerprint=ds.fingerprint(), learner_hash=None, source="oracle",
    )  # fmt: skip


__all__ = [
    "export_part_maps",
    "file_hash",
    "iter_labels",
    "load_part_learner",
    "maps_from_masks",
    "resolve_checkpoint",
    "shard",
]
