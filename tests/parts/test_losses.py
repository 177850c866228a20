"""Stage-1 losses: known values of each term, and the learner overfits one small batch."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from semmae.config import PartLearnerArch
from semmae.models import build_mae
from semmae.parts.backbone import FrozenBackbone
from semmae.parts.learner import PartLearner
from semmae.parts.losses import (
    count_empty_parts,
    overlap_loss,
    part_area_histogram,
    parts_loss,
)

pytestmark = pytest.mark.usefixtures("single_thread")  # tests/conftest.py


def _hard_maps(labels: torch.Tensor, k: int) -> torch.Tensor:
    return F.one_hot(labels, k).permute(0, 3, 1, 2).float()


def test_overlap_known_values() -> None:
    labels = torch.arange(16).view(1, 4, 4) % 4
    assert float(overlap_loss(_hard_maps(labels, 4))) == pytest.approx(0.0, abs=1e-6)
    uniform = torch.full((2, 4, 4, 4), 0.25)  # scaled to max 1: every pair overlaps everywhere
    assert float(overlap_loss(uniform)) == pytest.approx(1.0, abs=1e-5)
    # Two parts, 2 locations: A0 = [1, .5], A1 = [0, .5] -> Â1 = [0, 1]; sum Â0 Â1 / L = .5/2.
    maps = torch.tensor([[1.0, 0.5], [0.0, 0.5]]).view(1, 2, 1, 2)
    assert float(overlap_loss(maps)) == pytest.approx(0.25, abs=1e-5)


def test_area_term_and_histogram() -> None:
    labels = torch.arange(16).view(1, 4, 4) % 4
    maps = _hard_maps(labels, 4)
    recon = torch.zeros(1, 1, 4, 4)
    assert float(parts_loss(recon, recon, maps)["area"]) == pytest.approx(0.0, abs=1e-6)
    one_part = _hard_maps(torch.zeros(2, 4, 4, dtype=torch.long), 4)
    area = parts_loss(recon.expand(2, -1, -1, -1), recon.expand(2, -1, -1, -1), one_part)["area"]
    assert float(area) == pytest.approx(math.log(4), abs=1e-4)
    hist = part_area_histogram(_hard_maps(torch.tensor([[[0, 0], [0, 1]]]), 3))
    torch.testing.assert_close(hist, torch.tensor([0.75, 0.25, 0.0]))


def test_total_is_the_weighted_sum() -> None:
    torch.manual_seed(0)
    recon, target = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    maps = torch.randn(2, 4, 4, 4).softmax(1)
    t = parts_loss(recon, target, maps, lambda_div=0.5, lambda_area=2.0)
    assert float(t["rec"]) == pytest.approx(float(F.mse_loss(recon, target)), rel=1e-6)
    assert float(t["div"]) == pytest.approx(float(t["overlap"] + 2.0 * t["area"]), rel=1e-6)
    assert float(t["loss"]) == pytest.approx(float(t["rec"] + 0.5 * t["div"]), rel=1e-6)
    assert float(t["area_entropy"]) <= math.log(4) + 1e-6


def test_count_empty_parts() -> None:
    labels = torch.zeros(1, 10, 10, dtype=torch.uint8)
    labels[0, 0, :5] = 1  # 5% of the locations
    labels[0, 0, 5] = 2  # 1%
    assert count_empty_parts(labels, 4, min_share=0.01) == 1  # part 3 only
    assert count_empty_parts(labels, 4, min_share=0.02) == 2  # parts 2 and 3
    assert count_empty_parts(labels, 4, min_share=0.9) == 3


def test_overfits_one_small_batch() -> None:
    torch.manual_seed(0)
    backbone = FrozenBackbone(build_mae("mae_debug"))
    arch = PartLearnerArch(num_parts=4, decoder_channels=32, style_dim=32, mlp_hidden=64, center_tokens=False)
    learner = PartLearner(arch, embed_dim=backbone.embed_dim, grid=backbone.grid, img_size=28, in_chans=1)
    # Images with a bright square at a random place: layout the maps must carry.
    images = torch.full((8, 1, 28, 28), -1.0)
    for i in range(8):
        r, c = (i * 5) % 16, (i * 3) % 16
        images[i, :, r : r + 12, c : c + 12] = 1.0
    f, g = backbone(images)
    opt = torch.optim.AdamW(learner.parameters(), lr=3e-3)
    losses = []
    for _ in range(80):
        out = learner(f, g)
        loss = parts_loss(out.recon, images, out.maps_raw)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.7 * losses[0], (losses[0], losses[-1])
