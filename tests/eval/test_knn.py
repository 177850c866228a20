"""Weighted kNN against votes computed by hand on 4-point fixtures."""

from __future__ import annotations

import math

import pytest
import torch

from semmae.eval.knn import knn_classify, topk_accuracy

# Four training points on the plane: cosine similarities to the query (1, 0) are 1, 0, 1/sqrt(2), -1.
TRAIN = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]])
LABELS = torch.tensor([0, 1, 1, 2])
R2 = 1 / math.sqrt(2)


def test_top2_votes_by_hand() -> None:
    scores = knn_classify(TRAIN, LABELS, torch.tensor([[1.0, 0.0]]), k=2, temperature=0.5, num_classes=3)
    # neighbours: point 0 (sim 1, class 0) and point 2 (sim 1/sqrt 2, class 1)
    expected = torch.tensor([[math.exp(1 / 0.5), math.exp(R2 / 0.5), 0.0]])
    torch.testing.assert_close(scores, expected)


def test_k_larger_than_the_training_set_uses_every_point() -> None:
    q = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    scores = knn_classify(TRAIN, LABELS, q, k=50, temperature=1.0, num_classes=4)
    e = math.exp
    expected = torch.tensor(
        [
            [e(1), e(0) + e(R2), e(-1), 0.0],  # query (1, 0)
            [e(0), e(1) + e(R2), e(0), 0.0],  # query (0, 2): sims 0, 1, 1/sqrt 2, 0
        ]
    )
    torch.testing.assert_close(scores, expected)


def test_scale_and_chunking_do_not_matter() -> None:
    g = torch.Generator().manual_seed(0)
    train, test = torch.randn(37, 8, generator=g), torch.randn(11, 8, generator=g)
    labels = torch.randint(0, 5, (37,), generator=g)
    ref = knn_classify(train, labels, test, k=5, temperature=0.07, num_classes=5, chunk_size=1024)
    chunked = knn_classify(
        3.0 * train, labels, 0.5 * test, k=5, temperature=0.07, num_classes=5, chunk_size=3
    )
    torch.testing.assert_close(chunked, ref, rtol=1e-5, atol=0)  # weights reach e^(1/0.07)
    single = knn_classify(train, labels, test[4:5], k=5, temperature=0.07, num_classes=5)
    torch.testing.assert_close(single, ref[4:5])


def test_accuracy_top1_and_top5() -> None:
    q = torch.tensor([[1.0, 0.1], [-1.0, 0.1], [0.1, 1.0]])
    acc = topk_accuracy(
        knn_classify(TRAIN, LABELS, q, k=1, temperature=0.1, num_classes=3), torch.tensor([0, 2, 0])
    )
    assert acc == pytest.approx({"top1": 200 / 3})  # the third query's nearest point is class 1
    assert "top5" not in acc
    scores = torch.tensor([[0.0, 1, 2, 3, 4, 5], [5.0, 4, 3, 2, 1, 0]])
    acc = topk_accuracy(scores, torch.tensor([0, 0]))
    assert acc == {"top1": 50.0, "top5": 50.0}  # row 0: class 0 is 6th of 6
    assert topk_accuracy(scores, torch.tensor([1, 1])) == {"top1": 0.0, "top5": 100.0}


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="at least one"):
        knn_classify(torch.empty(0, 2), torch.empty(0, dtype=torch.long), TRAIN, num_classes=3)
    with pytest.raises(ValueError, match="temperature"):
        knn_classify(TRAIN, LABELS, TRAIN, k=1, temperature=0.0, num_classes=3)


def test_a_k_above_the_training_images_is_said_and_recorded_as_used(caplog) -> None:
    from semmae import config as config_lib
    from semmae.eval.knn import run_knn

    cfg = config_lib.load(
        None,
        [
            "data.name=toy_parts",
            "data.toy_size=48",
            "data.image_size=28",
            "eval.knn_k=100000",
            "train.device=cpu",
        ],
    )
    with caplog.at_level("INFO", logger="semmae.eval.knn"):
        result = run_knn(cfg, "random:mae_debug")
    used = result["k"]
    assert 0 < used < 100000
    messages = [r.getMessage() for r in caplog.records]
    assert f"eval.knn_k=100000 is more than the {used} training images: using k={used}" in messages
    assert any(m.startswith(f"kNN (k={used}, ") for m in messages)  # the log says the k the result holds
