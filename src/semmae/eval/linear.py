"""Linear probe on frozen features (MAE's protocol, at small scale), a whole lr grid in one pass.

MAE (He et al., CVPR 2022) probes the frozen CLS feature with ``BatchNorm1d(affine=False)`` and a
linear layer, LARS at batch 16384, base lr 0.1, no weight decay, 90 epochs. Here features are
computed once and cached; the probe trains with SGD (momentum 0.9), a fine small-batch stand-in for
LARS, or AdamW (``eval.linear_optimizer``), with per-step warm-up and cosine decay.

The lr grid is ONE module: G linear layers with their own parameters (and their own optimiser
param groups, i.e. their own lr), evaluated together as a batched matmul over a leading grid axis,
so each epoch reads the features once for all G members. Every member sees the same batches in the
same order and the BatchNorm has no parameters, so its statistics are by construction the same for
every member: one shared BatchNorm holds them (G copies would be G identical tensors). Each member
therefore trains exactly as it would alone (tested). A deterministic ``eval.linear_val_frac`` share
of the training set is held out; the lr with the best held-out top-1 is chosen (ties: the first in
the list) and its test accuracy reported. With ``linear_val_frac=0`` the choice falls back to the
training accuracy.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any, get_args

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from semmae import runtime
from semmae.config import Config
from semmae.engine.schedule import warmup_cosine
from semmae.errors import ConfigError
from semmae.eval.features import FeatureSet, prepare_features
from semmae.eval.knn import topk_accuracy
from semmae.names import ProbeOptimizer

log = logging.getLogger(__name__)

OPTIMIZERS = get_args(ProbeOptimizer)
BN_EPS = 1e-6  # MAE's probe BatchNorm only standardises the features
HEAD_INIT_STD = 0.01  # a small head: the standardised features start near a uniform prediction


class ProbeGrid(nn.Module):
    """G linear probes on one shared, parameter-free BatchNorm of the same input.

    Args:
        dim: D, the feature width.
        num_classes: C.
        grid_size: G.
        generator: seeds the weights (trunc-normal std 0.01, as MAE's probe head); every member
            gets the same initial weights, so members differ only in their learning rate.
    """

    def __init__(
        self, dim: int, num_classes: int, grid_size: int, generator: torch.Generator | None = None
    ) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(dim, affine=False, eps=BN_EPS)
        init = nn.init.trunc_normal_(torch.empty(dim, num_classes), std=HEAD_INIT_STD, generator=generator)
        self.weights = nn.ParameterList([nn.Parameter(init.clone()) for _ in range(grid_size)])
        self.biases = nn.ParameterList([nn.Parameter(torch.zeros(num_classes)) for _ in range(grid_size)])

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """(B, D) features -> (G, B, C) logits of every member."""
        z = self.bn(feats)
        w = torch.stack(list(self.weights))  # (G, D, C)
        b = torch.stack(list(self.biases))  # (G, C)
        return torch.einsum("bd,gdc->gbc", z, w) + b[:, None, :]

    def member_params(self, g: int) -> list[nn.Parameter]:
        """The parameters of member ``g``."""
        return [self.weights[g], self.biases[g]]


def _optimizer(
    grid: ProbeGrid, lrs: Sequence[float], name: str, weight_decay: float
) -> torch.optim.Optimizer:
    groups = [{"params": grid.member_params(g), "lr": lr, "peak_lr": lr} for g, lr in enumerate(lrs)]
    if name == "sgd":
        return torch.optim.SGD(groups, momentum=0.9, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(groups, weight_decay=weight_decay)
    raise ConfigError(
        f"config key 'eval.linear_optimizer' must be one of {', '.join(OPTIMIZERS)}; got {name!r}"
    )


def train_probe_grid(
    feats: torch.Tensor,
    labels: torch.Tensor,
    *,
    lrs: Sequence[float],
    num_classes: int,
    epochs: int,
    batch_size: int,
    optimizer: str = "sgd",
    weight_decay: float = 0.0,
    warmup_epochs: float = 0.0,
    seed: int = 0,
    progress: bool = True,
) -> ProbeGrid:
    """Train one probe per lr in ``lrs`` on (N, D) ``feats`` and (N,) ``labels``, all at once.

    Batches: a fresh permutation per epoch from a generator seeded by (seed, epoch); the last
    partial batch is dropped when N > batch_size (BatchNorm needs > 1 sample).

    Returns:
        The trained :class:`ProbeGrid` in eval mode, on the device of ``feats``.
    """
    n = feats.shape[0]
    if n < 2:
        raise ConfigError(f"the linear probe needs at least 2 training images, got {n}")
    grid = ProbeGrid(feats.shape[1], num_classes, len(lrs), torch.Generator().manual_seed(seed)).to(
        feats.device
    )
    opt = _optimizer(grid, lrs, optimizer, weight_decay)
    bs = min(batch_size, n)
    steps_per_epoch = max(1, n // bs)
    total, warmup = epochs * steps_per_epoch, round(warmup_epochs * steps_per_epoch)
    labels = labels.to(feats.device)
    grid.train()
    step = 0
    for epoch in tqdm(
        range(epochs), desc="linear probe", unit="epoch", disable=None if progress else True, leave=False
    ):
        perm = torch.randperm(n, generator=runtime.step_generator(seed, epoch)).to(feats.device)
        for i in range(steps_per_epoch):
            idx = perm[i * bs : (i + 1) * bs]
            for group in opt.param_groups:
                group["lr"] = warmup_cosine(step, total, warmup, group["peak_lr"], 0.0)
            logits = grid(feats[idx])  # (G, b, C)
            # sum over members: each member's gradient is its own mean cross-entropy's
            loss = (
                F.cross_entropy(logits.flatten(0, 1), labels[idx].repeat(len(lrs)), reduction="sum")
                / idx.numel()
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
    return grid.eval()


@torch.no_grad()
def probe_scores(grid: ProbeGrid, feats: torch.Tensor, chunk_size: int = 8192) -> torch.Tensor:
    """(G, N, C) logits of every member on (N, D) features (eval-mode BatchNorm)."""
    grid.eval()
    return torch.cat([grid(feats[i : i + chunk_size]) for i in range(0, feats.shape[0], chunk_size)], dim=1)


def _split(n: int, val_frac: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic (train indices, held-out indices) of ``n`` items."""
    n_val = 0 if val_frac <= 0 else max(1, round(n * val_frac))
    if n - n_val < 2:
        raise ConfigError(
            f"eval.linear_val_frac={val_frac} leaves fewer than 2 of {n} images to train the probe"
        )
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[n_val:], perm[:n_val]


def linear_probe(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor,
    test_labels: torch.Tensor,
    *,
    num_classes: int,
    lrs: Sequence[float],
    epochs: int,
    batch_size: int,
    val_frac: float = 0.1,
    optimizer: str = "sgd",
    weight_decay: float = 0.0,
    warmup_epochs: float = 0.0,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Train the lr grid on train minus a held-out share, pick on it, score the pick on test.

    Args:
        train_feats, test_feats: (N, D), (M, D) frozen features (same device).
        train_labels, test_labels: (N,), (M,) int64.
        num_classes: C.
        lrs: the learning-rate grid (peak lr of each member).
        epochs, batch_size, optimizer, weight_decay, warmup_epochs: the probe's training.
        val_frac: share of train held out to choose the lr.
        seed: seeds the split, the init and the batch order.
        progress: show a progress bar.

    Returns:
        ``{"top1", ["top5"], "lr", "val_top1", "grid": {lr: held-out top1}, "n_fit", "n_val"}``
        (accuracies in percent).
    """
    if not lrs:
        raise ConfigError("config key 'eval.linear_lrs' needs at least one learning rate")
    fit_idx, val_idx = _split(train_feats.shape[0], val_frac, seed)
    dev = train_feats.device
    fit_idx, val_idx = fit_idx.to(dev), val_idx.to(dev)
    grid = train_probe_grid(
        train_feats[fit_idx],
        train_labels.to(dev)[fit_idx],
        lrs=lrs,
        num_classes=num_classes,
        epochs=epochs,
        batch_size=batch_size,
        optimizer=optimizer,
        weight_decay=weight_decay,
        warmup_epochs=warmup_epochs,
        seed=seed,
        progress=progress,
    )
    sel_idx = val_idx if val_idx.numel() else fit_idx
    best, sel_top1 = _choose_lr(grid, lrs, train_feats[sel_idx], train_labels.to(dev)[sel_idx])
    test = topk_accuracy(probe_scores(grid, test_feats)[best], test_labels)
    grid_acc = {str(lr): a for lr, a in zip(lrs, sel_top1, strict=True)}
    return {
        **test, "lr": lrs[best], "val_top1": sel_top1[best], "grid": grid_acc,
        "n_fit": len(fit_idx), "n_val": len(val_idx),
    }  # fmt: skip


def _choose_lr(
    grid: ProbeGrid, lrs: Sequence[float], feats: torch.Tensor, labels: torch.Tensor
) -> tuple[int, list[float]]:
    """The grid member with the best top-1 on ``(feats (N, D), labels (N,))``, the first listed on ties.

    Returns:
        ``(index of the chosen lr, top-1 of every member in percent)``.
    """
    top1 = [topk_accuracy(s, labels, (1,))["top1"] for s in probe_scores(grid, feats)]
    best = max(range(len(lrs)), key=lambda g: (top1[g], -g))
    if len(lrs) > 1 and lrs[best] in (max(lrs), min(lrs)):
        log.warning(
            "the chosen lr %g is at the edge of eval.linear_lrs; a wider grid may do better", lrs[best]
        )
    return best, top1


def run_linear(
    cfg: Config,
    spec: str,
    *,
    progress: bool = True,
    loaded: tuple[Any, dict[str, Any]] | None = None,
    features: FeatureSet | None = None,
) -> dict[str, Any]:
    """The linear-probe evaluation of an encoder on ``cfg.data`` (see the module docstring).

    Args:
        cfg: the resolved config (``data``, ``eval.linear_*``, ``eval.feature``, ``train.device``,
            ``train.precision``, ``train.seed``).
        spec, progress, loaded, features: as for :func:`~semmae.eval.knn.run_knn`.

    Returns:
        ``{"eval": "linear", "protocol": "fast", "top1", ["top5"], "lr", "val_top1", "grid", "epochs", "optimizer",
        "checkpoint", "dataset", "feature", "n_train", "n_test", "seconds", ...}``.
    """
    e = cfg.eval
    t0 = time.perf_counter()
    fs = features if features is not None else prepare_features(cfg, spec, progress=progress, loaded=loaded)
    device = runtime.resolve_device(cfg.train.device)
    res = linear_probe(
        fs.train_feats.to(device),
        fs.train_labels,
        fs.test_feats.to(device),
        fs.test_labels,
        num_classes=fs.num_classes,
        lrs=e.linear_lrs,
        epochs=e.linear_epochs,
        batch_size=e.linear_batch_size,
        val_frac=e.linear_val_frac,
        optimizer=e.linear_optimizer,
        weight_decay=e.linear_weight_decay,
        warmup_epochs=e.linear_warmup_epochs,
        seed=cfg.train.seed,
        progress=progress,
    )
    seconds = time.perf_counter() - t0
    log.info("linear probe: lr %g, top1 %.2f%% (held-out %.2f%%)", res["lr"], res["top1"], res["val_top1"])
    return {
        "eval": "linear",
        "protocol": "fast",
        **res,
        "epochs": e.linear_epochs,
        "optimizer": e.linear_optimizer,
        **fs.info,
        "seconds": round(seconds, 2),
    }
