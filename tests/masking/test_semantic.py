"""SemMAE masking (DESIGN.md §2.3): counts, whole-part hiding, uniformity, edge cases, errors."""

from __future__ import annotations

import itertools
import math
from collections import Counter

import pytest
import torch
from scipy.stats import chisquare

from semmae.masking import build, mask_budget
from semmae.masking.semantic import (
    SemanticMasking,
    designate_patches,
    part_order,
    part_sizes,
    semantic_counts,
)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _hand_maps() -> torch.Tensor:
    """(3, 196) labels on a 14×14 grid with 4 parts of unequal, odd sizes (an object on background)."""
    yy, xx = torch.meshgrid(torch.arange(14), torch.arange(14), indexing="ij")
    maps = []
    for shift in range(3):
        lab = torch.zeros(14, 14, dtype=torch.long)
        lab[((yy - 7) ** 2 / 16 + (xx - 6 - shift) ** 2 / 9) <= 1] = 1
        lab[((yy - 2) ** 2 + (xx - 6 - shift) ** 2) <= 3 + shift] = 2
        lab[(yy >= 11) & ((xx - 6 - shift).abs() == 2)] = 3
        maps.append(lab.reshape(-1))
    return torch.stack(maps)


def _masked_per_part(mask: torch.Tensor, labels: torch.Tensor, num_parts: int) -> torch.Tensor:
    """(B, K) number of hidden patches of every part."""
    out = torch.zeros(labels.shape[0], num_parts, dtype=torch.long)
    return out.scatter_add_(1, labels, mask.long())


def reference_counts(
    labels: list[int], num_parts: int, ratio: float, lam: float, order: list[int]
) -> tuple[list[int], list[int], list[int], list[int]]:
    """§2.3 steps 1–3 for one image, in plain Python (built-in round: half to even)."""
    n = [labels.count(k) for k in range(num_parts)]
    a = [round(ratio * nk) for nk in n]
    budget = ratio * len(labels)
    b = [0] * num_parts
    before = 0
    for k in order:
        b[k] = min(n[k], max(0, math.floor(budget - before)))
        before += n[k]
    m = [round(lam * a[k] + (1 - lam) * b[k]) for k in range(num_parts)]
    return n, a, b, m


# ---------------------------------------------------------------- counts vs the reference


@pytest.mark.parametrize("seed", range(6))
def test_counts_match_python_reference(seed: int) -> None:
    g = _gen(seed)
    num_parts = int(torch.randint(1, 9, (1,), generator=g))
    length = int(torch.randint(5, 120, (1,), generator=g))
    batch = 7
    # Skewed labels so that some parts are empty and some large.
    weights = torch.rand(num_parts, generator=g) ** 3 + 1e-3
    labels = torch.multinomial(weights, batch * length, replacement=True, generator=g).view(batch, length)
    order = part_order(batch, num_parts, g, "cpu")
    for ratio, lam in [(0.75, 0.5), (0.6, 0.3), (0.5, 1.0), (0.75, 0.0), (0.9, 0.25), (0.75, 0.8125)]:
        got = semantic_counts(labels, num_parts, ratio, lam, order=order)
        for row in range(batch):
            ref = reference_counts(labels[row].tolist(), num_parts, ratio, lam, order[row].tolist())
            for name, t, r in zip("nabm", got, ref, strict=True):
                assert t[row].tolist() == r, (name, ratio, lam, row)


def test_generator_order_is_part_order_draw() -> None:
    labels = torch.randint(0, 6, (5, 49), generator=_gen(0))
    got = semantic_counts(labels, 6, 0.75, 0.3, _gen(9))
    via_order = semantic_counts(labels, 6, 0.75, 0.3, order=part_order(5, 6, _gen(9), "cpu"))
    for x, y in zip(got, via_order, strict=True):
        assert torch.equal(x, y)


def test_rounding_is_half_to_even() -> None:
    labels = torch.tensor([[0] * 2 + [1] * 6 + [2] * 10 + [3] * 14])  # r·n = 1.5, 4.5, 7.5, 10.5
    _, a, _, _ = semantic_counts(labels, 4, 0.75, 1.0, _gen(0))
    assert a.tolist() == [[2, 4, 8, 10]]
    # m = round(0.75·a + 0.25·b) lands on .5: 4.5 -> 4 and 6.5 -> 6 (half-up would give 5 and 7)
    order = torch.tensor([[1, 0, 3, 2]])  # budget 24: parts 1, 0, 3 whole (6 + 2 + 14), part 2 gets 2
    _, a, b, m = semantic_counts(labels, 4, 0.75, 0.75, order=order)
    assert b.tolist() == [[2, 6, 2, 14]]
    assert m.tolist() == [[2, 4, 6, 11]]


