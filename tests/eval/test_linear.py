"""Linear probe: a one-pass lr grid whose members train exactly as they would alone."""

from __future__ import annotations

import pytest
import torch

from semmae.errors import ConfigError
from semmae.eval.linear import ProbeGrid, _split, linear_probe, probe_scores, train_probe_grid


def _blobs(n_per: int, seed: int, dim: int = 8, classes: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Well-separated Gaussian blobs (centres 10 apart, unit noise) with an offset and scale to undo."""
    g = torch.Generator().manual_seed(seed)
    centres = 10.0 * torch.eye(classes, dim)
    labels = torch.arange(classes).repeat_interleave(n_per)
    feats = centres[labels] + torch.randn(len(labels), dim, generator=g)
    return 3.0 * feats + 5.0, labels


def test_separable_features_reach_100_percent() -> None:
    xtr, ytr = _blobs(100, 0)
    xte, yte = _blobs(30, 1)
    res = linear_probe(
        xtr, ytr, xte, yte, num_classes=3, lrs=[0.01, 0.1], epochs=10, batch_size=32, progress=False
    )
    assert res["top1"] == 100.0 and "top5" not in res
    assert res["lr"] in (0.01, 0.1) and res["val_top1"] == 100.0
    assert res["n_fit"] == 270 and res["n_val"] == 30


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_grid_members_train_as_if_alone(optimizer) -> None:
    x, y = _blobs(20, 2)
    kw = dict(
        num_classes=3,
        epochs=3,
        batch_size=16,
        optimizer=optimizer,
        weight_decay=1e-3,
        warmup_epochs=1,
        seed=5,
        progress=False,
    )
    grid = train_probe_grid(x, y, lrs=[0.5, 0.01, 0.2], **kw)
    alone = train_probe_grid(x, y, lrs=[0.01], **kw)
    torch.testing.assert_close(grid.weights[1], alone.weights[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grid.biases[1], alone.biases[0], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(grid.weights[0], grid.weights[1])
    torch.testing.assert_close(probe_scores(grid, x)[1], probe_scores(alone, x)[0], rtol=1e-5, atol=1e-5)


def test_lr_is_chosen_on_the_held_out_split() -> None:
    xtr, ytr = _blobs(50, 3)
    xte, yte = _blobs(10, 4)
    res = linear_probe(
        xtr, ytr, xte, yte, num_classes=3, lrs=[1e-7, 0.1], epochs=5, batch_size=32, progress=False
    )
    assert res["lr"] == 0.1  # the first lr barely moves from its random start
    assert res["grid"]["0.1"] >= res["grid"]["1e-07"]


def test_split_is_deterministic_and_disjoint() -> None:
    fit, val = _split(100, 0.1, seed=3)
    fit2, val2 = _split(100, 0.1, seed=3)
    assert torch.equal(fit, fit2) and torch.equal(val, val2) and len(val) == 10
    assert torch.equal(torch.sort(torch.cat([fit, val])).values, torch.arange(100))
    fit0, val0 = _split(10, 0.0, seed=0)
    assert len(fit0) == 10 and len(val0) == 0
    with pytest.raises(ConfigError, match="fewer than 2"):
        _split(3, 0.9, seed=0)


def test_grid_module_shapes_and_bad_optimizer() -> None:
    grid = ProbeGrid(8, 4, 3, torch.Generator().manual_seed(0))
    assert grid(torch.randn(5, 8)).shape == (3, 5, 4)
    assert all(torch.equal(w, grid.weights[0]) for w in grid.weights)  # members differ only in lr
    x, y = _blobs(5, 0)
    with pytest.raises(ConfigError, match="sgd, adamw"):
        train_probe_grid(x, y, lrs=[0.1], num_classes=3, epochs=1, batch_size=4, optimizer="lars")
