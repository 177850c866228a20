"""Batched, device-agnostic image (+ part-map) transforms.

Augmentation builds ONE affine sampling grid per image (random resized crop, then horizontal flip)
and applies it with ``F.grid_sample`` (``align_corners=False``) to the image (bilinear) and to its
part map (nearest), so both see exactly the same crop and flip whatever the map's resolution (the
grid lives in normalised coordinates). Random parameters are drawn on the CPU from the given
generator and then moved to the images' device, so a seed gives the same batch on every device.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from semmae import runtime

_TRIES = 10  # torchvision's RandomResizedCrop attempts before its centre-crop fallback


def crop_uniforms(batch_size: int, generator: torch.Generator | None, hflip: bool) -> torch.Tensor:
    """The uniform draws behind a batch of random resized crops (+ flips), in a fixed order.

    Drawing them apart from the image sizes lets a streamed loader turn row ``i`` into a crop box
    of image ``i``'s own (full-resolution) size in a worker process, while the draws stay a pure
    function of the micro-batch generator (so ``--resume`` rebuilds them exactly).

    Args:
        batch_size: B.
        generator: CPU generator; consumed as ``rand(B, 10)`` (areas), ``rand(B, 10)`` (aspect
            ratios), ``rand(B, 2)`` (positions), then ``rand(B)`` (flips) when ``hflip``.
        hflip: whether flips are drawn.

    Returns:
        (B, 23) float32 on the CPU: columns 0-9 area draws, 10-19 ratio draws, 20-21 (top, left)
        position draws, 22 the flip (1.0 = flip; always 0 without ``hflip``).
    """
    area = torch.rand(batch_size, _TRIES, generator=generator)
    aspect = torch.rand(batch_size, _TRIES, generator=generator)
    pos = torch.rand(batch_size, 2, generator=generator)
    flip = (
        (torch.rand(batch_size, generator=generator) < 0.5)
        if hflip
        else torch.zeros(batch_size, dtype=torch.bool)
    )
    return torch.cat([area, aspect, pos, flip[:, None].float()], 1)


def boxes_from_uniforms(
    uniforms: torch.Tensor, height: int, width: int, scale: Sequence[float], ratio: Sequence[float]
) -> torch.Tensor:
    """RandomResizedCrop boxes of an ``height x width`` image from :func:`crop_uniforms` draws.

    Same semantics as ``torchvision.transforms.RandomResizedCrop.get_params``: up to 10 tries of an
    area fraction uniform in ``scale`` and an aspect ratio log-uniform in ``ratio``; the first try
    that fits is used, with a uniformly random position; if none fits, a centre crop of the whole
    image clamped to the ratio range.

    Args:
        uniforms: (B, >= 22) draws (see :func:`crop_uniforms`).
        height, width: the image size in pixels (the box is in these coordinates).
        scale: crop area fraction range.
        ratio: crop aspect-ratio (w / h) range.

    Returns:
        (B, 4) float ``(top, left, h, w)`` in pixels, on the CPU.
    """
    area = float(height * width)
    lo_r, hi_r = math.log(ratio[0]), math.log(ratio[1])
    target = area * (scale[0] + (scale[1] - scale[0]) * uniforms[:, :_TRIES])
    aspect = torch.exp(lo_r + (hi_r - lo_r) * uniforms[:, _TRIES : 2 * _TRIES])
    w = torch.round(torch.sqrt(target * aspect))
    h = torch.round(torch.sqrt(target / aspect))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.to(torch.int8).argmax(1)  # first fitting try (0 when none fits; masked below)
    found = fits.any(1)
    w = w.gather(1, first[:, None]).squeeze(1)
    h = h.gather(1, first[:, None]).squeeze(1)
    pos = uniforms[:, 2 * _TRIES : 2 * _TRIES + 2]
    top = torch.floor(pos[:, 0] * (height - h + 1))
    left = torch.floor(pos[:, 1] * (width - w + 1))
    box = torch.stack([top, left, h, w], 1)
    fallback = torch.tensor(fallback_box(height, width, ratio))
    return torch.where(found[:, None], box, fallback)


def fallback_box(height: int, width: int, ratio: Sequence[float]) -> tuple[float, float, float, float]:
    """The box when no try fits: the whole image, cut to the nearest allowed aspect ratio, centred.

    Returns:
        ``(top, left, h, w)`` in pixels.
    """
    in_ratio = width / height
    if in_ratio < min(ratio):
        fw, fh = float(width), float(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        fw, fh = float(round(height * max(ratio))), float(height)
    else:
        fw, fh = float(width), float(height)
    return (height - fh) // 2, (width - fw) // 2, fh, fw


def box_from_draws(
    draws: Sequence[float], height: int, width: int, scale: Sequence[float], ratio: Sequence[float]
) -> tuple[float, float, float, float]:
    """One image's :func:`boxes_from_uniforms` box in plain Python (for loader workers).

    The same semantics and draws; per image, plain floats cost a few microseconds where ~30 tiny
    tensor operations cost a millisecond. (Float64 here, float32 there: a try whose size rounds
    differently is vanishingly rare and only matters between the two paths, never within one.)

    Returns:
        ``(top, left, h, w)`` in pixels.
    """
    area = float(height * width)
    lo_r, hi_r = math.log(ratio[0]), math.log(ratio[1])
    for k in range(_TRIES):
        target = area * (scale[0] + (scale[1] - scale[0]) * draws[k])
        aspect = math.exp(lo_r + (hi_r - lo_r) * draws[_TRIES + k])
        w, h = float(round(math.sqrt(target * aspect))), float(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = math.floor(draws[2 * _TRIES] * (height - h + 1))
            left = math.floor(draws[2 * _TRIES + 1] * (width - w + 1))
            return float(top), float(left), h, w
    return fallback_box(height, width, ratio)


def crop_theta(boxes: torch.Tensor, height: int, width: int, flip: torch.Tensor) -> torch.Tensor:
    """(B, 2, 3) affine maps from output to input normalised coordinates (``align_corners=False``).

    A crop ``[left, left + w) x [top, top + h)`` in pixel edges maps the output's [-1, 1] onto
    ``x_in = (w / W) x_out + (2 left + w) / W - 1`` (same for y); a flip negates ``x_out``.
    """
    top, left, h, w = boxes.unbind(1)
    sx = (w / width) * torch.where(flip, -1.0, 1.0)
    theta = torch.zeros(boxes.shape[0], 2, 3, dtype=torch.float32)
    theta[:, 0, 0] = sx
    theta[:, 0, 2] = (2 * left + w) / width - 1
    theta[:, 1, 1] = h / height
    theta[:, 1, 2] = (2 * top + h) / height - 1
    return theta


def affine_grid(theta: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Same result as ``F.affine_grid(theta, (B, C, H, W), align_corners=False)``, by broadcasting.

    ``F.affine_grid`` runs a batched (H*W x 3) @ (3 x 2) matmul that costs ~5 ms for 256 small
    images on a CPU; two broadcast multiply-adds per coordinate cost a tenth of that.

    Args:
        theta: (B, 2, 3) maps from output to input normalised coordinates.

    Returns:
        (B, H, W, 2) sampling grid (x, y) for ``F.grid_sample``.
    """
    xs = (torch.arange(width, device=theta.device, dtype=theta.dtype) * 2 + 1) / width - 1
    ys = (torch.arange(height, device=theta.device, dtype=theta.dtype) * 2 + 1) / height - 1
    t = theta[:, :, :, None, None]  # (B, 2, 3, 1, 1)
    coords = t[:, :, 0] * xs[None, None, None, :] + t[:, :, 1] * ys[None, None, :, None] + t[:, :, 2]
    return coords.permute(0, 2, 3, 1)  # (B, 2, H, W) -> (B, H, W, 2): W-contiguous math is faster


