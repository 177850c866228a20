"""The ViT encoder shared by the MAE (which extends it with a decoder) and every evaluation.

Parameter names (``patch_embed``, ``cls_token``, ``pos_embed``, ``blocks``, ``norm``) are those of
the official MAE and of a timm ``VisionTransformer``.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Block
from torch import nn

from semmae.layers import gather_tokens, sincos_pos_embed_2d

ENCODER_KEYS = ("patch_embed.", "cls_token", "pos_embed", "blocks.", "norm.")
ARCH_FIELDS = ("img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads", "mlp_ratio")
NORM_LAYER = partial(nn.LayerNorm, eps=1e-6)  # the MAE's (and timm's ViT) LayerNorm


def vit_blocks(dim: int, num_heads: int, mlp_ratio: float, depth: int) -> nn.ModuleList:
    """``depth`` timm transformer blocks of width ``dim`` as the MAE uses them (qkv bias, :data:`NORM_LAYER`)."""
    return nn.ModuleList(
        [Block(dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=NORM_LAYER) for _ in range(depth)]
    )


class ViTEncoder(nn.Module):
    """ViT encoder: patch embedding, CLS token, fixed sin-cos positions, blocks, final LayerNorm.

    Args:
        img_size: square input side S.
        patch_size: P; must divide ``img_size``.
        in_chans: C.
        embed_dim: D.
        depth: number of transformer blocks.
        num_heads: attention heads per block.
        mlp_ratio: MLP hidden width / D.
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"patch size {patch_size} does not divide image size {img_size}")
        self.img_size, self.patch_size, self.in_chans = img_size, patch_size, in_chans
        self.embed_dim, self.depth, self.num_heads = embed_dim, depth, num_heads
        self.grid = (img_size // patch_size, img_size // patch_size)
        self.num_patches = self.grid[0] * self.grid[1]
        values = (img_size, patch_size, in_chans, embed_dim, depth, num_heads, float(mlp_ratio))
        self.arch = dict(zip(ARCH_FIELDS, values, strict=True))  # what checkpoints and exports record
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        # Fixed sin-cos positions as in the MAE (a buffer-like parameter keeps the state-dict name).
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_patches + 1, embed_dim), requires_grad=False)
        self.blocks = vit_blocks(embed_dim, num_heads, mlp_ratio, depth)
        self.norm = NORM_LAYER(embed_dim)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The MAE's initialisation: sin-cos positions, xavier linears, N(0, .02) CLS token."""
        self.pos_embed.copy_(sincos_pos_embed_2d(self.embed_dim, self.grid).unsqueeze(0))
        w = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, images: torch.Tensor, ids_keep: torch.Tensor | None = None) -> torch.Tensor:
        """Tokens after the final norm, of all patches or only the visible ones.

        Args:
            images: (B, C, S, S) normalised images.
            ids_keep: (B, n_keep) indices of the patches to encode (MAE's visible set), or None
                for all of them.

        Returns:
            (B, 1 + L, D) (or (B, 1 + n_keep, D)), CLS first, then patches in raster (or
            ``ids_keep``) order.
        """
        if images.ndim != 4 or images.shape[1:] != (self.in_chans, self.img_size, self.img_size):
            raise ValueError(
                f"expected images of shape (B, {self.in_chans}, {self.img_size}, {self.img_size}), "
                f"got {tuple(images.shape)}"
            )
        x = self.patch_embed(images) + self.pos_embed[:, 1:, :]
        if ids_keep is not None:
            x = gather_tokens(x, ids_keep)
        cls = (self.cls_token + self.pos_embed[:, :1, :]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Same as :meth:`forward_features`: (B, C, S, S) -> (B, 1 + L, D)."""
        return self.forward_features(images)

    @classmethod
    def from_arch(cls, arch: dict[str, Any]) -> ViTEncoder:
        """Build from an MAE or encoder ``arch`` dict (decoder fields are ignored)."""
        return cls(**{k: arch[k] for k in ARCH_FIELDS if k in arch})
