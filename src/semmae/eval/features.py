"""Passes over a dataset under the eval transform: frozen features, classifier accuracy, and the
shared set-up of the frozen-feature evaluations.

Eval transform: centre (``semmae.data.transforms.center_batch``, no randomness) then normalise with
the encoder's mean/std. Features:

* ``cls``: the CLS token after the encoder's final LayerNorm (what MAE's linear probe uses);
* ``mean``: the mean of the L patch tokens after that same final norm. (MAE's fine-tuning
  classifier instead pools *before* a separate ``fc_norm``; a frozen encoder has no ``fc_norm``,
  so its own output tokens are pooled.)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, get_args

import torch
from torch import nn
from tqdm import tqdm

from semmae import runtime
from semmae.config import Config
from semmae.data import build_dataset, iterate_batches
from semmae.data.transforms import center_batch, normalize
from semmae.errors import ConfigError, DataError
from semmae.models.encoder import check_encoder_fits, load_encoder
from semmae.names import FeatureName

log = logging.getLogger(__name__)

FEATURES = get_args(FeatureName)


class TokenEncoder(Protocol):
    """Anything with ``forward_features(images (B, C, S, S)) -> (B, 1 + L, D)`` (encoder or MAE)."""

    img_size: int

    def forward_features(self, images: torch.Tensor) -> torch.Tensor: ...


def pool_tokens(tokens: torch.Tensor, feature: str) -> torch.Tensor:
    """(B, 1 + L, D) tokens -> (B, D): the CLS token (``cls``) or the patch-token mean (``mean``)."""
    if feature == "cls":
        return tokens[:, 0]
    if feature == "mean":
        return tokens[:, 1:].mean(dim=1)
    raise ConfigError(f"feature {feature!r} must be one of {', '.join(FEATURES)}")


@torch.no_grad()
def encode_batches(
    encoder: TokenEncoder,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    num_images: int,
    *,
    feature: str = "cls",
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    progress: bool = True,
    desc: str = "features",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pool the encoder's tokens over a stream of ready (normalised) batches.

    Args:
        encoder: module with ``forward_features``; put in eval mode here (and restored after).
        batches: ``(images (B, C, S, S) float, targets (B,))`` in order; ``num_images`` in total.
        num_images: N, to pre-allocate the outputs and size the progress bar.
        feature: ``cls`` or ``mean``.
        device: where the encoder runs.
        precision: ``fp32`` or ``bf16`` (autocast); features are returned as float32.
        progress: show a tqdm bar (hidden when not a terminal).
        desc: the bar's label.

    Returns:
        ``(features (N, D) float32 on CPU, targets (N,) int64 on CPU)``.
    """
    device = torch.device(device)
    pool_tokens(torch.zeros(1, 2, 1), feature)  # fail on a bad name before any work
    was_training = getattr(encoder, "training", False)
    encoder.eval()  # type: ignore[attr-defined]
    feats: torch.Tensor | None = None
    targets = torch.empty(num_images, dtype=torch.long)
    pos = 0
    bar = tqdm(total=num_images, desc=desc, unit="img", disable=None if progress else True, leave=False)
    try:
        for images, labels in batches:
            with runtime.autocast(device, precision):
                pooled = pool_tokens(encoder.forward_features(images.to(device, non_blocking=True)), feature)
            if feats is None:
                feats = torch.empty(num_images, pooled.shape[-1], dtype=torch.float32)
            n = pooled.shape[0]
            feats[pos : pos + n] = pooled.float().cpu()
            targets[pos : pos + n] = labels.cpu()
            pos += n
            bar.update(n)
    finally:
        bar.close()
        encoder.train(was_training)  # type: ignore[attr-defined]
    if pos != num_images:
        raise ValueError(f"expected {num_images} images, the batches held {pos}")
    return (feats if feats is not None else torch.empty(0, 0)), targets


