"""Part-discovery metrics: permutation invariance, hand-computed mIoU, chance level, k-means."""

from __future__ import annotations

import pytest
import torch

from semmae.eval.partseg import (
    confusion,
    kmeans_part_baseline,
    part_ari,
    part_metrics,
    part_miou,
    part_nmi,
)


def test_identical_up_to_permutation_scores_one() -> None:
    g = torch.Generator().manual_seed(0)
    gt = torch.randint(0, 4, (5, 8, 8), generator=g)
    perm = torch.tensor([2, 0, 3, 1])
    pred = perm[gt]
    assert part_nmi(pred, gt) == pytest.approx(1.0)
    assert part_ari(pred, gt) == pytest.approx(1.0)
    assert part_miou(pred, gt, 4, 4) == pytest.approx(1.0)


def test_hand_computed_miou() -> None:
    pred = torch.tensor([0, 0, 1, 1, 1, 2])
    gt = torch.tensor([0, 0, 0, 1, 1, 1])
    assert confusion(pred, gt, 3, 2).tolist() == [[2, 0], [1, 2], [0, 1]]
    # IoU(p0, g0) = 2/3, IoU(p1, g1) = 2/4; the matching p0-g0, p1-g1 beats the others.
    assert part_miou(pred, gt, 3, 2) == pytest.approx((2 / 3 + 1 / 2) / 2)


def test_fewer_predicted_parts_leave_a_class_at_zero() -> None:
    pred = torch.zeros(4, dtype=torch.long)
    gt = torch.tensor([0, 0, 1, 1])
    assert part_miou(pred, gt, 1, 2) == pytest.approx((0.5 + 0.0) / 2)


def test_random_labels_are_near_chance() -> None:
    g = torch.Generator().manual_seed(1)
    gt = torch.randint(0, 4, (50, 20, 20), generator=g)
    pred = torch.randint(0, 4, (50, 20, 20), generator=g)
    assert part_nmi(pred, gt) < 0.01
    assert abs(part_ari(pred, gt)) < 0.01


def test_pixel_ground_truth_is_reduced_by_majority_vote() -> None:
    gt = torch.tensor([[[1, 1, 0, 0], [1, 2, 0, 3], [2, 2, 3, 3], [2, 0, 3, 1]]])
    pred = torch.tensor([[[1, 0], [2, 3]]])  # the majority of each 2x2 cell
    assert part_metrics(pred, gt, 4, 4)["miou"] == pytest.approx(1.0)


def test_part_metrics_reduce_pixel_ground_truth() -> None:
    g = torch.Generator().manual_seed(2)
    coarse = torch.randint(0, 3, (4, 4, 4), generator=g)
    gt = coarse.repeat_interleave(4, dim=1).repeat_interleave(4, dim=2)  # (4, 16, 16) pixels
    pred = torch.tensor([1, 2, 0])[coarse]
    m = part_metrics(pred, gt, 5, 3)
    assert (
        m["nmi"] == pytest.approx(1.0) and m["ari"] == pytest.approx(1.0) and m["miou"] == pytest.approx(1.0)
    )
    assert len(m["area_hist"]) == 5 and sum(m["area_hist"]) == pytest.approx(1.0)
    assert m["empty_parts"] == 2  # parts 3 and 4 are never predicted


def test_kmeans_recovers_separated_clusters() -> None:
    g = torch.Generator().manual_seed(3)
    truth = torch.randint(0, 3, (6, 16), generator=g)
    centers = torch.eye(8)[:3] * 5
    tokens = centers[truth] + 0.05 * torch.randn(6, 16, 8, generator=g)
    labels = kmeans_part_baseline(tokens, 3, seed=0, grid=(4, 4))
    assert labels.shape == (6, 4, 4)
    assert part_nmi(labels, truth.view(6, 4, 4)) == pytest.approx(1.0)
    small = kmeans_part_baseline(tokens, 3, seed=0, grid=(4, 4), minibatch_above=10)  # MiniBatchKMeans path
    assert part_nmi(small, truth.view(6, 4, 4)) > 0.9


def test_centred_kmeans_ignores_a_per_image_offset() -> None:
    # Every image adds its own large offset: raw k-means clusters by image, centred k-means by part.
    g = torch.Generator().manual_seed(4)
    truth = torch.randint(0, 3, (6, 16), generator=g)
    truth[:, :3] = torch.arange(3)  # every image shows every part
    tokens = torch.eye(8)[:3][truth] + 0.05 * torch.randn(6, 16, 8, generator=g)
    tokens = tokens + 20 * torch.randn(6, 1, 8, generator=g)
    raw = kmeans_part_baseline(tokens, 3, seed=0, grid=(4, 4))
    centred = kmeans_part_baseline(tokens, 3, seed=0, grid=(4, 4), center=True)
    assert part_nmi(centred, truth.view(6, 4, 4)) == pytest.approx(1.0)
    assert part_nmi(raw, truth.view(6, 4, 4)) < 0.5