def test_part_order_is_uniform() -> None:
    order = part_order(6000, 3, _gen(4), "cpu")
    counts = Counter(tuple(r) for r in order.tolist())
    perms = list(itertools.permutations(range(3)))
    assert set(counts) == set(perms)
    assert chisquare([counts[p] for p in perms]).pvalue > 1e-3


def test_counts_at_extremes_are_intra_and_inter() -> None:
    labels = _hand_maps()
    n, a, b, m1 = semantic_counts(labels, 4, 0.75, 1.0, _gen(1))
    _, _, _, m0 = semantic_counts(labels, 4, 0.75, 0.0, _gen(1))
    assert torch.equal(m1, a) and torch.equal(m0, b)
    assert torch.all(b.sum(1) == math.floor(0.75 * 196))  # the inter budget is spent exactly
    assert torch.all((m1 <= n) & (m0 <= n))


# ---------------------------------------------------------------- the strategy on hand-built maps


def test_progress_zero_hides_a_share_of_every_part() -> None:
    labels = _hand_maps()
    s = build("semantic", ratio=0.75)
    n_mask = mask_budget(196, 0.75)[1]
    n, a, _, _ = semantic_counts(labels, 4, 0.75, 1.0, _gen(0))
    slack = (n_mask - a.sum(1)).abs()  # the exact-count correction
    for seed in range(5):
        out = s(3, 196, part_labels=labels, num_parts=4, progress=0.0, generator=_gen(seed))
        per_part = _masked_per_part(out.mask, labels, 4)
        assert torch.all(per_part.sum(1) == n_mask)
        assert torch.all((per_part - a).abs().sum(1) == slack)  # only the correction moves counts
        assert torch.all((per_part > 0) | (n == 0))  # every part is partly hidden


def test_progress_one_hides_whole_parts() -> None:
    labels = _hand_maps()
    s = build("semantic", ratio=0.75)
    n_mask = mask_budget(196, 0.75)[1]
    extra = n_mask - math.floor(0.75 * 196)
    n = part_sizes(labels, 4)
    partial_rows = 0
    for seed in range(20):
        out = s(3, 196, part_labels=labels, num_parts=4, progress=1.0, generator=_gen(seed))
        per_part = _masked_per_part(out.mask, labels, 4)
        partial = ((per_part > 0) & (per_part < n)).sum(1)
        assert torch.all(partial <= 1 + extra)  # the part crossing the budget (+ the correction)
        partial_rows += int((partial == 0).sum())
        assert torch.all(per_part.sum(1) == n_mask)
    # whole parts really are hidden: with ~147 of 196 hidden at least one part is complete
    out = s(3, 196, part_labels=labels, num_parts=4, progress=1.0, generator=_gen(0))
    assert torch.all((_masked_per_part(out.mask, labels, 4) == n).any(1))


def test_intermediate_progress_follows_the_counts() -> None:
    labels = _hand_maps()
    s = SemanticMasking(ratio=0.75, schedule="power", gamma=2.0)
    lam = s.lam(0.5)
    assert lam == pytest.approx(0.75)
    n_mask = mask_budget(196, 0.75)[1]
    out = s(3, 196, part_labels=labels, num_parts=4, progress=0.5, generator=_gen(7))
    _, _, _, m = semantic_counts(labels, 4, 0.75, lam, _gen(7))  # same generator stream: same order
    per_part = _masked_per_part(out.mask, labels, 4)
    assert torch.all((per_part - m).abs().sum(1) == (n_mask - m.sum(1)).abs())


def test_designated_counts_are_exact() -> None:
    labels = torch.randint(0, 5, (64, 49), generator=_gen(2))
    n = part_sizes(labels, 5)
    counts = (torch.rand(64, 5, generator=_gen(3)) * (n + 1)).floor().long().clamp(max=n)
    d = designate_patches(labels, counts, _gen(4))
    assert torch.equal(_masked_per_part(d, labels, 5), counts)


# ---------------------------------------------------------------- uniformity (chi-square)


def test_within_part_choice_is_uniform() -> None:
    # part 0: 4 patches, 3 hidden (4 subsets); part 1: 12 patches, 9 hidden; Σa = n_mask = 12
    labels = torch.tensor([0, 1, 1, 0, 1, 1, 1, 0, 1, 1, 1, 1, 1, 0, 1, 1]).expand(4000, -1)
    s = build("semantic", ratio=0.75, schedule="intra")
    out = s(4000, 16, part_labels=labels, num_parts=2, generator=_gen(11))
    part0 = out.mask[:, labels[0] == 0]
    assert torch.all(part0.sum(1) == 3)
    visible = Counter(part0.float().argmin(1).tolist())
    assert chisquare([visible[i] for i in range(4)]).pvalue > 1e-3
    hits = out.mask[:, labels[0] == 1].sum(0)
    assert chisquare(hits.tolist()).pvalue > 1e-3