def eval_batches(
    dataset: Any,
    indices: torch.Tensor,
    batch_size: int,
    out_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    num_workers: int = 0,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Eval-transformed batches ``(normalised images (B, C, S, S) float, targets (B,))`` on CPU.

    The transform is deterministic: centre to ``out_size`` (``center_batch``), then ``normalize``.
    """
    for images_u8, targets, _ in iterate_batches(dataset, indices, batch_size, num_workers=num_workers):
        images01, _ = center_batch(images_u8, out_size=out_size)
        yield normalize(images01, mean, std), targets


@torch.no_grad()
def evaluate_classifier(
    model: nn.Module,
    dataset: Any,
    *,
    num_classes: int,
    batch_size: int,
    device: torch.device,
    precision: str,
    mean: list[float],
    std: list[float],
    out_size: int,
    num_workers: int = 0,
) -> dict[str, float]:
    """Top-1 (and top-5 when C >= 5) in percent of a classifier on a split, under the eval transform.

    Args:
        model: maps (B, C, S, S) normalised images to (B, num_classes) logits; put in eval mode.
        dataset: the split; under DDP each rank scores every world-size-th image and the counts
            are summed over ranks.
        num_classes: C.
        batch_size, device, precision, num_workers: how the forward passes run.
        mean, std, out_size: the eval transform (centre to ``out_size``, normalise).
    """
    model.eval()
    indices = torch.arange(len(dataset))[runtime.rank() :: runtime.world_size()]
    counts = torch.zeros(3, device=device)  # top-1 hits, top-5 hits, images
    for images, targets in eval_batches(dataset, indices, batch_size, out_size, mean, std, num_workers):
        with runtime.autocast(device, precision):
            logits = model(images.to(device)).float()
        hit = logits.topk(min(5, num_classes), dim=1).indices == targets.to(device).view(-1, 1)
        counts += torch.stack(
            [hit[:, 0].sum(), hit.any(dim=1).sum(), torch.tensor(hit.shape[0], device=device)]
        )
    counts = runtime.all_reduce_mean(counts) * runtime.world_size()
    n = max(1.0, float(counts[2]))
    out = {"top1": 100.0 * float(counts[0]) / n}
    if num_classes >= 5:
        out["top5"] = 100.0 * float(counts[1]) / n
    return out


@dataclass
class FeatureSet:
    """Frozen train/test features of one encoder on one dataset, with what produced them.

    Attributes:
        train_feats, test_feats: (N_train, D), (N_test, D) float32.
        train_labels, test_labels: (N_train,), (N_test,) int64.
        num_classes: number of classes of the dataset.
        info: what every result reports (encoder spec, dataset, feature, N, extraction seconds).
    """

    train_feats: torch.Tensor
    train_labels: torch.Tensor
    test_feats: torch.Tensor
    test_labels: torch.Tensor
    num_classes: int
    info: dict[str, Any]


def require_labels(
    cfg: Config, split: str, classes: list[str], targets: torch.Tensor, needed_by: str = "this evaluation",
    way_out: str = "",
) -> None:  # fmt: skip
    """Refuse a split without class labels, or with one class only (DataError).

    With one class every prediction is right: kNN, probes and fine-tuning would report 100%.
    ``needed_by`` names, in the error, what needs the labels, and ``way_out`` ends it with another
    way out than labelled data (e.g. ``"; or leave ..."``).

    Args:
        cfg: the config whose ``data`` the split is of (its name is in the error).
        split: ``train`` or ``test``.
        classes: the split's class names.
        targets: (N,) int64 class indices, -1 where unlabelled.
    """
    if targets.numel() == 0 or not classes or bool((targets < 0).any()):
        raise DataError(
            f"the {split} split of dataset {cfg.data.name!r} has no class labels; "
            f"{needed_by} needs a labelled dataset (one subfolder per class){way_out}"
        )
    if int(targets.unique().numel()) < 2:  # data.limit may keep one class only
        raise DataError(
            f"the {split} split of dataset {cfg.data.name!r} holds one class, so any classifier scores "
            f"100%; {needed_by} needs at least two (one subfolder per class; raise data.limit if set){way_out}"
        )


def labelled_split(cfg: Config, split: str) -> Any:
    """Build ``split`` of ``cfg.data`` and refuse an unlabelled or one-class one (see :func:`require_labels`)."""
    ds = build_dataset(cfg.data, split)
    require_labels(cfg, split, list(ds.classes), torch.as_tensor(ds.targets))
    return ds


def prepare_features(
    cfg: Config, spec: str, *, progress: bool = True, loaded: tuple[Any, dict[str, Any]] | None = None
) -> FeatureSet:
    """Load the encoder of ``spec``, check it fits ``cfg.data``, and extract train/test features.

    Runs on ``cfg.train.device`` with ``cfg.train.precision``; ``cfg.eval.feature`` picks the feature.
    ``loaded`` is ``load_encoder(spec)``'s result when the caller already has it.

    Raises:
        CheckpointError: ``spec`` holds no encoder. ConfigError: the encoder does not fit the data.
        DataError: missing or unlabelled dataset.
    """
    device = runtime.resolve_device(cfg.train.device)
    encoder, meta = loaded if loaded is not None else load_encoder(spec, map_location=device)
    encoder = encoder.to(device)
    check_encoder_fits(encoder, cfg.data.image_size, cfg.data.in_chans)
    train, test = labelled_split(cfg, "train"), labelled_split(cfg, "test")

    def features(split: Any) -> tuple[torch.Tensor, torch.Tensor]:
        batches = eval_batches(
            split,
            torch.arange(len(split)),
            cfg.eval.batch_size,
            encoder.img_size,
            meta["mean"],
            meta["std"],
            cfg.data.num_workers,
        )
        return encode_batches(
            encoder,
            batches,
            len(split),
            feature=cfg.eval.feature,
            device=device,
            precision=cfg.train.precision,
            progress=progress,
            desc=f"{split.split} features",
        )

    t0 = time.perf_counter()
    ftr, ytr = features(train)
    fte, yte = features(test)
    seconds = time.perf_counter() - t0
    log.info("features: %d train + %d test images in %.1fs", len(ytr), len(yte), seconds)
    info = {
        "checkpoint": spec,
        "dataset": cfg.data.name,
        "feature": cfg.eval.feature,
        "n_train": len(ytr),
        "n_test": len(yte),
        "feature_seconds": round(seconds, 2),
    }
    return FeatureSet(ftr, ytr, fte, yte, len(train.classes), info)
