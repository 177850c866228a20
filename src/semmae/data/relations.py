"""Toy-relations: a procedural set whose class lives in how parts pair, never in one part's pixels.

Why this set exists. Semantic masking (SemMAE) differs from random masking in one respect: it
can hide a *whole* part, so that the encoder must infer that part from the *other* parts. That is
only worth learning when (i) a hidden part can be predicted from the visible ones and (ii) what
links them is also what the downstream task needs. Toy-parts cannot show this: its classes differ
in the geometry of every part, so one visible part already tells the class. Here the design
rules that out by construction:

- Every image shows three parts on a textured background (part ids: 0 background, 1 disc,
  2 square, 3 diamond). The parts sit in three of the four quadrants, chosen uniformly at
  random, with jittered centres and sizes; pose never depends on the class.
- Each part wears one of four *appearances* ``a`` in 0..3, two binary factors: bit 0 the colour
  family (RGB: warm or cool hue; grey: dark or light), bit 1 the stripe direction (horizontal or
  vertical, ±0.25 rad of jitter, random phase).
- The class ``c`` in 0..3 is a pairing rule: the disc's appearance ``a1`` is uniform, the square
  wears ``a2 = a1 XOR c`` and the diamond ``a3 = a1 XOR m(c)`` with ``m = (0, 2, 3, 1)``
  (multiplication by a generator of GF(4)). So for every class each part's appearance is
  uniform over the four, and position, size and shape are class-free: **any single part, with
  its pixels and position, carries no information about the class** (chance is 25%).
- **Any two parts determine the class and the third part**: ``a1 XOR a2 = c``,
  ``a1 XOR a3 = m(c)``, ``a2 XOR a3 = c XOR m(c)``, and both maps are bijections. So an MAE that
  learns to reconstruct a completely hidden part must work out the pairing rule of the image,
  which is its class; an encoder that only copies texture from visible patches of the same part
  (what random masking mostly rewards) need not.

What a *bag* of appearances tells (measured ceiling, not a design goal): ``alike`` shows all three
parts in one colour family and one stripe direction, while the three other classes show a 2–1
split in both factors. So features that only count appearances, without binding each one to its
shape, can pick out ``alike`` and nothing else: 25% + 75%/3 = 50% top-1. Telling the other three
classes apart needs which shape wears which appearance. A random-init ViT with a linear probe
lands near that 50%; an encoder clearly above it has learned the binding.

What it tests: whether hiding whole parts (inter-part masking, ``semantic``/``inter``/``oracle``
in ``semmae study``) gives features that linearly separate a relational class better than hiding
random patches, with ground-truth part masks for oracle masks and part-discovery scores. The
background (smooth waves of a random grey level) and the pixel noise are nuisances of equal law
in every class. In words, the classes are what the square and the diamond change relative to the
disc: ``alike`` (nothing), ``colour|stripes``, ``stripes|both``, ``both|colour``.

Drawing and textures are those of :mod:`semmae.data.synthetic` (shapes, plane waves, quantising).
"""

from __future__ import annotations

import math

import torch

from semmae.config import DataConfig
from semmae.data.datasets import ImageSet
from semmae.data.synthetic import (
    BOX,
    DIAMOND,
    ELLIPSE,
    inside_shape,
    pixel_grid,
    plane_wave,
    render_in_chunks,
    split_seed,
    to_uint8,
    uniform,
)

NUM_PARTS = 4
PART_NAMES = ["background", "disc", "square", "diamond"]
CLASSES = ["alike", "colour|stripes", "stripes|both", "both|colour"]
PAIRING = torch.tensor([0, 2, 3, 1])  # m(c): the diamond's appearance is a1 XOR m(c)
BASE_SEED_OFFSET = 7  # keeps these images' random streams apart from toy-parts'

_SHAPES = torch.tensor([ELLIPSE, BOX, DIAMOND])
_HALF_EXTENT = torch.tensor([0.30, 0.27, 0.38])  # per part, in units of half the image side: equal areas ±20%
_SLOTS = torch.tensor([[-0.5, -0.5], [0.5, -0.5], [-0.5, 0.5], [0.5, 0.5]])  # quadrant centres (x, y)
_WARM, _COOL = torch.tensor([0.85, 0.50, 0.25]), torch.tensor([0.25, 0.55, 0.85])
_GREY = torch.tensor([0.35, 0.75])  # dark, light: the colour factor of grey images
_STRIPE_FREQ = 3.0  # cycles per unit: a 5-pixel period at 32 px
_STRIPE_AMP = 0.17


def appearances(cls: torch.Tensor, first: torch.Tensor) -> torch.Tensor:
    """The three parts' appearance codes of each image: (n,) class, (n,) disc code -> (n, 3) int64."""
    return torch.stack([first, first ^ cls, first ^ PAIRING[cls]], 1)


