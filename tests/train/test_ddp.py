"""torchrun with two CPU processes (gloo): the ranks end with bit-identical weights."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


@pytest.mark.skipif(
    shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None, reason="torchrun missing"
)
def test_two_ranks_end_with_identical_weights(tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    torchrun = str(Path(sys.executable).parent / "torchrun")
    cmd = [
        torchrun, "--nproc_per_node=2", "--standalone", "-m", "semmae", "pretrain",
        "--config", str(ROOT / "configs" / "debug_tiny.yaml"), "--out", str(out),
        "data.limit=256", "train.batch_size=16", "train.max_steps=4", "train.progress_bar=false",
        "train.knn_every_epochs=-1", "train.device=cpu",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["complete"]
    assert summary["effective_batch"] == 32  # 16 per rank x 2 ranks
    digests = summary["rank_param_digests"]
    assert len(digests) == 2 and digests[0] == digests[1]


@pytest.mark.skipif(
    shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None, reason="torchrun missing"
)
def test_a_refused_out_stops_every_rank_at_once(tmp_path: Path) -> None:
    """Rank 0 checks --out and refuses it in one line; every rank stops and the folder is kept."""
    out = tmp_path / "taken"
    out.mkdir()
    (out / "thesis.tex").write_text("x")
    torchrun = str(Path(sys.executable).parent / "torchrun")
    cmd = [
        torchrun, "--nproc_per_node=2", "--standalone", "-m", "semmae", "pretrain",
        "--config", str(ROOT / "configs" / "debug_tiny.yaml"), "--out", str(out), "--overwrite",
        "train.device=cpu",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path)
    assert proc.returncode != 0
    refusals = [
        line for line in proc.stderr.splitlines() if line.startswith("semmae: error: refusing to --overwrite")
    ]
    assert refusals, proc.stderr[-2000:]  # the other rank may be stopped by torchrun before it prints
    assert [p.name for p in out.iterdir()] == ["thesis.tex"]
