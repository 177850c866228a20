"""SIGKILL at 21 points across the three trainers, then ``--resume``: bit-identical to an uninterrupted run.

Each trainer runs once uninterrupted (in this process), then seven times as a subprocess killed
with SIGKILL once its metrics reach a given step (between checkpoints, so the resume replays
steps; sometimes during a checkpoint write), each resumed here. The final weights must equal the
uninterrupted run's exactly.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from semmae.cli.main import main
from semmae.models.checkpoint import load_checkpoint

ROOT = Path(__file__).parents[2]
QUIET = ["train.progress_bar=false", "train.device=cpu", "train.ckpt_every_steps=3", "train.log_every=1"]
KILL_AT = (4, 7, 11, 16, 22, 29, 37)  # optimiser steps seen in metrics.jsonl; 48 steps per run
TRAINERS = {
    # name: (command and options, overrides); each run is 48 optimiser steps
    "pretrain": (["pretrain", "--config", str(ROOT / "configs" / "debug_tiny.yaml")],
                 ["data.limit=384", "train.batch_size=8", "train.accum_steps=2", "train.epochs=2",
                  "train.clip_grad=1.0", "train.warmup_epochs=0.5", "train.knn_every_epochs=-1"]),
    "finetune": (["eval", "finetune", "--checkpoint", "random:mae_debug", "--results", "RESULTS"],
                 ["data.name=toy_parts", "data.toy_size=192", "data.image_size=28", "eval.ft_batch_size=8",
                  "eval.batch_size=96", "eval.ft_epochs=2"]),
    "parts": (["parts", "train"],
              ["data.name=toy_parts", "data.image_size=28", "data.in_chans=1", "data.toy_size=128",
               "data.mean=[0.27]", "data.std=[0.18]", "parts.backbone=random:mae_debug", "parts.num_parts=4",
               "parts.batch_size=8", "parts.mlp_hidden=32", "parts.decoder_channels=16", "parts.style_dim=16",
               "parts.epochs=3", "parts.cache_features=false", "parts.eval_kmeans=false", "parts.eval_limit=8",
               "parts.num_vis=2", "parts.image_every_epochs=0"]),
}  # fmt: skip

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("single_thread")]  # tests/conftest.py


def _argv(name: str, out: Path, tmp_path: Path) -> list[str]:
    options, overrides = TRAINERS[name]
    options = [o.replace("RESULTS", str(tmp_path / "results.jsonl")) for o in options]
    return [*options, "--out", str(out), *overrides, *QUIET]


def _logged_step(out: Path) -> int:
    try:
        lines = (out / "metrics.jsonl").read_text().splitlines()
        return max((json.loads(line).get("step", 0) for line in lines if line.endswith("}")), default=0)
    except (OSError, json.JSONDecodeError):
        return 0


def _kill_at(argv: list[str], out: Path, step: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "semmae", *argv], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env)  # fmt: skip
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if (out / "checkpoints" / "last.pt").exists() and _logged_step(out) >= step:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.mark.parametrize("name", sorted(TRAINERS))
def test_sigkill_then_resume_is_bit_identical(tmp_path: Path, name: str) -> None:
    ref_dir = tmp_path / "reference"
    assert main(_argv(name, ref_dir, tmp_path)) == 0
    reference = load_checkpoint(ref_dir / "checkpoints" / "last.pt")
    assert reference["step"] == 48
    for step in KILL_AT:
        out = tmp_path / f"killed_{step}"
        argv = _argv(name, out, tmp_path)
        _kill_at(argv, out, step)
        killed_at = load_checkpoint(out / "checkpoints" / "last.pt")["step"]
        assert killed_at < 48, f"the run ended before the kill at step {step}"
        assert main([*argv, "--resume"]) == 0
        final = load_checkpoint(out / "checkpoints" / "last.pt")
        assert final["step"] == 48
        for key, value in reference["model"].items():
            assert torch.equal(final["model"][key], value), f"{name}: {key} differs after a kill at {step}"
