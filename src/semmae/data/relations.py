"""Toy-relations: a procedural set whose class is the line on which three parts stand.

Why this set exists. Semantic masking (SemMAE) differs from random masking in one respect: it
can hide a *whole* part, so that the encoder must infer that part from the *other* parts. That is
only worth learning when (i) a hidden part can be predicted from the visible ones and (ii) what
links them is also what the downstream task needs. Toy-parts cannot show this: its classes differ
in the geometry of every part, so one visible part already tells the class.

Design (third version; see "Why it changed" below):

- The image is a 3 x 3 grid of cells (cell ``c`` in 0..8, row-major). Three parts (part ids:
  0 background, 1 disc, 2 square, 3 triangle) stand in the three cells of one *line* of the grid,
  as in noughts and crosses: a row, a column or a diagonal. The class is that line
  (:data:`LINES`, 8 classes, chance 12.5%). Which part stands in which of the line's cells is a
  uniformly random permutation, and each part is jittered inside its cell.
- Every part wears a random colour (grey level in 1 channel) and stripes of random direction and
  phase, and lies on a background of smooth waves of a random grey level: appearance is a
  nuisance of equal law in every class.
- Hence, by construction: **no single part tells the class** (a part's cell lies on 2 to 4 lines:
  the centre on 4, a corner on 3, an edge cell on 2), and no part's shape or appearance carries
  anything; **any two parts fix the class** (two cells share at most one line), and with it the
  cell of the third part. An MAE that must reconstruct a whole hidden part can only place it by
  working out the line from the two parts it sees, which is the class. The class is thus a
  relation between the parts' positions.
- What a probe needs: the class is a *linear* function of where the image is occupied (the line
  whose three cells are all occupied has score 3, every other line at most 1, since two lines
  share at most one cell), so a representation that encodes the layout of the parts supports a
  linear probe; a bag of appearances carries nothing.

Why it changed (measured; one seed, 3200 images per split, the study's 4-block ViT, linear
probe on the CLS token). The second version (four parts wearing the four appearances, the class
being which part shares the disc's colour) was not learnable at CPU budgets: its 3-seed study put
every method *and* the untrained network at chance (linear 32.5-33.4%, chance 33.3%), and even
supervised training from the random initialisation stayed at chance (32.75% after 20 epochs): the
class needs shape-to-colour binding across the image followed by an XOR of colours. Two
candidates were then measured and dropped: "which parts are present" (seven striped shapes, the
class a line of the Fano plane, chance 14.3%; supervised 47%) where MAE's probe (33.8%) stayed
below the untrained network's (37.7%), MAE encoding shape and stripe direction no better than
random weights; and three parts in a line along one of four directions at a random offset (chance
25%; not linear in the occupied cells), MAE 49.2% against the floor's 51.5%. What MAE did encode
better than random weights was where the parts are (which quadrant of the Fano images is empty:
99% against 85% from the same features), so this version puts the relation in the layout. On it,
supervised training reaches 70.2% after 6 epochs; the untrained network's probe gives 71.1% (kNN
35.2%); MAE after 600 steps at batch 64 stays below it (69.1%, its loss still on a plateau),
and after 1200 steps at batch 32 (the same images seen) leaves it behind: 89.5% (kNN 52.5%).

Drawing helpers are those of :mod:`semmae.data.synthetic`.
"""

from __future__ import annotations

import math

import torch

from semmae.config import DataConfig
from semmae.data.imageset import ImageSet
from semmae.data.synthetic import (
    BOX,
    ELLIPSE,
    draw_and_render,
    inside_shape,
    pixel_grid,
    plane_wave,
    split_seed,
    to_uint8,
    toy_set,
    uniform,
)

PARTS = 3  # foreground parts per image
NUM_PARTS = PARTS + 1  # part ids with the background
# LINES[k]: the three grid cells (row-major, 0..8) of class k's line.
LINES = torch.tensor([[0, 1, 2], [3, 4, 5], [6, 7, 8], [0, 3, 6], [1, 4, 7], [2, 5, 8], [0, 4, 8], [2, 4, 6]])
CLASSES = ["top row", "middle row", "bottom row", "left column", "middle column", "right column",
           "diagonal", "anti-diagonal"]  # fmt: skip
BASE_SEED_OFFSET = 7  # keeps these images' random streams apart from toy-parts'
TRIANGLE = 3.0  # shape kind beyond synthetic's ellipse / box / diamond

CELL_PITCH = 2.0 / 3.0  # the image spans [-1, 1]: three cells a side
_CELLS = torch.tensor([[(c % 3 - 1) * CELL_PITCH, (c // 3 - 1) * CELL_PITCH] for c in range(9)])  # (x, y)
_SHAPES = torch.tensor([ELLIPSE, BOX, TRIANGLE])
_HALF_EXTENT = torch.tensor([0.22, 0.20, 0.27])  # disc, square, triangle: about equal areas
_JITTER = 0.08  # of a part's centre in its cell; neighbours touch in under 1% of images
_STRIPE_FREQ = 2.5  # cycles per unit: a 6.4-pixel period at 32 px
_STRIPE_AMP = 0.15


def part_cells(cls: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """The grid cell of each part: (n,) class, (n, 3) permutation -> (n, 3) int64 cells of disc, square, triangle.

    ``order[:, i]`` is the position along the line (0..2) of part ``i``.
    """
    return LINES[cls].gather(1, order)


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
    cells = part_cells(cls, torch.rand(n, PARTS, generator=gen).argsort(1))
    centre = _CELLS[cells] + uniform(gen, -_JITTER, _JITTER, n, PARTS, 2)
    half = _HALF_EXTENT * uniform(gen, 0.9, 1.1, n, PARTS)
    kinds = _SHAPES.expand(n, PARTS)[..., None]
    return {
        "cls": cls,
        "cells": cells,
        "shape": torch.cat([centre, half[..., None].expand(-1, -1, 2), kinds], 2),
        "colour": uniform(gen, 0.15, 0.9, n, PARTS, in_chans),
        "stripe_angle": uniform(gen, 0.0, math.pi, n, PARTS),
        "stripe_phase": uniform(gen, 0.0, 2 * math.pi, n, PARTS),
        "bg_level": uniform(gen, 0.25, 0.55, n),
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
        inside = _inside(x, y, p["shape"][:, part])  # (n, S, S); cells keep parts apart
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
        in_chans: 3 (random colours) or 1 (random grey levels).
        seed: the same seed gives the same images.

    Returns:
        ``(images, targets, part_masks, cells)``: uint8 (N, C, S, S), int64 (N,) class ids in
        0..7 (the line, :data:`LINES`), uint8 (N, S, S) part ids in 0..3, and int64 (N, 3) the
        grid cells of the disc, the square and the triangle.
    """
    params, images, masks = draw_and_render(n, image_size, in_chans, seed, _draw_params, _render)
    return images, params["cls"].clone(), masks, params["cells"].clone()


def load_toy_relations(cfg: DataConfig, split: str) -> ImageSet:
    """``cfg.toy_size`` toy-relations images (then ``cfg.limit``) at cfg.image_size with part masks."""
    seed = split_seed(split) + BASE_SEED_OFFSET
    drawn = make_toy_relations(cfg.toy_size, cfg.image_size, cfg.in_chans, seed)
    return toy_set("toy_relations", split, cfg, drawn, CLASSES, NUM_PARTS)
