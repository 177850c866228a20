"""MAE's linear probe: the head, the frozen encoder, LARS, the batch/lr plan, the augmentation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from semmae import config as config_lib
from semmae.errors import ConfigError
from semmae.train.linear_probe import FrozenProbe, ProbeHead, lars_optimizer, probe_data, probe_plan

pytestmark = pytest.mark.usefixtures("single_thread")


class _Encoder(nn.Module):
    """forward_features: (B, C, S, S) -> (B, 1 + 4, D) with a distinct CLS token."""

    def __init__(self, dim: int = 6) -> None:
        super().__init__()
        self.proj = nn.Linear(3, dim)
        self.drop = nn.Dropout(0.5)  # would make features random in train mode
        self.img_size = 8

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        pooled = images.mean((2, 3))  # (B, 3)
        cls = self.drop(self.proj(pooled))
        return torch.cat([cls[:, None], torch.zeros(len(images), 4, cls.shape[1])], 1)


def test_head_is_a_non_affine_batchnorm_then_linear() -> None:
    head = ProbeHead(6, 3)
    assert not head.norm.affine and head.norm.eps == 1e-6
    assert float(head.linear.weight.detach().std()) < 0.03 and not head.linear.bias.any()
    x = torch.randn(64, 6) * 5 + 3
    head.train()
    normed = head.norm(x)
    torch.testing.assert_close(normed.mean(0), torch.zeros(6), atol=1e-5, rtol=0)


def test_frozen_probe_trains_only_the_head_on_the_cls_token() -> None:
    torch.manual_seed(0)
    probe = FrozenProbe(_Encoder(), dim=6, num_classes=3).train()
    assert not probe.encoder.training and probe.head.training
    images = torch.randn(8, 3, 8, 8)
    a, b = probe(images), probe(images)
    probe.eval()
    torch.testing.assert_close(probe.head(probe.encoder.forward_features(images)[:, 0]), probe(images))
    (a.sum() + b.sum()).backward()
    assert all(p.grad is None for p in probe.encoder.parameters())
    assert probe.head.linear.weight.grad is not None and probe.head.linear.weight.grad.abs().sum() > 0


def test_lars_scales_the_weight_step_by_its_trust_ratio_not_the_bias() -> None:
    head = ProbeHead(6, 3)
    w0, b0 = head.linear.weight.detach().clone(), head.linear.bias.detach().clone()
    head.linear.weight.grad = torch.full_like(w0, 2.0)
    head.linear.bias.grad = torch.full_like(b0, 2.0)
    lars_optimizer(head, lr=0.5).step()
    trust = 0.001 * w0.norm() / head.linear.weight.grad.norm()
    torch.testing.assert_close(w0 - head.linear.weight.detach(), 0.5 * trust * head.linear.weight.grad)
    torch.testing.assert_close(b0 - head.linear.bias.detach(), torch.full_like(b0, 1.0))


def test_plan_follows_mae_batch_and_lr_arithmetic() -> None:
    cfg = config_lib.load(
        None,
        [
            "eval.linear_batch_size=16384",
            "eval.batch_size=256",
            "eval.linear_epochs=90",
            "eval.linear_warmup_epochs=10",
        ],
    )
    plan = probe_plan(cfg, num_train=1_281_167, world=8)  # micro-batches of 256 on 8 processes
    assert (plan.accum, plan.effective_batch) == (8, 16384)
    assert plan.peak_lr == pytest.approx(0.1 * 16384 / 256) and plan.steps_per_epoch == 78
    assert plan.total_steps == 90 * 78 and plan.warmup_steps == 10 * 78
    assert plan.lr(0) == pytest.approx(6.4 / 780) and plan.lr(779) == pytest.approx(6.4)
    assert plan.lr(plan.total_steps - 1) < 1e-3
    small = config_lib.load(None, ["eval.linear_batch_size=32", "eval.batch_size=256"])
    assert probe_plan(small, num_train=100, world=1).accum == 1
    with pytest.raises(ConfigError, match="multiple of eval.batch_size"):
        probe_plan(config_lib.load(None, ["eval.linear_batch_size=300", "eval.batch_size=256"]), 10_000, 1)
    with pytest.raises(ConfigError, match="lower eval.linear_batch_size"):
        probe_plan(config_lib.load(None, ["eval.linear_batch_size=64"]), 40, 1)


def test_probe_augmentation_is_its_own_crop_and_a_flip() -> None:
    cfg = config_lib.load(None, ["data.crop_scale=[0.5, 1.0]", "data.hflip=false"])
    data = probe_data(cfg)
    assert data.crop_scale == [0.08, 1.0] and data.hflip and cfg.data.crop_scale == [0.5, 1.0]
