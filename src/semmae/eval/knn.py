"""Weighted k-nearest-neighbour classification of frozen features (DINO's protocol).

Caron et al., "Emerging Properties in Self-Supervised Vision Transformers" (ICCV 2021): features
are L2-normalised, the k training features with the highest cosine similarity vote for their
class with weight exp(sim / T). Defaults k = 20, T = 0.07.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch
import torch.nn.functional as F

from semmae import runtime
from semmae.config import Config
from semmae.eval.features import FeatureSet, prepare_features

log = logging.getLogger(__name__)


def knn_classify(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor,
    *,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """Class scores of every test feature.

    Args:
        train_feats: (N, D) training features (any scale; normalised here).
        train_labels: (N,) int64 in [0, num_classes).
        test_feats: (B, D) query features.
        k: neighbours; clamped to N.
        temperature: T of the exp(sim / T) vote weights.
        num_classes: C.
        chunk_size: queries per similarity matrix (memory is chunk_size x N).

    Returns:
        (B, C) float32 sums of vote weights (on the device of ``test_feats``).
    """
    if train_feats.shape[0] == 0:
        raise ValueError("kNN needs at least one training feature")
    if k < 1 or temperature <= 0:
        raise ValueError(f"kNN needs k >= 1 and temperature > 0, got k={k}, T={temperature}")
    device = test_feats.device
    train = F.normalize(train_feats.to(device).float(), dim=1)
    labels = train_labels.to(device).long()
    k = min(k, train.shape[0])
    scores = torch.zeros(test_feats.shape[0], num_classes, device=device)
    for start in range(0, test_feats.shape[0], chunk_size):
        query = F.normalize(test_feats[start : start + chunk_size].float(), dim=1)
        sims, idx = (query @ train.T).topk(k, dim=1)  # (b, k)
        weights = (sims / temperature).exp()
        scores[start : start + query.shape[0]].scatter_add_(1, labels[idx], weights)
    return scores


def topk_accuracy(
    scores: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)
) -> dict[str, float]:
    """Percent of rows whose label is among the ``k`` highest scores, for each ``k`` in ``ks``.

    Args:
        scores: (B, C) scores or logits.
        labels: (B,) int64.
        ks: which top-k to report; a k larger than C is left out.

    Returns:
        ``{"top1": ..., "top5": ...}`` in percent.
    """
    out: dict[str, float] = {}
    num_classes = scores.shape[1]
    wanted = [k for k in ks if k <= num_classes]
    if not wanted or scores.shape[0] == 0:
        return {f"top{k}": float("nan") for k in wanted}
    pred = scores.topk(max(wanted), dim=1).indices  # (B, kmax)
    hit = pred == labels.to(scores.device).view(-1, 1)
    for k in wanted:
        out[f"top{k}"] = 100.0 * hit[:, :k].any(dim=1).sum().item() / hit.shape[0]
    return out


def run_knn(
    cfg: Config,
    spec: str,
    *,
    progress: bool = True,
    loaded: tuple[Any, dict[str, Any]] | None = None,
    features: FeatureSet | None = None,
) -> dict[str, Any]:
    """The kNN evaluation of an encoder on ``cfg.data`` (train split = memory, test split = queries).

    Args:
        cfg: the resolved config (``data``, ``eval.knn_k``, ``eval.knn_t``, ``eval.feature``,
            ``train.device``, ``train.precision``).
        spec: the encoder (see :func:`~semmae.models.encoder.load_encoder`).
        progress: show progress bars.
        loaded: ``load_encoder(spec)``'s result when the caller already has it.
        features: features already extracted for ``spec`` (then nothing is loaded).

    Returns:
        ``{"eval": "knn", "top1", ["top5"], "k", "t", "checkpoint", "dataset", "feature",
        "n_train", "n_test", "seconds", ...}``.
    """
    t0 = time.perf_counter()
    fs = features if features is not None else prepare_features(cfg, spec, progress=progress, loaded=loaded)
    device = runtime.resolve_device(cfg.train.device)
    k = min(cfg.eval.knn_k, len(fs.train_labels))  # what knn_classify uses; the log and result say it
    if k < cfg.eval.knn_k:
        log.warning("eval.knn_k=%d is more than the %d training images: using k=%d", cfg.eval.knn_k, k, k)
    scores = knn_classify(
        fs.train_feats.to(device),
        fs.train_labels,
        fs.test_feats.to(device),
        k=k,
        temperature=cfg.eval.knn_t,
        num_classes=fs.num_classes,
        chunk_size=cfg.eval.knn_chunk_size,
    )
    acc = topk_accuracy(scores, fs.test_labels)
    seconds = time.perf_counter() - t0
    log.info("kNN (k=%d, T=%g): top1 %.2f%%", k, cfg.eval.knn_t, acc["top1"])
    return {
        "eval": "knn",
        **acc,
        "k": k,
        "t": cfg.eval.knn_t,
        **fs.info,
        "seconds": round(seconds, 2),
    }
