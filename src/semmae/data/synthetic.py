"""Toy-parts: procedurally drawn objects with known parts, for tests and part-discovery metrics.

Each image shows one object made of three parts on a textured background. Part ids and looks
(a unit is half the image side; intensities are of 1, before per-image colour tints):

- 0 background: smooth blobs (sum of 3 waves, ~1 cycle per unit), base 0.15-0.40;
- 1 body: stripes, 3 cycles per unit, base 0.45-0.75;
- 2 head: checker, 4 cycles per unit, base 0.65-0.95;
- 3 limbs: stripes, 5 cycles per unit, base 0.30-0.60 (thick segments for arms and legs).

Each part gets a random orientation and phase of its texture, a texture amplitude of 0.06-0.12,
and (RGB) a random tint per image; pixel noise has std 0.02. Four classes differ in geometry, so
the class is learnable from shape alone: 0 "figure" (oval body, round head, arms down, legs),
1 "robot" (square body, square head, arms straight out, straight legs), 2 "cheer" (round body,
diamond head, arms raised, legs apart), 3 "animal" (long flat body, head to the side, four legs).
Pose is random per image: position (±0.15 units), scale (0.85-1.1), rotation (±0.3 rad) and a
horizontal mirror, plus ±15% jitter of part sizes. All parameters are drawn up front from one
seeded generator and rendered in vectorised chunks.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from semmae.config import DataConfig
from semmae.data.imageset import ImageSet

NUM_PARTS = 4
CLASSES = ["figure", "robot", "cheer", "animal"]
BASE_SEED = 20220621
_PIXELS_PER_CHUNK = 1 << 17  # image pixels per render pass: small scratch tensors stay in cache

# Per class: body and head (cx, cy, ax, ay, shape), 4 limbs (x0, y0, x1, y1) and limb half-thickness,
# in object coordinates (y down). Shapes: 0 ellipse, 1 diamond, 2 box.
ELLIPSE, DIAMOND, BOX = 0.0, 1.0, 2.0
_BODY = torch.tensor(
    [
        [0.00, 0.10, 0.24, 0.36, ELLIPSE],
        [0.00, 0.05, 0.32, 0.30, BOX],
        [0.00, 0.15, 0.28, 0.28, ELLIPSE],
        [0.05, 0.05, 0.52, 0.22, ELLIPSE],
    ]
)
_HEAD = torch.tensor(
    [
        [0.00, -0.46, 0.21, 0.21, ELLIPSE],
        [0.00, -0.45, 0.19, 0.19, BOX],
        [0.00, -0.36, 0.24, 0.24, DIAMOND],
        [-0.60, -0.26, 0.19, 0.19, ELLIPSE],
    ]
)
_LIMBS = torch.tensor(
    [  # per class: left arm, right arm, left leg, right leg (animal: four legs)
        [
            [-0.20, -0.10, -0.55, 0.25],
            [0.20, -0.10, 0.55, 0.25],
            [-0.12, 0.40, -0.20, 0.85],
            [0.12, 0.40, 0.20, 0.85],
        ],
        [
            [-0.30, -0.10, -0.80, -0.10],
            [0.30, -0.10, 0.80, -0.10],
            [-0.15, 0.30, -0.15, 0.85],
            [0.15, 0.30, 0.15, 0.85],
        ],
        [
            [-0.20, -0.05, -0.60, -0.75],
            [0.20, -0.05, 0.60, -0.75],
            [-0.10, 0.40, -0.45, 0.85],
            [0.10, 0.40, 0.45, 0.85],
        ],
        [
            [-0.38, 0.15, -0.42, 0.70],
            [-0.13, 0.15, -0.13, 0.70],
            [0.13, 0.15, 0.13, 0.70],
            [0.38, 0.15, 0.42, 0.70],
        ],
    ]
)
_THICKNESS = torch.tensor([0.08, 0.09, 0.08, 0.07])
_INTENSITY = torch.tensor([[0.15, 0.40], [0.45, 0.75], [0.65, 0.95], [0.30, 0.60]])  # per part: lo, hi
_FREQ = (1.0, 3.0, 4.0, 5.0)  # cycles per unit, per part


def uniform(gen: torch.Generator, lo: float, hi: float, *shape: int) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(*shape, generator=gen)


def _draw_params(n: int, in_chans: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Every random quantity of ``n`` images, drawn in a fixed order (the shapes do not depend on S)."""
    cls = torch.randint(0, len(CLASSES), (n,), generator=gen)
    ones = torch.ones(n, 2)
    body_jitter = torch.cat([ones, uniform(gen, 0.85, 1.15, n, 2), ones[:, :1]], 1)
    head_jitter = torch.cat([ones, uniform(gen, 0.85, 1.15, n, 1).expand(n, 2), ones[:, :1]], 1)
    p = {
        "cls": cls,
        "center": uniform(gen, -0.15, 0.15, n, 2),
        "scale": uniform(gen, 0.85, 1.1, n),
        "angle": uniform(gen, -0.3, 0.3, n),
        "mirror": torch.rand(n, generator=gen) < 0.5,
        "body": _BODY[cls] * body_jitter,
        "head": _HEAD[cls] * head_jitter,
        "limbs": _LIMBS[cls] + uniform(gen, -0.05, 0.05, n, 4, 4),
        "thick": _THICKNESS[cls] * uniform(gen, 0.8, 1.2, n),
        "orient": uniform(gen, 0.0, math.pi, n, NUM_PARTS, 3),
        "phase": uniform(gen, 0.0, 2 * math.pi, n, NUM_PARTS, 3),
        "amp": uniform(gen, 0.06, 0.12, n, NUM_PARTS),
    }
    level = _INTENSITY[:, 0] + (_INTENSITY[:, 1] - _INTENSITY[:, 0]) * torch.rand(n, NUM_PARTS, generator=gen)
    tint = uniform(gen, 0.5, 1.0, n, NUM_PARTS, 3)
    tint = tint / tint.mean(-1, keepdim=True)  # keeps each part's brightness at its level
    p["colour"] = level[..., None] * (tint if in_chans == 3 else torch.ones(n, NUM_PARTS, 1))
    return p


