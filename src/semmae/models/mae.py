"""Masked autoencoder with a ViT encoder (He et al., "Masked Autoencoders Are Scalable Vision
Learners", CVPR 2022), written afresh from the paper.

Parameter names follow the official MAE layout (``patch_embed``, ``cls_token``, ``pos_embed``,
``blocks``, ``norm``, ``decoder_*``, ``mask_token``) so official checkpoints load strictly, and the
encoder maps one-to-one onto a timm ``VisionTransformer``. The model draws no randomness: the caller
supplies the mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from semmae.layers import patchify, sincos_pos_embed_2d, unshuffle_tokens
from semmae.masking.base import MaskOutput
from semmae.models.vit_encoder import NORM_LAYER, ViTEncoder, vit_blocks


@dataclass
class MAEOutput:
    """Result of an MAE forward.

    Attributes:
        loss: scalar, mean per-patch MSE over hidden patches (float32).
        pred: (B, L, P*P*C) predicted pixels (normalised per patch when ``norm_pix_loss``).
        mask: (B, L) bool, True = hidden.
    """

    loss: torch.Tensor
    pred: torch.Tensor
    mask: torch.Tensor


class MaskedAutoencoderViT(ViTEncoder):
    """ViT encoder on visible patches + light ViT decoder on all positions.

    The encoder is :class:`~semmae.models.vit_encoder.ViTEncoder` itself (same parameter names);
    this class adds the decoder, the mask token and the loss.

    Args:
        img_size: square input side.
        patch_size: P; must divide ``img_size``.
        in_chans: C.
        embed_dim, depth, num_heads: encoder width, blocks, heads.
        decoder_embed_dim, decoder_depth, decoder_num_heads: decoder width, blocks, heads.
        mlp_ratio: MLP hidden width / token width in every block.
        norm_pix_loss: normalise each target patch by its own mean and variance (eps 1e-6).
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 1024,
        depth: int = 24,
        num_heads: int = 16,
        decoder_embed_dim: int = 512,
        decoder_depth: int = 8,
        decoder_num_heads: int = 16,
        mlp_ratio: float = 4.0,
        norm_pix_loss: bool = False,
    ) -> None:
        super().__init__(img_size, patch_size, in_chans, embed_dim, depth, num_heads, mlp_ratio)
        self.norm_pix_loss = norm_pix_loss
        self.arch.update(
            decoder_embed_dim=decoder_embed_dim, decoder_depth=decoder_depth,
            decoder_num_heads=decoder_num_heads, norm_pix_loss=norm_pix_loss,
        )  # fmt: skip
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim, bias=True)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(
            torch.zeros(1, self.num_patches + 1, decoder_embed_dim), requires_grad=False
        )
        self.decoder_blocks = vit_blocks(decoder_embed_dim, decoder_num_heads, mlp_ratio, decoder_depth)
        self.decoder_norm = NORM_LAYER(decoder_embed_dim)
        self.decoder_pred = nn.Linear(decoder_embed_dim, patch_size**2 * in_chans, bias=True)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """MAE's initialisation: the encoder's, plus decoder positions and N(0, .02) mask token."""
        super().reset_parameters()
        if hasattr(self, "decoder_pos_embed"):  # not yet built while the encoder initialises
            dec_dim = self.decoder_pos_embed.shape[-1]
            self.decoder_pos_embed.copy_(sincos_pos_embed_2d(dec_dim, self.grid).unsqueeze(0))
            nn.init.normal_(self.mask_token, std=0.02)

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """Predict every patch's pixels.

        Args:
            latent: (B, 1 + n_keep, D) encoder output.
            ids_restore: (B, L).

        Returns:
            (B, L, P*P*C).
        """
        x = self.decoder_embed(latent)
        patches = unshuffle_tokens(x[:, 1:, :], self.mask_token, ids_restore)
        x = torch.cat([x[:, :1, :], patches], dim=1) + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        x = self.decoder_norm(x)
        return self.decoder_pred(x)[:, 1:, :]

    def target(self, images: torch.Tensor) -> torch.Tensor:
        """Per-patch regression target (B, L, P*P*C), normalised per patch if ``norm_pix_loss``."""
        target = patchify(images.float(), self.patch_size)
        if self.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1e-6) ** 0.5
        return target

    def loss(self, images: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Per-patch MSE averaged over hidden patches only (float32)."""
        per_patch = (pred.float() - self.target(images)).pow(2).mean(dim=-1)
        m = mask.to(per_patch.dtype)
        return (per_patch * m).sum() / m.sum()

    def forward(
        self,
        images: torch.Tensor,
        ids_keep: torch.Tensor | MaskOutput,
        ids_restore: torch.Tensor | None = None,
    ) -> MAEOutput:
        """Encode visible patches, decode all, score hidden ones.

        Args:
            images: (B, C, H, W) normalised images.
            ids_keep: (B, n_keep) visible indices, or a :class:`MaskOutput` (then ``ids_restore``
                is taken from it). The mask is honoured exactly.
            ids_restore: (B, L) inverse permutation of ``cat(ids_keep, ids_mask)``.

        Returns:
            :class:`MAEOutput` with loss, prediction and mask.
        """
        if isinstance(ids_keep, MaskOutput):
            ids_keep, ids_restore = ids_keep.ids_keep, ids_keep.ids_restore
        if ids_restore is None:
            raise ValueError("ids_restore is required when ids_keep is a tensor")
        n_keep = ids_keep.shape[1]
        mask = ids_restore >= n_keep  # positions placed after the kept block are hidden
        latent = self.forward_features(images, ids_keep)
        pred = self.forward_decoder(latent, ids_restore)
        return MAEOutput(loss=self.loss(images, pred, mask), pred=pred, mask=mask)
