"""The mask contract (DESIGN.md §4) for every registered strategy."""

from __future__ import annotations

import pytest
import torch

from semmae.masking import MaskOutput, build, mask_budget, names

NO_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")
DEVICES = ["cpu", pytest.param("cuda", marks=NO_CUDA)]
NUM_PARTS = 5


def _run(name: str, ratio: float, batch: int, length: int, seed: int, device: str = "cpu") -> MaskOutput:
    strategy = build(name, ratio=ratio)
    kwargs: dict = {}
    if strategy.requires_parts:
        label_gen = torch.Generator().manual_seed(1000 + length)
        kwargs = dict(
            part_labels=torch.randint(0, NUM_PARTS, (batch, length), generator=label_gen).to(device),
            num_parts=NUM_PARTS,
            progress=0.4,
        )
    gen = torch.Generator().manual_seed(seed)
    return strategy(batch, length, generator=gen, device=device, **kwargs)


def test_every_design_strategy_is_registered() -> None:
    assert {"random", "block", "semantic"} <= set(names())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("ratio", [0.4, 0.75, 0.9])
@pytest.mark.parametrize("length", [16, 49, 196])
@pytest.mark.parametrize("name", names())
def test_contract(name: str, length: int, ratio: float, device: str) -> None:
    batch = 12
    out = _run(name, ratio, batch, length, seed=3, device=device)
    n_keep, n_mask = mask_budget(length, ratio)
    dev = torch.device(device)

    for t in (out.ids_keep, out.ids_mask, out.ids_restore):
        assert t.dtype == torch.int64 and t.device.type == dev.type
    assert out.mask.dtype == torch.bool and out.mask.device.type == dev.type
    assert out.ids_keep.shape == (batch, n_keep) and out.ids_mask.shape == (batch, n_mask)
    assert out.ids_restore.shape == (batch, length) and out.mask.shape == (batch, length)

    # exact count per row
    assert torch.all(out.mask.sum(1) == n_mask)
    # keep ∪ mask = arange(L), disjoint: together they are a permutation of arange(L)
    shuffle = torch.cat([out.ids_keep, out.ids_mask], dim=1)
    arange = torch.arange(length, device=dev).expand(batch, -1)
    assert torch.equal(shuffle.sort(dim=1).values, arange)
    # ids_restore inverts the shuffle
    assert torch.equal(torch.gather(shuffle, 1, out.ids_restore), arange)
    # mask agrees with ids_mask (and ids_keep)
    assert torch.all(torch.gather(out.mask, 1, out.ids_mask))
    assert not torch.any(torch.gather(out.mask, 1, out.ids_keep))
    assert torch.equal(out.mask, out.ids_restore >= n_keep)


@pytest.mark.parametrize("name", names())
def test_same_seed_same_mask(name: str) -> None:
    a = _run(name, 0.75, 8, 49, seed=11)
    b = _run(name, 0.75, 8, 49, seed=11)
    c = _run(name, 0.75, 8, 49, seed=12)
    for field in ("ids_keep", "ids_mask", "ids_restore", "mask"):
        assert torch.equal(getattr(a, field), getattr(b, field))
    assert not torch.equal(a.mask, c.mask)


@pytest.mark.parametrize("length", [49, 196])
@pytest.mark.parametrize("name", names())
def test_rows_differ(name: str, length: int) -> None:
    out = _run(name, 0.75, 16, length, seed=5)
    distinct = torch.unique(out.mask, dim=0).shape[0]
    assert distinct == 16


@pytest.mark.parametrize("name", names())
def test_default_generator_and_device(name: str) -> None:
    strategy = build(name)
    kwargs: dict = {}
    if strategy.requires_parts:
        kwargs = dict(part_labels=torch.zeros(4, 49, dtype=torch.long), num_parts=1)
    out = strategy(4, 49, **kwargs)  # no generator, no device: global RNG on the CPU
    assert out.mask.device.type == "cpu" and torch.all(out.mask.sum(1) == mask_budget(49, strategy.ratio)[1])


@pytest.mark.parametrize("name", names())
def test_bad_ratio_is_a_config_error(name: str) -> None:
    from semmae.errors import ConfigError

    with pytest.raises(ConfigError):
        build(name, ratio=1.0)
