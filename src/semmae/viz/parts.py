"""Part-map pictures: one row per image, input | coloured part overlay | [reconstruction]."""

from __future__ import annotations

from pathlib import Path

import torch

from semmae.config import DataConfig
from semmae.data import build_dataset
from semmae.data.partmaps import load_part_maps
from semmae.data.transforms import center_batch
from semmae.errors import ConfigError
from semmae.viz.masks import overlay_parts, save_tiles, to_rgb


def part_grid(
    images01: torch.Tensor,
    labels: torch.Tensor,
    num_parts: int,
    path: str | Path,
    recon: torch.Tensor | None = None,
    per_row: int = 1,
) -> Path:
    """Write a PNG of input | overlay | reconstruction (when given) panels, ``per_row`` images a row.

    Args:
        images01: (B, C, H, W) in [0, 1].
        labels: (B, h, w) part ids.
        num_parts: K.
        path: PNG to write (parent folders are created).
        recon: optional (B, C, H, W) reconstruction in [0, 1].
        per_row: images side by side in each row; small images are enlarged (nearest) to >= 96 px.

    Returns:
        The path written.
    """
    panels = [to_rgb(images01), overlay_parts(images01, labels.long(), num_parts)]
    if recon is not None:
        panels.append(to_rgb(recon))
    rows = torch.stack(panels, dim=1).flatten(0, 1)  # (B * panels, 3, H, W), row-major
    return save_tiles(rows, path, len(panels) * per_row, upscale=max(1, 96 // rows.shape[-1]))


def render_part_map_file(maps_path: str | Path, data_cfg: DataConfig, n: int, out: str | Path) -> Path:
    """Draw the first ``n`` images of a part-map file's split with their labels overlaid.

    Args:
        maps_path: the ``.npy`` part-map file (with its manifest).
        data_cfg: data section naming the dataset the file was made for.
        n: images to draw.
        out: PNG to write.

    Returns:
        The path written.

    Raises:
        ConfigError: ``n`` < 1, or the config names another dataset than the manifest.
        DataError: the file does not fit the dataset (raised by ``load_part_maps``).
    """
    if n < 1:
        raise ConfigError(f"the number of images to draw must be at least 1, got {n}")
    manifest = load_part_maps(maps_path).manifest
    if manifest.dataset != data_cfg.name:
        raise ConfigError(
            f"part maps {str(maps_path)!r} were made for dataset {manifest.dataset!r} but the config "
            f"names {data_cfg.name!r}; pass --config with the matching data section"
        )
    ds = build_dataset(data_cfg, manifest.split)
    maps = load_part_maps(maps_path, dataset=ds)
    idx = torch.arange(min(n, len(ds)))
    images01, _ = center_batch(ds.load(idx), out_size=ds.image_size)
    labels = maps.lookup(idx).long()
    return part_grid(images01, labels, int(manifest.num_parts), out, per_row=4)