def _draw_params(n: int, in_chans: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Every random quantity of ``n`` images, drawn in a fixed order (independent of the image size)."""
    cls = torch.randint(0, len(CLASSES), (n,), generator=gen)
    code = appearances(cls, torch.randint(0, 4, (n,), generator=gen))
    slots = torch.rand(n, 4, generator=gen).argsort(1)[:, :3]  # three distinct quadrants
    centre = _SLOTS[slots] + uniform(gen, -0.08, 0.08, n, 3, 2)
    half = _HALF_EXTENT * uniform(gen, 0.85, 1.15, n, 3)
    warm = (code & 1) == 0
    if in_chans == 3:
        base = torch.where(warm[..., None], _WARM, _COOL) + uniform(gen, -0.08, 0.08, n, 3, 3)
    else:
        base = torch.where(warm, _GREY[0], _GREY[1])[..., None] + uniform(gen, -0.05, 0.05, n, 3, 1)
    stripe_angle = torch.where((code & 2) == 0, 0.0, math.pi / 2) + uniform(gen, -0.25, 0.25, n, 3)
    return {
        "cls": cls,
        "code": code,
        "shape": torch.cat([centre, half[..., None].expand(-1, -1, 2), _SHAPES.expand(n, 3)[..., None]], 2),
        "colour": base,  # (n, 3 parts, C)
        "stripe_angle": stripe_angle,
        "stripe_phase": uniform(gen, 0.0, 2 * math.pi, n, 3),
        "bg_level": uniform(gen, 0.25, 0.45, n),
        "bg_orient": uniform(gen, 0.0, math.pi, n, 3),
        "bg_phase": uniform(gen, 0.0, 2 * math.pi, n, 3),
    }


def _render(
    p: dict[str, torch.Tensor], image_size: int, in_chans: int, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images uint8 (n, C, S, S) and part masks uint8 (n, S, S) of the drawn parameters."""
    n = p["cls"].shape[0]
    x, y = (t.expand(n, -1, -1) for t in pixel_grid(image_size))
    waves = sum(plane_wave(x, y, p["bg_orient"][:, k], p["bg_phase"][:, k], 0.8 + 0.25 * k) for k in range(3))
    value = (p["bg_level"][:, None, None] + 0.05 * waves)[:, None].expand(-1, in_chans, -1, -1).clone()
    labels = torch.zeros(n, image_size, image_size, dtype=torch.uint8)
    for part in range(3):
        inside = inside_shape(x, y, p["shape"][:, part])  # (n, S, S); quadrants keep parts apart
        stripes = plane_wave(x, y, p["stripe_angle"][:, part], p["stripe_phase"][:, part], _STRIPE_FREQ)
        look = p["colour"][:, part, :, None, None] + _STRIPE_AMP * stripes[:, None]  # (n, C, S, S)
        value = torch.where(inside[:, None], look, value)
        labels.masked_fill_(inside, part + 1)
    return to_uint8(value, gen), labels


def make_toy_relations(
    n: int, image_size: int = 32, in_chans: int = 3, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw ``n`` toy-relations images (see the module docstring).

    Args:
        n: number of images.
        image_size: S.
        in_chans: 3 (hue families) or 1 (dark / light).
        seed: the same seed gives the same images.

    Returns:
        ``(images, targets, part_masks, codes)``: uint8 (N, C, S, S), int64 (N,) class ids in
        0..3, uint8 (N, S, S) part ids in 0..3, and int64 (N, 3) the parts' appearance codes.
    """
    if in_chans not in (1, 3):
        raise ValueError(f"in_chans must be 1 or 3, got {in_chans}")
    gen = torch.Generator().manual_seed(seed)
    params = _draw_params(n, in_chans, gen)
    images, masks = render_in_chunks(params, n, image_size, in_chans, _render, gen)
    return images, params["cls"].clone(), masks, params["code"].clone()


def load_toy_relations(cfg: DataConfig, split: str) -> ImageSet:
    """``cfg.toy_size`` toy-relations images (then ``cfg.limit``) at cfg.image_size with part masks."""
    n = cfg.toy_size if cfg.limit is None else min(cfg.toy_size, cfg.limit)
    seed = split_seed(split) + BASE_SEED_OFFSET
    images, targets, masks, _ = make_toy_relations(cfg.toy_size, cfg.image_size, cfg.in_chans, seed)
    return ImageSet(
        name="toy_relations",
        split=split,
        classes=list(CLASSES),
        targets=targets[:n].clone(),
        images=images[:n].clone(),
        part_masks=masks[:n].clone(),
        num_gt_parts=NUM_PARTS,
    )
