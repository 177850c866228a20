"""The optimiser: one weight-decay rule for pretraining and fine-tuning, fused AdamW on CUDA only."""

from __future__ import annotations

import pytest
import torch
from timm.optim import param_groups_weight_decay

from semmae.engine.optim import build_adamw, param_groups
from semmae.models import build_mae
from semmae.models.encoder import load_encoder
from semmae.models.vit import NO_WEIGHT_DECAY, build_classifier, decays, layer_decay_groups


def _models() -> list[torch.nn.Module]:
    torch.manual_seed(0)
    enc, _ = load_encoder("random:mae_debug")
    return [
        build_mae("mae_debug"),
        build_classifier(enc, 3, global_pool="avg"),
        build_classifier(enc, 3, global_pool="token"),
    ]


@pytest.mark.parametrize("index", [0, 1, 2])
def test_one_decay_rule_for_both_group_builders(index: int) -> None:
    model = _models()[index]
    names = {id(p): n for n, p in model.named_parameters()}
    timm_decayed = {
        names[id(p)]
        for g in param_groups_weight_decay(model, 0.05, no_weight_decay_list=NO_WEIGHT_DECAY)
        for p in g["params"]
        if g["weight_decay"] > 0
    }
    ours = {names[id(p)] for g in param_groups(model, 0.05) if g["weight_decay"] > 0 for p in g["params"]}
    rule = {n for n, p in model.named_parameters() if p.requires_grad and decays(n, p)}
    assert ours == timm_decayed == rule
    if hasattr(model, "head"):  # the classifier's layer-decay groups decay the same parameters
        groups = layer_decay_groups(model, depth=2, layer_decay=0.75, weight_decay=0.05)
        assert {names[id(p)] for g in groups if g["weight_decay"] > 0 for p in g["params"]} == rule


def test_mae_groups_keep_their_order_and_members() -> None:
    mae = build_mae("mae_debug")
    names = {id(p): n for n, p in mae.named_parameters()}
    decay, no_decay = param_groups(mae, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0  # decay first: old checkpoints
    skipped = {names[id(p)] for p in no_decay["params"]}
    assert {"cls_token", "mask_token", "norm.weight", "blocks.0.attn.qkv.bias"} <= skipped
    assert "pos_embed" not in skipped  # fixed sin-cos: not trained at all
    assert all(p.ndim >= 2 for p in decay["params"])
    trainable = [p for p in mae.parameters() if p.requires_grad]
    assert sorted(map(id, decay["params"] + no_decay["params"])) == sorted(map(id, trainable))


def test_adamw_is_not_fused_on_cpu() -> None:
    opt = build_adamw(build_mae("mae_debug"), 1e-3, 0.05)
    assert not opt.defaults["fused"]  # CPU keeps PyTorch's default kernel: results unchanged


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_adamw_is_fused_on_cuda() -> None:
    opt = build_adamw(build_mae("mae_debug").cuda(), 1e-3, 0.05)
    assert opt.defaults["fused"]
