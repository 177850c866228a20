"""The sizes of the registered MAE presets, without torch.

The config checks a model's widths against its head counts (and the patch size against the image
size) when it loads, before torch is imported; :mod:`semmae.models.presets` builds the models from
the same table.
"""

from __future__ import annotations

from typing import Any

# name -> (embed_dim, depth, heads, decoder_dim, decoder_depth, decoder_heads, patch, img, chans)
PRESET_SIZES: dict[str, tuple[int, int, int, int, int, int, int, int, int]] = {
    "mae_vit_tiny_patch16": (192, 12, 3, 512, 8, 16, 16, 224, 3),
    "mae_vit_small_patch16": (384, 12, 6, 512, 8, 16, 16, 224, 3),
    "mae_vit_base_patch16": (768, 12, 12, 512, 8, 16, 16, 224, 3),
    "mae_vit_large_patch16": (1024, 24, 16, 512, 8, 16, 16, 224, 3),
    "mae_vit_huge_patch14": (1280, 32, 16, 512, 8, 16, 14, 224, 3),
    # SemMAE's headline encoder (ViT-B/8: 28x28 = 784 patches at 224 px).
    "mae_vit_base_patch8": (768, 12, 12, 512, 8, 16, 8, 224, 3),
    # ~1.9M-param encoder: several hundred img/s on 2 CPU cores at 28x28, patch 4 (L = 49).
    "mae_fmnist_tiny": (192, 6, 3, 128, 2, 4, 4, 28, 1),
    # seconds-long smoke runs and tests.
    "mae_debug": (32, 2, 2, 32, 1, 2, 4, 28, 1),
}


def preset_sizes(name: str) -> dict[str, Any]:
    """Constructor arguments of the preset ``name`` (a fresh dict); KeyError for an unknown one."""
    e, d, h, dd, ddp, dh, p, img, c = PRESET_SIZES[name]
    return dict(
        img_size=img, patch_size=p, in_chans=c, embed_dim=e, depth=d, num_heads=h,
        decoder_embed_dim=dd, decoder_depth=ddp, decoder_num_heads=dh, mlp_ratio=4.0,
    )  # fmt: skip
