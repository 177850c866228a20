"""Toy-relations: a procedural set whose class lives in which part wears which appearance.

Why this set exists. Semantic masking (SemMAE) differs from random masking in one respect: it
can hide a *whole* part, so that the encoder must infer that part from the *other* parts. That is
only worth learning when (i) a hidden part can be predicted from the visible ones and (ii) what
links them is also what the downstream task needs. Toy-parts cannot show this: its classes differ
in the geometry of every part, so one visible part already tells the class.

Design (second version; see "Why it changed" below):

- Every image shows four parts on a textured background (part ids: 0 background, 1 disc,
  2 square, 3 diamond, 4 triangle), one per quadrant, the parts assigned to the quadrants by a
  uniformly random permutation, with jittered centres and sizes of about equal area. Layout,
  pose and size never depend on the class.
- Each part wears one of four *appearances* ``a`` in 0..3, two binary factors: bit 0 the colour
  family (RGB: warm or cool hue; grey: dark or light), bit 1 the stripe direction (horizontal or
  vertical, ±0.25 rad of jitter, random phase). The four parts always wear the four appearances,
  one each: the *bag* of appearances is the same in every image.
- Codes are the Klein group (XOR on 0..3). The class ``k`` in 0..2 stands for ``c = k + 1`` and
  the parts wear ``g XOR P[k]`` with ``P[k] = (0, c, w*c, w*w*c)`` in GF(4) (``w`` a generator),
  ``g`` uniform in 0..3. In words, the class is *which part shares the disc's colour family*
  (diamond, square, triangle); the disc's stripe twin then follows cyclically.
- Hence, by construction: each single part's appearance is uniform in every class; the bag of
  appearances is constant; layout is class-free; so **no single part, no bag of appearances and
  no layout carries any information about the class** (chance 1/3). **Any two parts fix the
  class** (the XOR of their codes takes the three nonzero values over the three classes, see
  :data:`PATTERNS`), and with it the other two parts. An MAE that reconstructs two hidden parts
  from two visible ones must work out which part wears which appearance under the rule of the
  image, which is its class.

Why three classes, not four: with the bag fixed, the four appearances are a permutation of the
four parts. A class whose every part is uniform over the four appearances needs at least four
(part, appearance) pairs per part pair, of the 12 ordered pairs of distinct appearances, so at
most three classes can each be fixed by any two parts.

What a probe needs (measured with logistic regression on the exact codes, 1600 images per
split): the bag of appearances gives 33.8% (chance); the 16 one-hot (part, appearance) bindings
give 50.3%, since with every binding equally frequent in every class no linear score on them can
rank all three classes right; the 12 pairwise relations (do parts i and j share colour, stripes)
give 100%. So a linear probe or kNN above chance needs features that bind appearance to shape,
and near 100% features that encode how parts relate.

Why it changed (measured): the first version drew three parts with codes ``a1, a1 XOR c,
a1 XOR m(c)`` over four classes. Its bag of appearances identified one class (all three parts
alike) out of four, so features that merely count appearances reached 25% + 75%/3 = 50% top-1;
in a 3-seed study every method *and* the untrained network sat at ~50% linear / ~52% kNN, and
random masking beat the floor by only 0.8 floor std. The bag ceiling, not the masking, set the
numbers. This version removes the bag, the layout and the single part as cues.

The background (smooth waves of a random grey level) and the pixel noise are nuisances of equal
law in every class. Drawing and textures are those of :mod:`semmae.data.synthetic`.
"""

from __future__ import annotations

import math

import torch

from semmae.config import DataConfig
from semmae.data.imageset import ImageSet
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
    toy_set,
    uniform,
)

PARTS = 4  # foreground parts per image
NUM_PARTS = PARTS + 1  # part ids with the background
PART_NAMES = ["background", "disc", "square", "diamond", "triangle"]
CLASSES = ["disc+diamond", "disc+square", "disc+triangle"]  # the disc's colour twin
# PATTERNS[k, p]: part p's code relative to the disc in class k, (0, c, w c, w^2 c) in GF(4), c = k + 1.
PATTERNS = torch.tensor([[0, 1, 2, 3], [0, 2, 3, 1], [0, 3, 1, 2]])
BASE_SEED_OFFSET = 7  # keeps these images' random streams apart from toy-parts'
TRIANGLE = 3.0  # shape kind beyond synthetic's ellipse / box / diamond

