"""The loop's guards: a non-finite loss stops with a checkpoint; SIGTERM saves and exits cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from semmae import config as config_lib
from semmae.errors import NonFiniteLossError
from semmae.models import MaskedAutoencoderViT
from semmae.models.checkpoint import load_checkpoint
from semmae.train.pretrain import run_pretrain

ROOT = Path(__file__).parents[2]
DEBUG = ROOT / "configs" / "debug_tiny.yaml"
FAST = ["data.limit=256", "train.batch_size=32", "train.progress_bar=false", "train.knn_every_epochs=-1"]


def test_non_finite_loss_stops_with_a_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    real_loss = MaskedAutoencoderViT.loss

    def poisoned(self, images, pred, mask):  # noqa: ANN001, ANN202
        calls["n"] += 1
        loss = real_loss(self, images, pred, mask)
        return loss * float("nan") if calls["n"] > 3 else loss

    monkeypatch.setattr(MaskedAutoencoderViT, "loss", poisoned)
    cfg = config_lib.load(DEBUG, [*FAST, "train.log_every=1", "train.ckpt_every_steps=2"])
    with pytest.raises(NonFiniteLossError, match="loss became nan by step 4") as info:
        run_pretrain(cfg, tmp_path / "run")
    assert "\n" not in str(info.value)
    last = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert last["step"] == 2  # the last good state
    for v in last["model"].values():
        assert torch.isfinite(v).all()
    assert (tmp_path / "run" / "checkpoints" / "nonfinite.pt").is_file()


def test_sigterm_saves_and_exits_cleanly(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = [sys.executable, "-m", "semmae", "pretrain", "--config", str(DEBUG), "--out", str(out), *FAST,
            "data.limit=4096", "train.batch_size=16", "train.ckpt_every_steps=5", "train.log_every=1"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 120
    while not (out / "checkpoints" / "last.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "stopped by SIGTERM" in err and "--resume" in err and "Traceback" not in err
    ckpt = load_checkpoint(out / "checkpoints" / "last.pt")
    assert 0 < ckpt["step"] < 256 and not (out / "summary.json").exists()
