"""The semantic part learner of SemMAE stage 1 (Li et al., NeurIPS 2022; DESIGN.md §2.2).

From a frozen backbone's patch tokens F (B, L, D) and global token g (B, D):

1. an MLP maps g to K part tokens Q (B, K, D);
2. S = <normalize(Q), normalize(F - mean_l F)> / tau, (B, K, L) (centring optional);
3. softmax over K -> a soft partition A (B, K, h, w) of every patch location;
4. a fixed depthwise 3x3 Gaussian blur of each map (the blur of a partition is a partition),
   optionally of the hard argmax partition with straight-through gradients;
5. a StyleGAN-like decoder reconstructs the image from the blurred maps, with appearance from g.

The paper leaves the widths, the temperature and the blur open; they are the fields of
:class:`semmae.config.PartLearnerArch`, which the ``parts`` config section builds.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from semmae.config_parts import PartLearnerArch
from semmae.errors import CheckpointError
from semmae.parts.decoder import StyleDecoder

_PADDING = typing.get_args(typing.get_type_hints(PartLearnerArch)["blur_padding"])
SIZES = ("embed_dim", "grid", "img_size", "in_chans")
"""The learner's sizes that the backbone fixes; with the :class:`PartLearnerArch` fields they make
the flat ``arch`` dict that checkpoints store."""


@dataclass
class PartOutput:
    """Result of a part-learner forward.

    Attributes:
        maps_raw: (B, K, h, w) softmax over K of the correlations; sums to 1 over K.
        maps: (B, K, h, w) blurred maps fed to the decoder (of the one-hot argmax partition when
            straight-through); still sum to 1 over K.
        logits: (B, K, h, w) correlations S (cosine / tau) before the softmax.
        recon: (B, C, H, W) reconstruction in normalised pixel units.
    """

    maps_raw: torch.Tensor
    maps: torch.Tensor
    logits: torch.Tensor
    recon: torch.Tensor


def gaussian_kernel3(sigma: float) -> torch.Tensor:
    """Normalised 3x3 Gaussian (sums to 1), or the identity kernel when ``sigma <= 0``."""
    if sigma <= 0:
        k = torch.zeros(3, 3)
        k[1, 1] = 1.0
        return k
    x = torch.tensor([-1.0, 0.0, 1.0])
    g = torch.exp(-(x**2) / (2.0 * sigma**2))
    k = g[:, None] * g[None, :]
    return k / k.sum()


class PartBlur(nn.Module):
    """Depthwise 3x3 Gaussian blur with a fixed kernel and a non-zero border.

    Each output location is a convex combination of input locations (kernel >= 0, sums to 1, and
    replicate/reflect padding only repeats real locations), so a partition stays a partition.

    Args:
        sigma: Gaussian sigma in grid cells; 0 = identity.
        padding: ``replicate`` or ``reflect`` (reflect needs h, w >= 2).
    """

    def __init__(self, sigma: float, padding: str = "replicate") -> None:
        super().__init__()
        if padding not in _PADDING:
            raise ValueError(f"blur padding must be one of {_PADDING}, got {padding!r}")
        self.sigma = float(sigma)
        self.padding = padding
        self.register_buffer("kernel", gaussian_kernel3(sigma)[None, None], persistent=False)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        """(B, K, h, w) -> (B, K, h, w)."""
        if self.sigma <= 0:
            return maps
        k = maps.shape[1]
        x = F.pad(maps, (1, 1, 1, 1), mode=self.padding)
        weight = self.kernel.to(maps.dtype).expand(k, 1, 3, 3)
        return F.conv2d(x, weight, groups=k)


class PartLearner(nn.Module):
    """Part tokens from g, correlation maps with F, blur, StyleGAN-like reconstruction.

    Args:
        arch: the architecture (K, temperature, centring, blur, decoder widths); its fields say
            what each does.
        embed_dim: D of the backbone tokens.
        grid: (h, w) patch grid, L = h * w.
        img_size: H = W of the reconstruction.
        in_chans: C of the reconstruction.
    """

    def __init__(
        self, arch: PartLearnerArch, *, embed_dim: int, grid: tuple[int, int], img_size: int, in_chans: int
    ) -> None:
        super().__init__()
        arch = arch.learner_arch()  # the architecture fields alone, should a whole parts section come
        grid = (int(grid[0]), int(grid[1]))
        num_parts, tau, tau_min = arch.num_parts, arch.tau, arch.tau_min
        if num_parts < 2 or num_parts > grid[0] * grid[1]:
            raise ValueError(f"num_parts must be in [2, {grid[0] * grid[1]}], got {num_parts}")
        if tau <= 0 or tau_min <= 0:
            raise ValueError(f"tau and tau_min must be positive, got {tau} and {tau_min}")
        sizes = dict(embed_dim=embed_dim, grid=list(grid), img_size=img_size, in_chans=in_chans)
        self.arch: dict[str, Any] = {**sizes, **dataclasses.asdict(arch)}  # what checkpoints store
        self.embed_dim = embed_dim
        self.num_parts = num_parts
        self.grid = grid
        self.tau_min = tau_min
        self.center_tokens = arch.center_tokens
        self.straight_through = arch.straight_through
        self.part_mlp = nn.Sequential(
            nn.Linear(embed_dim, arch.mlp_hidden),
            nn.GELU(),
            nn.Linear(arch.mlp_hidden, num_parts * embed_dim),
        )
        log_tau = torch.tensor(math.log(tau))
        if arch.learn_tau:
            self.log_tau = nn.Parameter(log_tau)
        else:
            self.register_buffer("log_tau", log_tau)
        self.blur = PartBlur(arch.blur_sigma, arch.blur_padding)
        self.decoder = StyleDecoder(
            num_parts, grid, img_size, in_chans, embed_dim, style_dim=arch.style_dim,
            channels=arch.decoder_channels, min_channels=arch.decoder_min_channels,
            upsample=arch.decoder_upsample,
        )  # fmt: skip

    @classmethod
    def from_arch(cls, arch: dict[str, Any]) -> PartLearner:
        """Rebuild an (untrained) learner from the flat ``arch`` dict of a checkpoint.

        Raises:
            CheckpointError: the dict lacks a size or holds a field this version does not know.
        """
        fields = {f.name for f in dataclasses.fields(PartLearnerArch)}
        unknown = sorted(set(arch) - fields - set(SIZES))
        missing = [k for k in SIZES if k not in arch]
        if unknown or missing:
            raise CheckpointError(
                f"part-learner arch {arch} has unknown fields {unknown} or lacks {missing}; "
                "it was written by another version of semmae"
            )
        # Checkpoints from before token centring existed lack the key; they were trained without it.
        chosen = {"center_tokens": False, **{k: v for k, v in arch.items() if k in fields}}
        return cls(PartLearnerArch(**chosen), **{k: arch[k] for k in SIZES})

    @property
    def tau(self) -> torch.Tensor:
        """Current temperature (scalar tensor)."""
        return self.log_tau.exp().clamp_min(self.tau_min)

    def part_cosine(self, patch_tokens: torch.Tensor, global_token: torch.Tensor) -> torch.Tensor:
        """Cosines (B, K, h, w) = cos(Q_k, F_l), Q = MLP(g) (B, K, D), F centred if ``center_tokens``."""
        b, length, _ = patch_tokens.shape
        if length != self.grid[0] * self.grid[1]:
            raise ValueError(f"expected {self.grid[0] * self.grid[1]} patch tokens, got {length}")
        q = F.normalize(self.part_mlp(global_token).view(b, self.num_parts, self.embed_dim), dim=-1)
        if self.center_tokens:
            patch_tokens = patch_tokens - patch_tokens.mean(dim=1, keepdim=True)
        f = F.normalize(patch_tokens, dim=-1)
        return torch.einsum("bkd,bld->bkl", q, f).view(b, self.num_parts, *self.grid)

    def forward(self, patch_tokens: torch.Tensor, global_token: torch.Tensor) -> PartOutput:
        """Part maps and reconstruction.

        Args:
            patch_tokens: F (B, L, D) from the frozen backbone.
            global_token: g (B, D).

        Returns:
            :class:`PartOutput`.
        """
        logits = self.part_cosine(patch_tokens, global_token) / self.tau
        maps_raw = logits.float().softmax(dim=1).to(logits.dtype)
        decoded = maps_raw
        if self.straight_through:
            # Forward: the one-hot partition the labels will be; backward: the soft maps' gradient.
            hard = F.one_hot(maps_raw.argmax(dim=1), self.num_parts).permute(0, 3, 1, 2).to(maps_raw.dtype)
            decoded = hard + maps_raw - maps_raw.detach()
        maps = self.blur(decoded)
        recon = self.decoder(maps, global_token)
        return PartOutput(maps_raw=maps_raw, maps=maps, logits=logits, recon=recon)
