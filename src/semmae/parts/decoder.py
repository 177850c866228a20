"""StyleGAN-like decoder of stage 1: part maps give the layout, the global token the appearance.

The decoder reads only the (blurred) part maps as its spatial input; every other piece of
information enters through AdaIN, whose per-channel scale and shift come from a style vector
w = MLP(g) and carry no position. So to reconstruct the image, the maps must say where things are
(DESIGN.md §2.2.5).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

_UPSAMPLE = ("nearest", "bilinear")


class AdaIN(nn.Module):
    """Instance norm without affine, then a per-channel scale and shift from a style vector.

    Args:
        channels: C of the feature map.
        style_dim: width of the style vector.
    """

    def __init__(self, channels: int, style_dim: int) -> None:
        super().__init__()
        self.norm = nn.InstanceNorm2d(channels, affine=False)
        self.affine = nn.Linear(style_dim, 2 * channels)
        # Start near the identity modulation (scale ~1, shift ~0) so early training is stable;
        # small but non-zero weights let gradients reach the style MLP from the first step.
        with torch.no_grad():
            self.affine.weight.mul_(0.1)
        nn.init.zeros_(self.affine.bias)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Modulate ``x`` (B, C, H, W) with style ``w`` (B, style_dim)."""
        scale, shift = self.affine(w).unsqueeze(-1).unsqueeze(-1).chunk(2, dim=1)
        return self.norm(x) * (1.0 + scale) + shift


class StyleBlock(nn.Module):
    """[upsample x2] -> 3x3 conv -> AdaIN -> LeakyReLU(0.2).

    Args:
        in_ch: input channels.
        out_ch: output channels.
        style_dim: width of the style vector.
        upsample: None (no upsampling), ``nearest`` or ``bilinear``.
    """

    def __init__(self, in_ch: int, out_ch: int, style_dim: int, upsample: str | None) -> None:
        super().__init__()
        self.up = nn.Identity() if upsample is None else nn.Upsample(scale_factor=2.0, mode=upsample)
        # Replicate padding: zero padding would leak "distance to the border" into the output,
        # a position cue that does not come from the maps.
        self.conv = nn.Conv2d(in_ch, out_ch, 3, padding=1, padding_mode="replicate")
        self.adain = AdaIN(out_ch, style_dim)
        self.act = nn.LeakyReLU(0.2)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """(B, in_ch, H, W), style (B, style_dim) -> (B, out_ch, H', W'), H' = 2H when upsampling."""
        return self.act(self.adain(self.conv(self.up(x)), w))


def num_upsamplings(grid_side: int, image_size: int) -> int:
    """Fewest x2 steps taking ``grid_side`` to at least ``image_size`` (7 -> 28: 2; 14 -> 224: 4)."""
    if grid_side >= image_size:
        return 0
    return math.ceil(math.log2(image_size / grid_side) - 1e-9)


class StyleDecoder(nn.Module):
    """Part maps (B, K, h, w) + global token (B, D) -> image (B, C, H, W).

    A stem block at the grid resolution, then ``n`` upsampling blocks until the side reaches at
    least the image size, a 1x1 conv to C channels and a bilinear resize to exactly H x W (a no-op
    when the grid times 2^n equals the image side).

    Args:
        num_parts: K (input channels).
        grid: (h, w) patch grid of the maps.
        img_size: H = W of the output.
        out_chans: C.
        global_dim: D of the global token.
        style_dim: width of w = MLP(g).
        channels: width of the stem; halved after every upsampling, never below ``min_channels``.
        min_channels: floor of the widths.
        upsample: ``nearest`` or ``bilinear``.
    """

    def __init__(
        self,
        num_parts: int,
        grid: tuple[int, int],
        img_size: int,
        out_chans: int,
        global_dim: int,
        style_dim: int = 128,
        channels: int = 128,
        min_channels: int = 16,
        upsample: str = "nearest",
    ) -> None:
        super().__init__()
        if upsample not in _UPSAMPLE:
            raise ValueError(f"upsample must be one of {_UPSAMPLE}, got {upsample!r}")
        self.img_size = img_size
        self.style = nn.Sequential(
            nn.Linear(global_dim, style_dim), nn.LeakyReLU(0.2), nn.Linear(style_dim, style_dim)
        )
        n_up = num_upsamplings(min(grid), img_size)
        widths = [max(min_channels, channels // 2**i) for i in range(n_up + 1)]
        self.blocks = nn.ModuleList([StyleBlock(num_parts, widths[0], style_dim, None)])
        for i in range(n_up):
            self.blocks.append(StyleBlock(widths[i], widths[i + 1], style_dim, upsample))
        self.to_image = nn.Conv2d(widths[-1], out_chans, 1)

    def forward(self, maps: torch.Tensor, global_token: torch.Tensor) -> torch.Tensor:
        """Decode.

        Args:
            maps: (B, K, h, w) part maps (the only spatial input).
            global_token: (B, D).

        Returns:
            (B, C, H, W) reconstruction in normalised pixel units.
        """
        w = self.style(global_token)
        x = maps
        for block in self.blocks:
            x = block(x, w)
        x = self.to_image(x)
        if x.shape[-2:] != (self.img_size, self.img_size):
            x = F.interpolate(x, size=(self.img_size, self.img_size), mode="bilinear", align_corners=False)
        return x
