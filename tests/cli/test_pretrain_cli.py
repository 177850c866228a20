"""`semmae pretrain` from the outside: refusals as one line + exit 2, SIGKILL then --resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from semmae.cli.main import main
from semmae.engine.logging import read_metrics

ROOT = Path(__file__).parents[2]
DEBUG = str(ROOT / "configs" / "debug_tiny.yaml")
FAST = ["train.progress_bar=false", "train.knn_every_epochs=-1", "data.limit=128", "train.batch_size=32"]


def _err(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("semmae: error: ") and "\n" not in err and "Traceback" not in err
    return err


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["train.epochz=1"], "train.epochs"),
        (["masking.ratio=1.2"], "masking.ratio"),
        (["model.patch_size=5"], "model.patch_size"),
        (["data.root=/nonexistent/fmnist"], "apt-get install dataset-fashion-mnist"),
        (["data.name=image_folder", "data.root=EMPTY"], "no images"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], overrides: list[str], needle: str
) -> None:
    (tmp_path / "empty").mkdir()
    overrides = [o.replace("EMPTY", str(tmp_path / "empty")) for o in overrides]
    err = _err(capsys, ["pretrain", "--config", DEBUG, "--out", str(tmp_path / "run"), *FAST, *overrides])
    assert needle.lower() in err.lower()


def test_non_empty_out_is_refused_and_kept(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    err = _err(capsys, ["pretrain", "--config", DEBUG, "--out", str(out), *FAST])
    assert "holds no semmae run ('notes.txt' is not semmae's); choose another --out" in err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_an_out_that_is_a_file_is_refused_with_the_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "notes.txt"
    out.write_text("mine")
    err = _err(capsys, ["pretrain", "--config", DEBUG, "--out", str(out), "--overwrite", *FAST])
    assert err.endswith("exists and is not a directory; a run needs a folder: choose another --out")
    assert out.read_text() == "mine"


def test_resume_refuses_a_config_that_changes_what_the_run_computes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    argv = ["pretrain", "--config", DEBUG, "--out", str(out), *FAST, "train.max_steps=2", "train.epochs=2"]
    assert main(argv) == 0
    before = (out / "checkpoints" / "last.pt").read_bytes()
    for changed in (["train.batch_size=16"], ["data.limit=96"], ["train.seed=1", "masking.ratio=0.6"]):
        err = _err(capsys, [*argv, "--resume", *changed])
        keys = [c.split("=")[0] for c in changed]
        assert all(k in err for k in keys) and f"--config {out / 'config.yaml'}" in err, err
    assert (out / "checkpoints" / "last.pt").read_bytes() == before  # nothing trained on
    # Training longer, elsewhere or with other logging is a resume.
    assert main([*argv, "--resume", "train.max_steps=3", "train.log_every=1", "train.device=cpu"]) == 0


def test_sigkill_mid_epoch_then_resume_continues(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = [sys.executable, "-m", "semmae", "pretrain", "--config", DEBUG, "--out", str(out),
            "train.progress_bar=false", "train.knn_every_epochs=-1", "data.limit=2048", "train.batch_size=16",
            "train.ckpt_every_steps=3", "train.log_every=1", "train.epochs=1"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    ckpt = out / "checkpoints" / "last.pt"
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert ckpt.exists(), "no checkpoint before the kill"
    steps_before = [r["step"] for r in read_metrics(out / "metrics.jsonl")]
    assert 0 < max(steps_before) < 128  # killed mid-epoch
    done = subprocess.run(args + ["--resume"], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["complete"] and summary["step"] == 128
    steps = [r["step"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r]
    assert steps[-1] == 128 and sorted(set(steps)) == list(range(1, 129))
