"""A NaN at a step that is not logged never reaches ``last.pt``, for all three trainers.

The loop checks a device-side "non-finite seen" flag and every parameter before each checkpoint;
the one-line error names ``last.pt`` only when one was kept (and then it is finite).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from semmae.cli.main import main
from semmae.models.checkpoint import load_checkpoint
from semmae.train.finetune import FinetuneTask
from semmae.train.parts import PartsTask
from semmae.train.pretrain import PretrainTask

ROOT = Path(__file__).parents[2]
QUIET = ["train.progress_bar=false", "train.device=cpu"]
TRAINERS = {
    # name: (command and options, overrides, its Task class); every run has >= 6 optimiser steps
    "pretrain": (["pretrain", "--config", str(ROOT / "configs" / "debug_tiny.yaml")],
                 ["data.limit=256", "train.batch_size=32", "train.knn_every_epochs=-1"], PretrainTask),
    "finetune": (["eval", "finetune", "--checkpoint", "random:mae_debug", "--results", "RESULTS"],
                 ["data.name=toy_parts", "data.toy_size=48", "data.image_size=28", "eval.ft_batch_size=8",
                  "eval.batch_size=48", "eval.ft_epochs=1"], FinetuneTask),
    "parts": (["parts", "train"],
              ["data.name=toy_parts", "data.image_size=28", "data.in_chans=1", "data.toy_size=48",
               "data.mean=[0.27]", "data.std=[0.18]", "parts.backbone=random:mae_debug", "parts.num_parts=4",
               "parts.batch_size=8", "parts.mlp_hidden=32", "parts.decoder_channels=16", "parts.style_dim=16",
               "parts.epochs=1", "parts.eval_kmeans=false"], PartsTask),
}  # fmt: skip


pytestmark = pytest.mark.usefixtures("single_thread")  # tests/conftest.py


def _poison(monkeypatch: pytest.MonkeyPatch, task: type, from_call: int) -> None:
    """From the ``from_call``-th micro-step on, the task's loss is NaN (so are the gradients)."""
    real, calls = task.step, {"n": 0}

    def step(self, net, batch, step):  # noqa: ANN001, ANN202
        loss, n = real(self, net, batch, step)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] >= from_call else loss), n

    monkeypatch.setattr(task, "step", step)


def _run(tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, *extra: str) -> tuple[Path, str]:
    """Run a trainer through the CLI; it must fail with one line. Returns (checkpoints dir, the line)."""
    options, overrides, _ = TRAINERS[name]
    out = tmp_path / "run"
    options = [o.replace("RESULTS", str(tmp_path / "r.jsonl")) for o in options]
    code = main([*options, "--out", str(out), *overrides, *QUIET, *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("semmae: error: ") and "\n" not in err.split("semmae: error: ")[-1]
    return out / "checkpoints", err.splitlines()[-1]


def _assert_finite(path: Path) -> dict:
    ckpt = load_checkpoint(path)
    for key, value in ckpt["model"].items():
        assert torch.isfinite(value).all(), key
    return ckpt


@pytest.mark.parametrize("name", sorted(TRAINERS))
def test_nan_between_log_steps_never_reaches_last_pt(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    _poison(monkeypatch, TRAINERS[name][2], from_call=3)  # step 3: not a log step (log_every=5)
    ckpts, err = _run(tmp_path, capsys, name, "train.log_every=5", "train.ckpt_every_steps=1")
    assert "non-finite by step 3" in err and f"{ckpts / 'last.pt'} (step 2)" in err, err
    assert _assert_finite(ckpts / "last.pt")["step"] == 2
    bad = load_checkpoint(ckpts / "nonfinite.pt")["model"]  # the bad state is kept apart, for debugging
    assert any(not torch.isfinite(v).all() for v in bad.values() if v.is_floating_point())


@pytest.mark.parametrize("name", sorted(TRAINERS))
def test_without_a_checkpoint_the_message_names_none(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    _poison(monkeypatch, TRAINERS[name][2], from_call=1)
    ckpts, err = _run(tmp_path, capsys, name, "train.log_every=100", "train.ckpt_every_steps=0")
    assert "no checkpoint was kept" in err and "last.pt" not in err, err
    assert not (ckpts / "last.pt").exists() and (ckpts / "nonfinite.pt").is_file()


def test_a_huge_learning_rate_keeps_only_finite_state(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The reported case: lr 1e6, log every 5 steps, checkpoint every step."""
    ckpts, err = _run(
        tmp_path, capsys, "pretrain", "train.base_lr=1e6", "train.log_every=5", "train.ckpt_every_steps=1"
    )
    assert "non-finite" in err or "loss became" in err, err
    if (ckpts / "last.pt").exists():
        assert str(ckpts / "last.pt") in err
        _assert_finite(ckpts / "last.pt")
    else:
        assert "no checkpoint was kept" in err