def inside_shape(u: torch.Tensor, v: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
    """Inside an ellipse / diamond / box; shape (n, 5) = cx, cy, ax, ay, kind; u, v (n, S, S) -> bool."""
    cx, cy, ax, ay, kind = (shape[:, i, None, None] for i in range(5))
    du, dv = ((u - cx) / ax).abs_(), ((v - cy) / ay).abs_()
    box_or_diamond = torch.where(kind == DIAMOND, du + dv, torch.maximum(du, dv))
    norm = torch.where(kind == ELLIPSE, du * du + dv * dv, box_or_diamond)
    return norm <= 1.0


def _on_limbs(u: torch.Tensor, v: torch.Tensor, limbs: torch.Tensor, thick: torch.Tensor) -> torch.Tensor:
    """Within ``thick`` of any of 4 segments; limbs (n, 4, 4) = x0, y0, x1, y1; returns bool (n, S, S)."""
    x0, y0, x1, y1 = (limbs[..., i, None, None] for i in range(4))  # (n, 4, 1, 1) each
    du, dv = x1 - x0, y1 - y0
    pu, pv = u[:, None] - x0, v[:, None] - y0  # (n, 4, S, S)
    t = (pu * du + pv * dv).mul_(1.0 / (du * du + dv * dv + 1e-8)).clamp_(0.0, 1.0)
    dist2 = pu.sub_(t * du).square_().add_(pv.sub_(t * dv).square_())
    return dist2.amin(1) <= thick[:, None, None] ** 2


def plane_wave(
    a: torch.Tensor, b: torch.Tensor, orient: torch.Tensor, phase: torch.Tensor, freq: float
) -> torch.Tensor:
    """sin(2π f (a cos o + b sin o) + phase): a plane wave; a, b (n, S, S), orient, phase (n,)."""
    w = 2 * math.pi * freq
    cu, cv = (w * torch.cos(orient))[:, None, None], (w * torch.sin(orient))[:, None, None]
    return torch.sin_(a * cu + b * cv + phase[:, None, None])


def _textures(
    x: torch.Tensor, y: torch.Tensor, u: torch.Tensor, v: torch.Tensor, p: dict[str, torch.Tensor]
) -> torch.Tensor:
    """Per-part texture values in [-1, 1], (n, 4, S, S): blobs, stripes, checker, stripes.

    The background lives in image coordinates (x, y); the parts in object coordinates (u, v),
    so their textures turn and scale with the object.
    """
    o, ph = p["orient"], p["phase"]
    blobs = sum(plane_wave(x, y, o[:, 0, k], ph[:, 0, k], _FREQ[0] * (0.8 + 0.25 * k)) for k in range(3))
    body = plane_wave(u, v, o[:, 1, 0], ph[:, 1, 0], _FREQ[1])
    head = plane_wave(u, v, o[:, 2, 0], ph[:, 2, 0], _FREQ[2])
    head *= plane_wave(u, v, o[:, 2, 0] + math.pi / 2, ph[:, 2, 1], _FREQ[2])  # product of crossed waves
    limbs = plane_wave(u, v, o[:, 3, 0], ph[:, 3, 0], _FREQ[3])
    return torch.stack([(blobs * 0.55).clamp_(-1, 1), body, head.mul_(4.0).tanh_(), limbs], 1)


def _render(
    p: dict[str, torch.Tensor], image_size: int, in_chans: int, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images uint8 (n, C, S, S) and part masks uint8 (n, S, S) of the drawn parameters."""
    n, size = p["cls"].shape[0], image_size
    x, y = pixel_grid(size)
    dx, dy = x - p["center"][:, 0, None, None], y - p["center"][:, 1, None, None]
    cos, sin = torch.cos(p["angle"])[:, None, None], torch.sin(p["angle"])[:, None, None]
    scale = p["scale"][:, None, None]
    mirror = torch.where(p["mirror"], -1.0, 1.0)[:, None, None]
    u, v = (cos * dx + sin * dy) * (mirror / scale), (cos * dy - sin * dx) / scale
    labels = torch.zeros(n, size, size, dtype=torch.long)
    labels.masked_fill_(_on_limbs(u, v, p["limbs"], p["thick"]), 3)  # later parts are drawn on top
    labels.masked_fill_(inside_shape(u, v, p["body"]), 1)
    labels.masked_fill_(inside_shape(u, v, p["head"]), 2)
    tex = _textures(x.expand(n, -1, -1), y.expand(n, -1, -1), u, v, p).gather(1, labels[:, None]).squeeze(1)
    amp = p["amp"].gather(1, labels.flatten(1)).view(n, 1, size, size)
    colour = p["colour"].gather(1, labels.flatten(1)[..., None].expand(-1, -1, in_chans))  # (n, S*S, C)
    value = colour.transpose(1, 2).reshape(n, in_chans, size, size) + amp * tex[:, None]
    return to_uint8(value, gen), labels.to(torch.uint8)


def to_uint8(value: torch.Tensor, gen: torch.Generator, noise: float = 0.02) -> torch.Tensor:
    """Add pixel noise (std ``noise``) to float images in [0, 1] (n, C, S, S) and quantise to uint8."""
    value += noise * torch.randn(value.shape, generator=gen)
    return value.clamp_(0.0, 1.0).mul_(255.0).round_().to(torch.uint8)


def make_toy_parts(
    n: int, image_size: int = 32, in_chans: int = 1, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Draw ``n`` toy-parts images (see the module docstring).

    Args:
        n: number of images.
        image_size: S.
        in_chans: 1 (grey) or 3 (colour parts).
        seed: the same seed gives the same images.

    Returns:
        ``(images, targets, part_masks, num_gt_parts)``: uint8 (N, C, S, S), int64 (N,) class ids
        in 0..3, uint8 (N, S, S) part ids in 0..3, and 4.
    """
    params, images, masks = draw_and_render(n, image_size, in_chans, seed, _draw_params, _render)
    return images, params["cls"].clone(), masks, NUM_PARTS


def pixel_grid(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-centre coordinates ``(x, y)``, each (S, S) in [-1, 1], y pointing down."""
    axis = (torch.arange(size, dtype=torch.float32) + 0.5) * (2.0 / size) - 1.0
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    return x, y


def draw_and_render(
    n: int,
    image_size: int,
    in_chans: int,
    seed: int,
    draw: Callable[[int, int, torch.Generator], dict[str, torch.Tensor]],
    render: Callable[[dict[str, torch.Tensor], int, int, torch.Generator], tuple[torch.Tensor, torch.Tensor]],
) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """Draw ``n`` images' parameters from ``seed``, then render them a chunk at a time.

    Every parameter is drawn up front (first dim n), then the pixel noise chunk by chunk from the
    same generator; chunks keep the scratch tensors small.

    Returns:
        ``(params, images uint8 (n, C, S, S), part masks uint8 (n, S, S))``.
    """
    if in_chans not in (1, 3):
        raise ValueError(f"in_chans must be 1 or 3, got {in_chans}")
    gen = torch.Generator().manual_seed(seed)
    params = draw(n, in_chans, gen)
    chunk = max(1, _PIXELS_PER_CHUNK // (image_size * image_size))
    images = [torch.empty(0, in_chans, image_size, image_size, dtype=torch.uint8)]
    masks = [torch.empty(0, image_size, image_size, dtype=torch.uint8)]
    for start in range(0, n, chunk):
        img, mask = render(
            {k: t[start : start + chunk] for k, t in params.items()}, image_size, in_chans, gen
        )
        images.append(img)
        masks.append(mask)
    return params, torch.cat(images), torch.cat(masks)


def split_seed(split: str) -> int:
    """The seed of a split: ``train`` and ``test`` draw disjoint streams from one base seed."""
    return BASE_SEED * 2 + (0 if split == "train" else 1)


def toy_set(name: str, split: str, cfg: DataConfig, drawn: tuple[torch.Tensor, ...], classes: list[str],
            num_parts: int) -> ImageSet:  # fmt: skip
    """The first ``cfg.limit`` of ``cfg.toy_size`` drawn ``(images, targets, part masks, ...)`` as a set."""
    n = cfg.toy_size if cfg.limit is None else min(cfg.toy_size, cfg.limit)
    images, targets, masks = (t[:n].clone() for t in drawn[:3])
    return ImageSet(name=name, split=split, classes=list(classes), targets=targets, images=images,
                    part_masks=masks, num_gt_parts=num_parts)  # fmt: skip


def load_toy_parts(cfg: DataConfig, split: str) -> ImageSet:
    """``cfg.toy_size`` toy-parts images (then ``cfg.limit``) at cfg.image_size with part masks."""
    images, targets, masks, k = make_toy_parts(cfg.toy_size, cfg.image_size, cfg.in_chans, split_seed(split))
    return toy_set("toy_parts", split, cfg, (images, targets, masks), CLASSES, k)
