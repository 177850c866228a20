"""Image grids: reconstructions un-normalise norm-pix predictions; overlays mark hidden patches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from semmae.masking import build
from semmae.models import build_mae
from semmae.viz.masks import mask_overlay_grid, overlay_parts, part_colors, save_tiles
from semmae.viz.recon import reconstruction_panels


def test_perfect_norm_pix_prediction_reconstructs_the_image() -> None:
    model = build_mae("mae_debug", norm_pix_loss=True)
    x = torch.randn(2, 1, 28, 28)
    mask = build("random", ratio=0.75)(2, 49, generator=torch.Generator().manual_seed(0))
    panels = reconstruction_panels(x, model.target(x), mask.mask, 4, norm_pix=True)
    assert panels.shape == (2, 4, 1, 28, 28)
    assert torch.allclose(panels[:, 2], x, atol=1e-3)  # reconstruction = original
    assert torch.allclose(panels[:, 3], x, atol=1e-3)  # pasted = original
    hidden = panels[:, 1] == x.amin()
    assert hidden.float().mean() > 0.7  # the masked panel hides ~75% of pixels


def test_reconstruction_grid_png(tmp_path: Path) -> None:
    path = save_tiles(torch.rand(3 * 4, 1, 28, 28), tmp_path / "r.png", 4, upscale=2)
    w, h = Image.open(path).size
    assert (w, h) == (4 * 56 + 5 * 2, 3 * 56 + 4 * 2)


def test_overlays_and_mask_grid(tmp_path: Path) -> None:
    colors = part_colors(5)
    assert colors.shape == (5, 3) and torch.unique(colors, dim=0).shape[0] == 5
    images = torch.rand(2, 1, 28, 28)
    labels = torch.randint(0, 4, (2, 7, 7))
    over = overlay_parts(images, labels, 4)
    assert over.shape == (2, 3, 28, 28) and 0 <= over.min() and over.max() <= 1
    flat = labels.view(2, 49)
    masks = [
        build("random", ratio=0.75)(2, 49, generator=torch.Generator().manual_seed(s)).mask for s in range(3)
    ]
    path = mask_overlay_grid(
        images, flat, masks, (7, 7), 4, tmp_path / "m.png", titles=["parts", "a", "b", "c"]
    )
    img = torch.from_numpy(np.array(Image.open(path).convert("L"))).float()
    assert img.numel() > 0 and img.std() > 0


def test_interval_bars_write_a_png_and_skip_nothing_to_draw(tmp_path: Path) -> None:
    from semmae.viz.plots import plot_interval_bars

    values = {"floor": (47.5, 38.7, 56.4), "random": (50.5, 49.6, 51.3), "one seed": (49.0, None, None)}
    path = plot_interval_bars(values, tmp_path / "bars.png", title="t", ylabel="%")
    assert path is not None and Image.open(path).size[0] > 300
    diff = plot_interval_bars({"a": (-2.0, -5.0, 1.0)}, tmp_path / "d.png", zero_line=True)
    assert diff is not None and diff.is_file()
    assert plot_interval_bars({}, tmp_path / "none.png") is None and not (tmp_path / "none.png").exists()
