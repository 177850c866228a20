"""End-to-end pretraining on a small slice of Fashion-MNIST: outputs, resume exactness, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from semmae import config as config_lib
from semmae.engine.logging import read_metrics
from semmae.errors import RunDirError
from semmae.models.checkpoint import load_checkpoint
from semmae.train.pretrain import run_pretrain

ROOT = Path(__file__).parents[2]


def _cfg(*overrides: str) -> config_lib.Config:
    base = [
        "data.limit=256", "train.batch_size=32", "train.progress_bar=false", "train.log_every=1",
        "train.knn_train=256", "train.knn_test=64", "train.ckpt_every_steps=2",
    ]  # fmt: skip
    return config_lib.load(ROOT / "configs" / "debug_tiny.yaml", base + list(overrides))


def test_run_writes_every_output(tmp_path: Path) -> None:
    out = tmp_path / "run"
    summary = run_pretrain(_cfg("train.epochs=2", "train.base_lr=3e-3"), out)
    assert summary["complete"] and summary["step"] == 16
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "checkpoints/last.pt"):
        assert (out / name).is_file(), name
    assert any((out / "tb").iterdir())
    assert sorted(p.name for p in (out / "images").glob("*.png")) == [
        "recon_epoch_0001.png",
        "recon_epoch_0002.png",
    ]
    rows = [r for r in read_metrics(out / "metrics.jsonl") if "loss" in r]
    losses = [r["loss"] for r in rows]
    assert all(isinstance(v, float) and v == v for v in losses)
    assert sum(losses[-4:]) < sum(losses[:4])  # it learns something
    assert {"step", "epoch", "loss", "lr", "img_per_s"} <= set(rows[0])
    knn = [r["knn_top1"] for r in read_metrics(out / "metrics.jsonl") if "knn_top1" in r]
    assert len(knn) == 1 and 0.0 <= knn[0] <= 100.0
    ckpt = load_checkpoint(out / "checkpoints" / "last.pt")
    assert {"model", "optimizer", "step", "epoch", "rng", "config", "arch", "kind"} <= set(ckpt)
    assert ckpt["step"] == 16 and ckpt["config"]["train"]["epochs"] == 2


def test_interrupted_and_resumed_run_matches_uninterrupted(tmp_path: Path) -> None:
    cfg = _cfg(
        "train.epochs=2", "train.warmup_epochs=0.5", "train.ckpt_every_steps=100", "train.knn_every_epochs=-1"
    )
    run_pretrain(cfg, tmp_path / "a")
    partial = run_pretrain(cfg, tmp_path / "b", stop_at_step=5)  # mid-epoch (8 steps per epoch)
    assert not partial["complete"] and partial["step"] == 5
    assert load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")["step"] == 5
    resumed = run_pretrain(cfg, tmp_path / "b", resume=True)
    assert resumed["complete"] and resumed["step"] == 16
    a = load_checkpoint(tmp_path / "a" / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")["model"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    steps = [r["step"] for r in read_metrics(tmp_path / "b" / "metrics.jsonl") if "loss" in r]
    assert steps == list(range(1, 17))  # no step repeated or skipped


def test_a_resume_inside_a_log_window_logs_the_uninterrupted_losses(tmp_path: Path) -> None:
    # The checkpoint at step 5 carries the open window (steps 4-5): the mean logged at step 6 covers
    # steps 4-6, as without the interruption, and so does the run's final loss.
    cfg = _cfg(
        "train.epochs=2", "train.log_every=3", "train.ckpt_every_steps=100", "train.knn_every_epochs=-1"
    )
    whole = run_pretrain(cfg, tmp_path / "a")
    run_pretrain(cfg, tmp_path / "b", stop_at_step=5)
    resumed = run_pretrain(cfg, tmp_path / "b", resume=True)

    def losses(run: str) -> list[tuple[int, float]]:
        return [(r["step"], r["loss"]) for r in read_metrics(tmp_path / run / "metrics.jsonl") if "loss" in r]

    assert [step for step, _ in losses("a")] == [3, 6, 9, 12, 15, 16]
    assert losses("b") == losses("a") and resumed["final_loss"] == whole["final_loss"]


def test_refuses_a_non_empty_directory_without_resume(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(RunDirError, match="holds no semmae run .* choose another --out"):
        run_pretrain(_cfg("train.max_steps=1"), out)
    assert (out / "precious.txt").read_text() == "keep me"
    # --resume with nothing to resume (an empty or failed start) starts from scratch (issue #10)
    assert run_pretrain(_cfg("train.max_steps=1"), tmp_path / "empty", resume=True)["step"] == 1


def test_accumulation_and_bf16_run(tmp_path: Path) -> None:
    summary = run_pretrain(
        _cfg("train.max_steps=3", "train.accum_steps=2", "train.precision=bf16", "train.knn_every_epochs=-1"),
        tmp_path / "acc",
    )
    assert summary["complete"] and summary["effective_batch"] == 64
    assert summary["peak_lr"] == pytest.approx(1e-3 * 64 / 256)
    lrs = [r["lr"] for r in read_metrics(tmp_path / "acc" / "metrics.jsonl") if "lr" in r]
    assert len(lrs) == 3
    assert json.loads((tmp_path / "acc" / "summary.json").read_text())["step"] == 3


def test_the_knn_monitor_skips_a_one_class_folder(tmp_path: Path) -> None:
    from PIL import Image

    for split in ("train", "test"):
        (tmp_path / "data" / split / "cats").mkdir(parents=True)
        for i in range(8):
            pixels = torch.randint(
                0, 256, (28, 28), generator=torch.Generator().manual_seed(i), dtype=torch.uint8
            )
            Image.fromarray(pixels.numpy()).save(tmp_path / "data" / split / "cats" / f"{i}.png")
    cfg = _cfg("data.name=image_folder", f"data.root={tmp_path / 'data'}", "data.limit=null", "train.batch_size=8",
               "train.max_steps=1", "train.knn_every_epochs=1")  # fmt: skip
    summary = run_pretrain(cfg, tmp_path / "run")
    assert summary["complete"] and summary["knn_top1"] is None  # not a meaningless 100%
    assert not [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "knn_top1" in r]