def _subset_pvalue(mask: torch.Tensor, visible_size: int) -> tuple[int, float]:
    seen = Counter(tuple(torch.nonzero(~row).view(-1).tolist()) for row in mask)
    assert all(len(k) == visible_size for k in seen)
    return len(seen), chisquare(list(seen.values())).pvalue


def test_surplus_designated_left_visible_uniformly() -> None:
    # 4 parts of 2: a_k = round(1.5) = 2 -> 8 designated, n_mask = 6: 2 random ones stay visible
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]).expand(5600, -1)
    strategy = build("semantic", ratio=0.75, schedule="intra")
    out = strategy(5600, 8, part_labels=labels, num_parts=4, generator=_gen(5))
    categories, p = _subset_pvalue(out.mask, 2)
    assert categories == math.comb(8, 2) and p > 1e-3


def test_missing_designated_filled_uniformly() -> None:
    # 4 parts of 2, r = 0.6: a_k = round(1.2) = 1 -> 4 designated, n_mask = 5: one random extra;
    # every visible set of one patch from each of 3 parts (4·2³ = 32) is equally likely
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]).expand(6400, -1)
    strategy = build("semantic", ratio=0.6, schedule="intra")
    out = strategy(6400, 8, part_labels=labels, num_parts=4, generator=_gen(6))
    categories, p = _subset_pvalue(out.mask, 3)
    assert categories == 32 and p > 1e-3


# ---------------------------------------------------------------- edge cases


@pytest.mark.parametrize("progress", [0.0, 0.5, 1.0])
@pytest.mark.parametrize(
    "labels,num_parts",
    [
        (torch.zeros(4, 49, dtype=torch.long), 1),  # one part covers everything
        (torch.zeros(4, 49, dtype=torch.long), 6),  # K larger than the parts present
        (torch.arange(49).remainder(3).expand(4, -1), 8),  # empty parts
        (torch.arange(49).remainder(5).expand(4, -1), 5),  # L not divisible by K
        (torch.arange(16).expand(4, -1), 16),  # every patch its own part
    ],
)
def test_edge_cases(labels: torch.Tensor, num_parts: int, progress: float) -> None:
    length = labels.shape[1]
    s = build("semantic", ratio=0.75)
    out = s(4, length, part_labels=labels, num_parts=num_parts, progress=progress, generator=_gen(0))
    assert torch.all(out.mask.sum(1) == mask_budget(length, 0.75)[1])
    n, a, b, m = semantic_counts(labels, num_parts, 0.75, s.lam(progress), _gen(0))
    assert torch.all((m >= 0) & (m <= n))
    assert torch.all(n.sum(1) == length)
    assert torch.all(b[n == 0] == 0) and torch.all(a[n == 0] == 0)


def test_accepts_other_integer_dtypes() -> None:
    labels = torch.randint(0, 4, (2, 49), generator=_gen(0))
    s = build("semantic")
    a = s(2, 49, part_labels=labels, num_parts=4, generator=_gen(1))
    b = s(2, 49, part_labels=labels.to(torch.uint8), num_parts=4, generator=_gen(1))
    assert torch.equal(a.mask, b.mask)


# ---------------------------------------------------------------- errors


def test_missing_parts_is_a_value_error() -> None:
    s = build("semantic")
    labels = torch.zeros(2, 16, dtype=torch.long)
    with pytest.raises(ValueError, match="part_labels"):
        s(2, 16)
    with pytest.raises(ValueError, match="num_parts"):
        s(2, 16, part_labels=labels)
    with pytest.raises(ValueError, match="num_parts"):
        s(2, 16, num_parts=3)


@pytest.mark.parametrize("bad", [4, 200, -1])
def test_labels_out_of_range_are_a_value_error(bad: int) -> None:
    labels = torch.zeros(2, 16, dtype=torch.long)
    labels[1, 5] = bad
    with pytest.raises(ValueError, match=r"\[0, 3\]"):
        build("semantic")(2, 16, part_labels=labels, num_parts=4)


def test_wrong_shape_and_dtype_are_value_errors() -> None:
    s = build("semantic")
    with pytest.raises(ValueError, match="shape"):
        s(2, 16, part_labels=torch.zeros(2, 15, dtype=torch.long), num_parts=2)
    with pytest.raises(ValueError, match="integer"):
        s(2, 16, part_labels=torch.zeros(2, 16), num_parts=2)


def test_unknown_schedule_is_a_config_error() -> None:
    from semmae.errors import ConfigError

    with pytest.raises(ConfigError, match="schedule"):
        build("semantic", schedule="zigzag")
