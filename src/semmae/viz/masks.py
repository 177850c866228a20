"""Part and mask overlays as image grids (torch + torchvision; no pyplot).

Conventions: N images, C channels, H×W pixels, h×w patch grid (L = h·w), K parts; images are
floats in [0, 1]; part labels are int64 in {0..K-1}; masks are bool, True = hidden.
"""

from __future__ import annotations

import colorsys
import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torchvision.utils import make_grid, save_image

# Ten well-separated colours (the "tab10" values); beyond them hues follow the golden angle.
_BASE_PALETTE = (
    (0.122, 0.467, 0.706), (1.000, 0.498, 0.055), (0.173, 0.627, 0.173), (0.839, 0.153, 0.157),
    (0.580, 0.404, 0.741), (0.549, 0.337, 0.294), (0.890, 0.467, 0.761), (0.498, 0.498, 0.498),
    (0.737, 0.741, 0.133), (0.090, 0.745, 0.812),
)  # fmt: skip
_HIDDEN_DARK = 0.08  # hidden patches are near-black ...
_HIDDEN_STRIPE = 0.75  # ... with diagonal stripes of their part colour at this brightness
_STRIPE_PERIOD = 4  # pixels between stripes
_PAD = 2  # pixels of white between tiles


def part_colors(num_parts: int) -> torch.Tensor:
    """A fixed palette of distinct colours.

    Args:
        num_parts: K >= 1.

    Returns:
        (K, 3) float RGB in [0, 1]; the same K always gives the same colours.
    """
    colors = list(_BASE_PALETTE[:num_parts])
    golden = (math.sqrt(5.0) - 1.0) / 2.0
    for i in range(len(colors), num_parts):
        hue = (0.07 + i * golden) % 1.0
        colors.append(colorsys.hsv_to_rgb(hue, 0.65 + 0.3 * (i % 2), 0.95 - 0.25 * ((i // 2) % 2)))
    return torch.tensor(colors, dtype=torch.float32).reshape(num_parts, 3)


def to_rgb(images01: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) with C in {1, 3} -> (N, 3, H, W) float in [0, 1] on the CPU."""
    if images01.dim() != 4 or images01.shape[1] not in (1, 3):
        raise ValueError(f"images must be (N, 1|3, H, W), got {tuple(images01.shape)}")
    return images01.detach().cpu().float().clamp(0, 1).expand(-1, 3, -1, -1)


def _upsample_labels(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, h, w) labels -> (N, H, W) by nearest-neighbour (patch (i, j) covers its pixel block)."""
    return F.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0].long()


def overlay_parts(
    images01: torch.Tensor, labels: torch.Tensor, num_parts: int, alpha: float = 0.5
) -> torch.Tensor:
    """Blend every pixel with the colour of its part.

    Args:
        images01: (N, C, H, W) float images in [0, 1], C in {1, 3}.
        labels: (N, h, w) int64 part labels (any grid; upsampled by nearest neighbour).
        num_parts: K, sets the palette.
        alpha: weight of the part colour.

    Returns:
        (N, 3, H, W) float in [0, 1] on the CPU.
    """
    img = to_rgb(images01)
    lab = _upsample_labels(labels.detach().cpu(), tuple(img.shape[-2:]))
    color = part_colors(num_parts)[lab].permute(0, 3, 1, 2)  # (N, 3, H, W)
    return (1.0 - alpha) * img + alpha * color


def _masked_panel(
    overlay: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor, grid: tuple[int, int], num_parts: int
) -> torch.Tensor:
    """Overlay with hidden patches drawn dark, striped in their part colour; (N, 3, H, W).

    Stripes keep hidden patches distinct from any visible region however dark the image, while
    still telling which part was hidden.
    """
    h, w = grid
    size = tuple(overlay.shape[-2:])
    hidden = _upsample_labels(mask.reshape(-1, h, w).long(), size).bool()[:, None]
    color = part_colors(num_parts)[_upsample_labels(labels.reshape(-1, h, w), size)].permute(0, 3, 1, 2)
    ys = torch.arange(size[0]).view(-1, 1)
    xs = torch.arange(size[1]).view(1, -1)
    stripe = ((ys + xs) % _STRIPE_PERIOD == 0).view(1, 1, *size)
    dark = torch.where(stripe, _HIDDEN_STRIPE * color, torch.full_like(color, _HIDDEN_DARK))
    return torch.where(hidden, dark, overlay)


def _save_with_titles(grid_img: torch.Tensor, path: Path, titles: list[str], cell: int, pad: int) -> None:
    """Save (3, H, W) ``grid_img`` with one title per column in a strip above it."""
    body = Image.fromarray(grid_img.mul(255).round().clamp(0, 255).byte().permute(1, 2, 0).numpy())
    strip = 14
    canvas = Image.new("RGB", (body.width, body.height + strip), (255, 255, 255))
    canvas.paste(body, (0, strip))
    draw = ImageDraw.Draw(canvas)
    for j, title in enumerate(titles):
        x0 = pad + j * (cell + pad)
        text_w = draw.textlength(title)
        draw.text((x0 + max(0.0, (cell - text_w) / 2), 1), title, fill=(0, 0, 0))
    canvas.save(path)


def mask_overlay_grid(
    images01: torch.Tensor,
    part_labels: torch.Tensor,
    masks: list[torch.Tensor],
    grid: tuple[int, int],
    num_parts: int,
    path: str | os.PathLike[str],
    titles: list[str],
    scale: int = 4,
    alpha: float = 0.5,
) -> Path:
    """Save a PNG: one row per image; columns = parts, then one panel per mask.

    The first column shows the image blended with its part colours; each further column shows
    the same with the hidden patches of one mask (e.g. masks at progress 0, .25, .5, .75, 1) drawn
    dark with diagonal stripes of their part colour, so one sees which parts were hidden and how much.

    Args:
        images01: (N, C, H, W) float images in [0, 1].
        part_labels: (N, L) int64 part labels in raster order, L = h·w.
        masks: list of (N, L) bool masks, True = hidden.
        grid: (h, w) patch grid.
        num_parts: K.
        path: PNG to write (parent folders are created).
        titles: column titles, one per column (1 + len(masks)), drawn above the grid.
        scale: nearest-neighbour upscaling, so 28-px images stay readable (×4 -> 112 px).
        alpha: weight of the part colour in the visible patches.

    Returns:
        The path written.
    """
    h, w = grid
    n = images01.shape[0]
    if part_labels.shape != (n, h * w) or any(m.shape != (n, h * w) for m in masks):
        raise ValueError(f"part_labels and masks must be (N, L) = ({n}, {h * w})")
    if len(titles) != 1 + len(masks):
        raise ValueError(f"need {1 + len(masks)} titles (parts + one per mask), got {len(titles)}")
    images = to_rgb(images01)
    if scale > 1:
        images = F.interpolate(images, scale_factor=scale, mode="nearest")
    labels = part_labels.detach().cpu().long()
    overlay = overlay_parts(images, labels.reshape(n, h, w), num_parts, alpha)
    panels = [overlay] + [_masked_panel(overlay, labels, m.detach().cpu(), grid, num_parts) for m in masks]
    cols = len(panels)
    tiles = torch.stack(panels, dim=1).reshape(n * cols, 3, *overlay.shape[-2:])  # row-major
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    grid_img = make_grid(tiles, nrow=cols, padding=_PAD, pad_value=1.0)
    _save_with_titles(grid_img, out, titles, cell=overlay.shape[-1], pad=_PAD)
    return out


def save_tiles(tiles: torch.Tensor, path: str | os.PathLike[str], nrow: int, upscale: int = 1) -> Path:
    """Write (N, 3|1, H, W) tiles in [0, 1] as a PNG grid, ``nrow`` a row, enlarged ``upscale`` times.

    Parent folders are created; tiles are enlarged by nearest neighbour so small images stay crisp.
    """
    if upscale > 1:
        tiles = F.interpolate(tiles, scale_factor=upscale, mode="nearest")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_image(tiles, out, nrow=nrow, padding=_PAD, pad_value=1.0)
    return out


__all__ = ["mask_overlay_grid", "overlay_parts", "part_colors", "save_tiles", "to_rgb"]