def _sample_parts(part_maps: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Nearest-sample (B, H', W') part maps on ``grid`` (B, out, out, 2) -> (B, out, out) long."""
    maps = part_maps.to(device=grid.device, dtype=torch.float32).unsqueeze(1)
    out = F.grid_sample(maps, grid, mode="nearest", padding_mode="border", align_corners=False)
    return out.squeeze(1).long()  # nearest sampling returns the stored integer ids exactly


def crop_part_maps(
    part_maps: torch.Tensor, boxes: torch.Tensor, flip: torch.Tensor, out_size: int
) -> torch.Tensor:
    """Each image's crop region of its whole-image part map, flipped with it (nearest sampling).

    A part map describes the whole image in normalised coordinates, whatever its own resolution,
    so a crop box given as fractions of the image's height and width picks out its region.

    Args:
        part_maps: (B, h, w) integer part ids covering each whole image.
        boxes: (B, 4) ``(top, left, h, w)`` as fractions of the image's height and width.
        flip: (B,) bool, the crop was flipped left-right.
        out_size: side of the output maps (the crop's pixel size).

    Returns:
        (B, out, out) long part ids on ``part_maps``' device.
    """
    theta = crop_theta(boxes.float().cpu(), 1, 1, flip.cpu()).to(part_maps.device)
    return _sample_parts(part_maps, affine_grid(theta, out_size, out_size))


def augment_batch(
    images_u8: torch.Tensor,
    *,
    out_size: int,
    scale: Sequence[float],
    ratio: Sequence[float],
    hflip: bool,
    generator: torch.Generator | None,
    part_maps: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Random resized crop + horizontal flip per image, applied jointly to images and part maps.

    Args:
        images_u8: (B, C, H, W) uint8 on any device.
        out_size: side of the output images (and maps).
        scale: crop area fraction range, e.g. (0.2, 1.0); (1, 1) keeps the whole image.
        ratio: crop aspect-ratio (w / h) range, sampled log-uniformly.
        hflip: flip each image left-right with probability 0.5.
        generator: CPU generator all parameters are drawn from (in a fixed order: crop tries,
            crop positions, flips).
        part_maps: optional (B, H', W') integer part ids at ANY resolution; they get the same crop
            and flip (nearest sampling).

    Returns:
        ``(images, maps)``: float (B, C, out, out) in [0, 1] on the images' device; long
        (B, out, out) part maps, or None.
    """
    bsz, _, height, width = images_u8.shape
    device = images_u8.device
    uniforms = crop_uniforms(bsz, generator, hflip)
    boxes = boxes_from_uniforms(uniforms, height, width, scale, ratio)
    flip = uniforms[:, -1] > 0.5
    theta = runtime.to_device(crop_theta(boxes, height, width, flip), device)  # no host sync on CUDA
    grid = affine_grid(theta, out_size, out_size)
    images = images_u8.float().div_(255.0)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    maps = _sample_parts(part_maps, grid) if part_maps is not None else None
    return out.clamp_(0.0, 1.0), maps


def center_batch(
    images_u8: torch.Tensor, *, out_size: int, part_maps: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Deterministic counterpart of :func:`augment_batch`: resize to ``out_size``, no crop or flip.

    Images are resized bilinearly with antialiasing (exact identity when already ``out_size``);
    part maps of any resolution are resized by nearest pixel centre (``nearest-exact``).

    Args:
        images_u8: (B, C, H, W) uint8.
        out_size: output side.
        part_maps: optional (B, H', W') integer part ids.

    Returns:
        float (B, C, out, out) in [0, 1], and long (B, out, out) maps or None.
    """
    images = images_u8.float().div_(255.0)
    if images.shape[-2:] != (out_size, out_size):
        images = F.interpolate(
            images, size=(out_size, out_size), mode="bilinear", align_corners=False, antialias=True
        )
        images = images.clamp_(0.0, 1.0)
    maps = None
    if part_maps is not None:
        maps = part_maps.to(images.device).long()
        if maps.shape[-2:] != (out_size, out_size):
            maps = F.interpolate(maps[:, None].float(), size=(out_size, out_size), mode="nearest-exact")
            maps = maps[:, 0].round().long()
    return images, maps


def _stats(values: Sequence[float], images: torch.Tensor, name: str) -> torch.Tensor:
    channels = images.shape[1]
    if len(values) not in (1, channels):
        raise ValueError(f"{name} needs 1 or {channels} values, got {len(values)}")
    return _stats_on(tuple(float(v) for v in values), images.dtype, images.device)


@functools.lru_cache(maxsize=64)
def _stats_on(values: tuple[float, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(1, C, 1, 1) ``values`` on ``device``, made once: a copy from a list to a GPU waits for the GPU."""
    return torch.tensor(values, dtype=dtype).view(1, -1, 1, 1).to(device)


def normalize(images01: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``(x - mean) / std`` per channel; (B, C, H, W) floats, mean/std of length 1 or C."""
    return (images01 - _stats(mean, images01, "mean")) / _stats(std, images01, "std")


def denormalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Inverse of :func:`normalize`, clamped to [0, 1] (for display)."""
    return (images * _stats(std, images, "std") + _stats(mean, images, "mean")).clamp(0.0, 1.0)


def labels_to_patch_grid(labels: torch.Tensor, grid: tuple[int, int], num_parts: int) -> torch.Tensor:
    """Majority vote of the part ids inside each grid cell: THE pixel-map -> patch-grid rule.

    Pixel (y, x) of an H×W map falls in cell (y·h // H, x·w // W), so every pixel votes once and
    cells differ by at most one pixel row or column when H or W is not a multiple of the grid.
    Ties go to the LOWER part id (``argmax`` returns the first maximum). Counting scatters into
    (B, K, L) bins instead of pooling a (B, K, H, W) one-hot: the same counts with K times less
    memory at large H, W.

    Args:
        labels: (B, H, W) integer part ids in [0, num_parts).
        grid: (h, w) patch grid, h <= H and w <= W.
        num_parts: K.

    Returns:
        (B, h*w) long part id per patch, raster order, on ``labels``' device.
    """
    gh, gw = int(grid[0]), int(grid[1])
    bsz, height, width = labels.shape
    if not (0 < gh <= height and 0 < gw <= width):
        raise ValueError(f"grid {(gh, gw)} must be positive and at most the map size {height}x{width}")
    rows = torch.arange(height, device=labels.device) * gh // height
    cols = torch.arange(width, device=labels.device) * gw // width
    cell = (rows[:, None] * gw + cols[None, :]).flatten()  # (H*W,) cell index of every pixel
    num_cells = gh * gw
    bins = labels.long().flatten(1) * num_cells + cell  # (B, H*W); out-of-range ids fail in scatter_add_
    counts = torch.zeros(bsz, num_parts * num_cells, device=labels.device)
    counts.scatter_add_(1, bins, torch.ones_like(bins, dtype=counts.dtype))
    return counts.view(bsz, num_parts, num_cells).argmax(1)
