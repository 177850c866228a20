"""Fine-tuning: layer-decay groups, the training step lowers the loss, seeded mixing, run + resume."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from semmae import config as config_lib
from semmae import runtime
from semmae.errors import CheckpointError, ConfigError
from semmae.models.encoder import load_encoder
from semmae.models.vit import build_classifier, layer_decay_groups
from semmae.train.finetune import (
    finetune_plan,
    make_loss,
    make_mixup,
)


@pytest.fixture
def classifier():
    torch.manual_seed(0)
    enc, _ = load_encoder("random:mae_debug")  # depth 2, width 32
    return build_classifier(enc, 2, drop_path_rate=0.0)


def test_layer_decay_groups(classifier) -> None:
    groups = layer_decay_groups(classifier, depth=2, layer_decay=0.5, weight_decay=0.05)
    seen = [id(p) for g in groups for p in g["params"]]
    assert sorted(seen) == sorted(id(p) for p in classifier.parameters())  # every parameter exactly once
    where = {id(p): g for g in groups for p in g["params"]}
    named = dict(classifier.named_parameters())
    expect_scale = {
        "cls_token": 0.125,
        "pos_embed": 0.125,
        "patch_embed.proj.weight": 0.125,
        "blocks.0.attn.qkv.weight": 0.25,
        "blocks.1.mlp.fc2.bias": 0.5,
        "fc_norm.weight": 1.0,
        "head.weight": 1.0,
    }
    for name, scale in expect_scale.items():
        assert where[id(named[name])]["lr_scale"] == scale, name
    for name, p in named.items():
        no_decay = p.ndim <= 1 or name.endswith(".bias") or name in ("cls_token", "pos_embed")
        assert where[id(p)]["weight_decay"] == (0.0 if no_decay else 0.05), name


def _two_class_batch(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Class 0 is bright on the left half, class 1 on the right, plus noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = 0.3 * torch.randn(n, 1, 28, 28, generator=g)
    x[y == 0, :, :, :14] += 1.0
    x[y == 1, :, :, 14:] += 1.0
    return x, y


def test_training_steps_lower_the_loss(classifier) -> None:
    cfg = config_lib.Config()
    cfg.eval.ft_mixup = cfg.eval.ft_cutmix = 0.0
    loss_fn = make_loss(cfg, None)
    groups = layer_decay_groups(classifier, depth=2, layer_decay=0.65, weight_decay=0.05)
    opt = torch.optim.AdamW(groups, lr=2e-3)
    for g in opt.param_groups:
        g["lr"] = 2e-3 * g["lr_scale"]
    classifier.train()
    losses = []
    for s in range(20):
        x, y = _two_class_batch(16, s)
        loss = loss_fn(classifier(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert abs(losses[0] - np.log(2)) < 0.1  # the near-zero head starts at chance
    assert np.mean(losses[-5:]) < 0.5 * losses[0]


def test_mixup_switches_and_seeding() -> None:
    cfg = config_lib.Config()
    assert (
        make_mixup(cfg, 10) is not None
        and type(make_loss(cfg, object())).__name__ == "SoftTargetCrossEntropy"
    )
    cfg.eval.ft_batch_size = 7
    with pytest.raises(ConfigError, match="even"):
        make_mixup(cfg, 10)
    cfg.eval.ft_mixup = cfg.eval.ft_cutmix = 0.0
    assert make_mixup(cfg, 10) is None
    random.seed(1)
    np.random.seed(1)
    before = (random.random(), np.random.rand(), torch.rand(1))
    random.seed(1)
    np.random.seed(1)
    draws = []
    for _ in range(2):
        with runtime.seeded_global_rngs(42, torch.device("cpu")):
            draws.append((random.random(), np.random.rand(), torch.rand(1).item()))
    assert draws[0] == draws[1]
    assert (random.random(), np.random.rand()) == before[:2]  # global streams untouched


def test_plan_arithmetic() -> None:
    cfg = config_lib.Config()
    cfg.eval.ft_batch_size, cfg.eval.ft_epochs, cfg.eval.ft_warmup_epochs = 16, 3, 0.5
    plan = finetune_plan(cfg, 100, world=2)  # 100 // 32 = 3 steps per epoch per rank
    assert (plan.steps_per_epoch, plan.total_steps, plan.warmup_steps) == (3, 9, 2)
    assert plan.peak_lr == pytest.approx(5e-4 * 32 / 256)
    with pytest.raises(ConfigError, match="ft_batch_size"):
        finetune_plan(cfg, 20, world=2)


def _toy_cfg(**eval_overrides) -> config_lib.Config:
    over = [
        "data.name=toy_parts",
        "data.toy_size=48",
        "data.image_size=28",
        "eval.ft_epochs=2",
        "eval.ft_batch_size=8",
        "eval.batch_size=16",
        "train.log_every=2",
        "train.ckpt_every_steps=0",
        "train.progress_bar=false",
        "train.device=cpu",
    ]
    return config_lib.load(None, over + [f"eval.{k}={v}" for k, v in eval_overrides.items()])


def test_run_finetune_end_to_end_and_exact_resume(tmp_path) -> None:
    pytest.importorskip("semmae.data.transforms")
    from semmae.models.checkpoint import load_checkpoint
    from semmae.train.finetune import run_finetune

    cfg = _toy_cfg()
    full = run_finetune(cfg, "random:mae_debug", tmp_path / "full", progress=False)
    assert full["steps"] == 12 and 0.0 <= full["top1"] <= 100.0 and "top5" not in full  # 4 toy classes
    rows = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 12 and "test_top1" in rows[-1] and all("loss" in r for r in rows[:-1])
    ckpt = load_checkpoint(tmp_path / "full" / "checkpoints" / "last.pt")
    assert ckpt["kind"] == "finetune" and ckpt["step"] == 12 and ckpt["arch"]["num_classes"] == 4
    enc, meta = load_encoder(
        str(tmp_path / "full" / "checkpoints" / "last.pt")
    )  # a fine-tune is an encoder too
    assert meta["kind"] == "finetune" and meta["mean"] == [0.5]

    part = run_finetune(cfg, "random:mae_debug", tmp_path / "part", progress=False, stop_at_step=5)
    assert part == {"interrupted": -1, "step": 5, "out": str(tmp_path / "part")}
    resumed = run_finetune(cfg, "random:mae_debug", tmp_path / "part", resume=True, progress=False)
    a = load_checkpoint(tmp_path / "part" / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(v, a[k]) for k, v in ckpt["model"].items())  # same weights as uninterrupted
    assert resumed["top1"] == full["top1"]
    # The result names its encoder: a resume given another --checkpoint would report a source it
    # was not trained from, so it is refused, finished run or not.
    other = str(tmp_path / "full" / "checkpoints" / "last.pt")
    with pytest.raises(CheckpointError, match="started from --checkpoint 'random:mae_debug', not "):
        run_finetune(cfg, other, tmp_path / "part", resume=True, progress=False)


def test_a_finetune_from_a_relative_checkpoint_resumes_from_another_folder(tmp_path, monkeypatch) -> None:
    # The run records its encoder's file as an absolute path too: the same file, named relative to
    # another working folder, is the same encoder; another file is still refused, by a name that works.
    pytest.importorskip("semmae.data.transforms")
    from semmae.train.finetune import run_finetune

    cfg = _toy_cfg()
    enc = tmp_path / "enc"
    enc.mkdir()
    run_finetune(cfg, "random:mae_debug", enc / "run", progress=False, stop_at_step=2)
    weights = enc / "run" / "checkpoints" / "last.pt"
    monkeypatch.chdir(enc)
    run_finetune(cfg, "run/checkpoints/last.pt", tmp_path / "ft", progress=False, stop_at_step=2)
    monkeypatch.chdir(tmp_path)
    shutil.copy(weights, tmp_path / "copy.pt")
    with pytest.raises(CheckpointError, match=f"started from --checkpoint {str(weights)!r}, not 'copy.pt'"):
        run_finetune(cfg, "copy.pt", tmp_path / "ft", resume=True, progress=False, stop_at_step=3)
    part = run_finetune(
        cfg, "enc/run/checkpoints/last.pt", tmp_path / "ft", resume=True, progress=False, stop_at_step=3
    )
    assert part["step"] == 3


def test_same_encoder_compares_kind_name_and_file(tmp_path, monkeypatch) -> None:
    from semmae.encoder_spec import same_encoder

    (tmp_path / "a.pt").write_bytes(b"PK")
    monkeypatch.chdir(tmp_path)
    assert same_encoder("a.pt", str(tmp_path / "a.pt"))  # a relative and an absolute name of one file
    assert same_encoder("random:mae_debug", "random:mae_debug")
    assert not same_encoder("random:mae_debug", "random:mae_fmnist_tiny")
    assert not same_encoder("a.pt", "random:mae_debug")
    assert not same_encoder("timm:vit_small_patch16_224@a.pt", "timm:vit_base_patch16_224@a.pt")
    assert not same_encoder("a.pt", "gone.pt")


@pytest.mark.slow
def test_finetune_under_torchrun_two_ranks(tmp_path) -> None:
    pytest.importorskip("semmae.data.transforms")
    torchrun = Path(sys.executable).parent / "torchrun"
    if shutil.which(str(torchrun)) is None:
        pytest.skip("torchrun missing")
    out = tmp_path / "ddp"
    cmd = [
        str(torchrun), "--nproc_per_node=2", "--standalone", "-m", "semmae", "eval", "finetune",
        "--checkpoint", "random:mae_debug", "--out", str(out), "--results", str(tmp_path / "r.jsonl"),
        "data.name=toy_parts", "data.toy_size=64", "eval.ft_epochs=1", "eval.ft_batch_size=8",
        "eval.batch_size=16", "train.progress_bar=false", "train.device=cpu",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])  # printed once, by rank 0
    assert res["effective_batch"] == 16 and res["steps"] == 4  # 64 images / (8 per rank x 2 ranks)
    assert res["n_test"] == 64 and len((tmp_path / "r.jsonl").read_text().splitlines()) == 1
