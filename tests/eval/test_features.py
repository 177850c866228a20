"""Feature extraction: CLS / patch-mean pooling of the encoder's tokens, any N, any batch size."""

from __future__ import annotations

import pytest
import torch

from semmae.errors import ConfigError
from semmae.eval.features import encode_batches, pool_tokens
from semmae.models.encoder import load_encoder


def _batches(images: torch.Tensor, labels: torch.Tensor, bs: int):
    return ((images[i : i + bs], labels[i : i + bs]) for i in range(0, len(images), bs))


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(11, 1, 28, 28, generator=g), torch.randint(0, 10, (11,), generator=g)


def test_pooling_definitions() -> None:
    tokens = torch.arange(2 * 3 * 2, dtype=torch.float32).view(2, 3, 2)
    assert torch.equal(pool_tokens(tokens, "cls"), tokens[:, 0])
    assert torch.equal(pool_tokens(tokens, "mean"), (tokens[:, 1] + tokens[:, 2]) / 2)
    with pytest.raises(ConfigError, match="cls, mean"):
        pool_tokens(tokens, "max")


@pytest.mark.parametrize("feature", ["cls", "mean"])
def test_features_match_the_encoder_for_any_batch_size(data, feature) -> None:
    images, labels = data
    enc, _ = load_encoder("random:mae_debug")
    enc.train()  # extraction must switch to eval mode and switch back
    with torch.no_grad():
        tokens = enc.eval().forward_features(images)
    enc.train()
    ref = tokens[:, 0] if feature == "cls" else tokens[:, 1:].mean(1)
    for bs in (1, 4, 64):  # N = 11 is not a multiple of 4 and smaller than 64
        feats, targets = encode_batches(
            enc, _batches(images, labels, bs), 11, feature=feature, progress=False
        )
        assert feats.dtype == torch.float32 and feats.shape == (11, 32)
        torch.testing.assert_close(feats, ref, rtol=0, atol=1e-6)
        assert torch.equal(targets, labels)
        assert enc.training


def test_bf16_autocast_is_close_and_float32(data) -> None:
    images, labels = data
    enc, _ = load_encoder("random:mae_debug")
    ref, _ = encode_batches(enc, _batches(images, labels, 8), 11, progress=False)
    low, _ = encode_batches(enc, _batches(images, labels, 8), 11, precision="bf16", progress=False)
    assert low.dtype == torch.float32
    assert (low - ref).abs().max().item() < 0.1 and not torch.equal(low, ref)


def test_count_mismatch_is_caught(data) -> None:
    images, labels = data
    enc, _ = load_encoder("random:mae_debug")
    with pytest.raises(ValueError, match="expected 12 images"):
        encode_batches(enc, _batches(images, labels, 4), 12, progress=False)