_SHAPES = torch.tensor([ELLIPSE, BOX, DIAMOND, TRIANGLE])
_HALF_EXTENT = torch.tensor([0.30, 0.27, 0.38, 0.38])  # half the image side = 1: areas within ±5%
_SLOTS = torch.tensor([[-0.5, -0.5], [0.5, -0.5], [-0.5, 0.5], [0.5, 0.5]])  # quadrant centres (x, y)
_WARM, _COOL = torch.tensor([0.85, 0.50, 0.25]), torch.tensor([0.25, 0.55, 0.85])
_GREY = torch.tensor([0.35, 0.75])  # dark, light: the colour factor of grey images
_STRIPE_FREQ = 3.0  # cycles per unit: a 5-pixel period at 32 px
_STRIPE_AMP = 0.17


def appearances(cls: torch.Tensor, first: torch.Tensor) -> torch.Tensor:
    """The four parts' appearance codes of each image: (n,) class, (n,) disc code -> (n, 4) int64."""
    return first[:, None] ^ PATTERNS[cls]


def _inside(x: torch.Tensor, y: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
    """Inside one part per image; shape (n, 5) = cx, cy, ax, ay, kind; x, y (n, S, S) -> bool.

    The triangle (apex up, base 2 ax, height 2 ay) is drawn here; the other kinds by synthetic.
    """
    cx, cy, ax, ay, kind = (shape[:, i, None, None] for i in range(5))
    du, dv = (x - cx) / ax, (y - cy) / ay
    triangle = (dv.abs() <= 1.0) & (du.abs() <= (1.0 + dv) / 2)
    return torch.where(kind == TRIANGLE, triangle, inside_shape(x, y, shape))


def _draw_params(n: int, in_chans: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Every random quantity of ``n`` images, drawn in a fixed order (independent of the image size)."""
    cls = torch.randint(0, len(CLASSES), (n,), generator=gen)
    code = appearances(cls, torch.randint(0, 4, (n,), generator=gen))
    slots = torch.rand(n, 4, generator=gen).argsort(1)  # part p sits in quadrant slots[:, p]
    centre = _SLOTS[slots] + uniform(gen, -0.05, 0.05, n, PARTS, 2)  # jitter keeps parts in their quadrant
    half = _HALF_EXTENT * uniform(gen, 0.9, 1.1, n, PARTS)
    warm = (code & 1) == 0
    if in_chans == 3:
        base = torch.where(warm[..., None], _WARM, _COOL) + uniform(gen, -0.08, 0.08, n, PARTS, 3)
    else:
        base = torch.where(warm, _GREY[0], _GREY[1])[..., None] + uniform(gen, -0.05, 0.05, n, PARTS, 1)
    stripe_angle = torch.where((code & 2) == 0, 0.0, math.pi / 2) + uniform(gen, -0.25, 0.25, n, PARTS)
    kinds = _SHAPES.expand(n, PARTS)[..., None]
    return {
        "cls": cls,
        "code": code,
        "shape": torch.cat([centre, half[..., None].expand(-1, -1, 2), kinds], 2),
        "colour": base,  # (n, parts, C)
        "stripe_angle": stripe_angle,
        "stripe_phase": uniform(gen, 0.0, 2 * math.pi, n, PARTS),
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
    for part in range(PARTS):
        inside = _inside(x, y, p["shape"][:, part])  # (n, S, S); quadrants keep parts apart
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
        0..2, uint8 (N, S, S) part ids in 0..4, and int64 (N, 4) the parts' appearance codes.
    """
    if in_chans not in (1, 3):
        raise ValueError(f"in_chans must be 1 or 3, got {in_chans}")
    gen = torch.Generator().manual_seed(seed)
    params = _draw_params(n, in_chans, gen)
    images, masks = render_in_chunks(params, n, image_size, in_chans, _render, gen)
    return images, params["cls"].clone(), masks, params["code"].clone()


def load_toy_relations(cfg: DataConfig, split: str) -> ImageSet:
    """``cfg.toy_size`` toy-relations images (then ``cfg.limit``) at cfg.image_size with part masks."""
    seed = split_seed(split) + BASE_SEED_OFFSET
    drawn = make_toy_relations(cfg.toy_size, cfg.image_size, cfg.in_chans, seed)
    return toy_set("toy_relations", split, cfg, drawn, CLASSES, NUM_PARTS)
