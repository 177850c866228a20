"""The frozen ViT backbone of stage 1 and its optional feature cache (DESIGN.md §2.2.1).

The part learner never trains the backbone: :class:`FrozenBackbone` keeps it in eval mode, with
no gradients, and turns its ``forward_features`` output into patch tokens F (B, L, D) and a global
token g (B, D). For small datasets, :func:`compute_feature_cache` runs the backbone once over the
un-augmented images so that the learner trains on the stored (F, g).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from semmae.errors import ConfigError
from semmae.models.checkpoint import backbone_hash
from semmae.models.encoder import check_encoder_fits, load_encoder

log = logging.getLogger(__name__)

_GLOBAL_TOKENS = ("cls", "mean")


class FrozenBackbone(nn.Module):
    """A ViT encoder used as a fixed feature extractor.

    Args:
        encoder: any module with ``forward_features(images) -> (B, 1 + L, D)`` (CLS first) and
            attributes ``img_size``, ``in_chans``, ``grid``, ``embed_dim``.
        global_token: ``cls`` (the CLS output, as the paper) or ``mean`` of the patch tokens.

    Raises:
        ConfigError: unknown ``global_token``.
    """

    def __init__(self, encoder: nn.Module, global_token: str = "cls") -> None:
        super().__init__()
        if global_token not in _GLOBAL_TOKENS:
            raise ConfigError(f"config key 'parts.global_token' must be cls or mean, got {global_token!r}")
        self.encoder = encoder
        self.global_token = global_token
        self.img_size = int(encoder.img_size)
        self.in_chans = int(encoder.in_chans)
        self.grid = (int(encoder.grid[0]), int(encoder.grid[1]))
        self.num_patches = self.grid[0] * self.grid[1]
        self.embed_dim = int(encoder.embed_dim)
        self.encoder.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> FrozenBackbone:
        """Always eval mode: dropout and drop-path stay off whatever the caller asks."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Patch tokens and global token of normalised images.

        Args:
            images: (B, C, H, W) normalised as the backbone was trained.

        Returns:
            ``(F, g)``: F (B, L, D) patch tokens in raster order, g (B, D).
        """
        tokens = self.encoder.forward_features(images)
        patches = tokens[:, 1:, :]
        glob = tokens[:, 0, :] if self.global_token == "cls" else patches.mean(dim=1)
        return patches, glob


def check_backbone_fits(backbone: FrozenBackbone, image_size: int, in_chans: int, num_parts: int) -> None:
    """Refuse a backbone that cannot read the data, or a K the grid cannot hold.

    Raises:
        ConfigError: image size or channels differ (see :func:`check_encoder_fits`), or K < 2, or K > L.
    """
    check_encoder_fits(backbone.encoder, image_size, in_chans)
    if num_parts < 2:
        raise ConfigError(f"config key 'parts.num_parts' must be at least 2, got {num_parts}")
    if num_parts > backbone.num_patches:
        raise ConfigError(
            f"config key 'parts.num_parts' ({num_parts}) exceeds the backbone's {backbone.num_patches} "
            f"patches per image; use at most {backbone.num_patches}"
        )


def load_backbone(spec: str | None, global_token: str = "cls") -> tuple[FrozenBackbone, dict[str, Any]]:
    """Load an encoder through :func:`semmae.models.encoder.load_encoder` and freeze it.

    Args:
        spec: checkpoint path, timm weights file, or ``random:<mae preset>``.
        global_token: ``cls`` or ``mean``.

    Returns:
        ``(backbone, meta)``; ``meta`` holds the loader's metadata (``mean``/``std`` when known,
        ``source``) plus ``spec`` and ``hash``.

    Raises:
        ConfigError: no spec given.
    """
    if not spec:
        raise ConfigError(
            "config key 'parts.backbone' is not set; point it at an encoder checkpoint, e.g. "
            "parts.backbone=runs/mae/checkpoints/last.pt"
        )
    encoder, meta = load_encoder(spec, map_location="cpu")
    return FrozenBackbone(encoder, global_token), {**meta, "spec": spec, "hash": backbone_hash(spec)}


@dataclass
class FeatureCache:
    """Backbone outputs for a fixed list of images (centre transform, normalised).

    Attributes:
        indices: (N,) dataset indices, in cache row order.
        patch_tokens: (N, L, D) on CPU, in the cache dtype.
        global_tokens: (N, D) on CPU.
    """

    indices: torch.Tensor
    patch_tokens: torch.Tensor
    global_tokens: torch.Tensor

    def __post_init__(self) -> None:
        # Dataset index -> cache row, built once: the training loop looks rows up every step.
        self._lookup = torch.full((int(self.indices.max()) + 1,), -1, dtype=torch.long)
        self._lookup[self.indices] = torch.arange(len(self.indices))

    def get(self, indices: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(F (B, L, D), g (B, D)) of dataset ``indices`` (B,) as float32 on ``device``.

        Raises:
            KeyError: an index has no row in the cache.
        """
        indices = indices.cpu().long()
        rows = self._lookup[indices.clamp_max(len(self._lookup) - 1)]
        if bool(((indices >= len(self._lookup)) | (rows < 0)).any()):
            raise KeyError("some indices are not in the feature cache")
        return (
            self.patch_tokens[rows].to(device, torch.float32),
            self.global_tokens[rows].to(device, torch.float32),
        )


@torch.no_grad()
def compute_feature_cache(
    backbone: FrozenBackbone,
    batches: Callable[[], Any],
    *,
    device: torch.device,
    dtype: torch.dtype = torch.float16,
    autocast: Callable[[], Any] = contextlib.nullcontext,
) -> FeatureCache:
    """Run the backbone once over ready-made batches and keep its outputs on CPU.

    Args:
        backbone: the frozen backbone (already on ``device``).
        batches: a callable returning an iterator of ``(images (B, C, H, W) normalised, indices (B,))``.
        device: where the backbone runs.
        dtype: storage dtype of the cache (float16 halves memory; tokens are LayerNorm outputs).
        autocast: context-manager factory the backbone runs under (e.g. bf16 autocast).

    Returns:
        The :class:`FeatureCache`.
    """
    idx_list, f_list, g_list = [], [], []
    for images, indices in batches():
        with autocast():
            f, g = backbone(images.to(device))
        f_list.append(f.to("cpu", dtype))
        g_list.append(g.to("cpu", dtype))
        idx_list.append(indices.cpu().long())
    if not idx_list:
        raise ValueError("no images to cache")
    return FeatureCache(torch.cat(idx_list), torch.cat(f_list), torch.cat(g_list))
