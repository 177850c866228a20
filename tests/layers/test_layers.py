"""Patches, token gathers and position embeddings."""

from __future__ import annotations

import pytest
import torch

from semmae.layers import gather_tokens, patchify, sincos_pos_embed_2d, unpatchify, unshuffle_tokens


@pytest.mark.parametrize(("c", "size", "p"), [(1, 28, 4), (3, 32, 8), (3, 224, 16)])
def test_patchify_inverts(c: int, size: int, p: int) -> None:
    x = torch.randn(2, c, size, size)
    patches = patchify(x, p)
    assert patches.shape == (2, (size // p) ** 2, p * p * c)
    assert torch.equal(unpatchify(patches, p, (size // p, size // p), c), x)


def test_patch_order_is_raster_and_channel_last() -> None:
    x = torch.arange(2 * 4 * 4, dtype=torch.float32).view(1, 2, 4, 4)
    patches = patchify(x, 2)
    # patch 1 is the top-right 2x2 block; inside it pixels are (row, col, channel)
    expected = torch.tensor([2.0, 18, 3, 19, 6, 22, 7, 23])
    assert torch.equal(patches[0, 1], expected)


def test_unshuffle_restores_raster_order() -> None:
    g = torch.Generator().manual_seed(0)
    b, length, d = 3, 10, 4
    x = torch.randn(b, length, d, generator=g)
    shuffle = torch.argsort(torch.rand(b, length, generator=g), dim=1)
    restore = torch.argsort(shuffle, dim=1)
    keep = shuffle[:, :6]
    mask_token = torch.full((1, 1, d), -7.0)
    out = unshuffle_tokens(gather_tokens(x, keep), mask_token, restore)
    hidden = torch.ones(b, length, dtype=torch.bool)
    hidden.scatter_(1, keep, False)
    assert torch.equal(out[~hidden], x[~hidden])
    assert (out[hidden] == -7.0).all()


def test_sincos_embedding_values() -> None:
    emb = sincos_pos_embed_2d(8, (3, 5))
    assert emb.shape == (16, 8)
    assert torch.equal(emb[0], torch.zeros(8))
    # position (row 0, col 0): sin(0)=0 and cos(0)=1 in each half
    assert torch.allclose(emb[1], torch.tensor([0.0, 0, 1, 1, 0, 0, 1, 1]))
    # distinct positions get distinct embeddings
    assert torch.unique(emb[1:], dim=0).shape[0] == 15
    with pytest.raises(ValueError):
        sincos_pos_embed_2d(6, (2, 2))
