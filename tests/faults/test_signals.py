"""SIGTERM / SIGINT on every trainer: it checkpoints, exits with one message, and ``--resume`` completes.

Each trainer runs as a subprocess (``python -m semmae ...``), is signalled right after its first
checkpoint, then resumes in this process. A ``--resume`` of the finished run keeps its summary.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from semmae.cli.main import main
from semmae.models.checkpoint import load_checkpoint

ROOT = Path(__file__).parents[2]
QUIET = ["train.progress_bar=false", "train.device=cpu", "train.ckpt_every_steps=1", "train.log_every=1"]
TRAINERS = {
    # name: (command and options, overrides, total steps); long enough to be alive when signalled
    "pretrain": (["pretrain", "--config", str(ROOT / "configs" / "debug_tiny.yaml")],
                 ["data.limit=384", "train.batch_size=8", "train.knn_every_epochs=-1"], 48),
    "finetune": (["eval", "finetune", "--checkpoint", "random:mae_debug", "--results", "RESULTS"],
                 ["data.name=toy_parts", "data.toy_size=384", "data.image_size=28", "eval.ft_batch_size=8",
                  "eval.batch_size=64", "eval.ft_epochs=1", "eval.ft_warmup_epochs=0"], 48),
    "linear_mae": (["eval", "linear", "--checkpoint", "random:mae_debug", "--results", "RESULTS"],
                   ["data.name=toy_parts", "data.toy_size=384", "data.image_size=28", "eval.linear_protocol=mae",
                    "eval.batch_size=8", "eval.linear_batch_size=8", "eval.linear_epochs=1",
                    "eval.linear_warmup_epochs=0"], 48),
    "parts": (["parts", "train"],
              ["data.name=toy_parts", "data.image_size=28", "data.in_chans=1", "data.toy_size=192",
               "data.mean=[0.27]", "data.std=[0.18]", "parts.backbone=random:mae_debug", "parts.num_parts=4",
               "parts.batch_size=8", "parts.mlp_hidden=32", "parts.decoder_channels=16", "parts.style_dim=16",
               "parts.epochs=2", "parts.eval_kmeans=false", "parts.eval_limit=16", "parts.num_vis=2"], 48),
}  # fmt: skip


pytestmark = pytest.mark.usefixtures("single_thread")  # tests/conftest.py


def _argv(name: str, out: Path, tmp_path: Path) -> list[str]:
    options, overrides, _ = TRAINERS[name]
    options = [o.replace("RESULTS", str(tmp_path / "results.jsonl")) for o in options]
    return [*options, "--out", str(out), *overrides, *QUIET]


def _signal_after_first_checkpoint(argv: list[str], out: Path, sig: int) -> tuple[int, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "semmae", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    deadline = time.time() + 120
    while not (out / "checkpoints" / "last.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


@pytest.mark.parametrize(
    ("name", "sig"),
    [
        ("pretrain", signal.SIGTERM),
        ("finetune", signal.SIGTERM),
        ("parts", signal.SIGTERM),
        ("linear_mae", signal.SIGTERM),
        pytest.param("parts", signal.SIGINT, marks=pytest.mark.slow),  # Ctrl-C: the same StopRequest
    ],
)
def test_signal_saves_exits_and_resumes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, sig: signal.Signals
) -> None:
    out, total = tmp_path / "run", TRAINERS[name][2]
    argv = _argv(name, out, tmp_path)
    code, err = _signal_after_first_checkpoint(argv, out, sig)
    assert code == 128 + sig, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"semmae: stopped by {sig.name} at step ") and "--resume" in last, last
    assert "Traceback" not in err
    step = load_checkpoint(out / "checkpoints" / "last.pt")["step"]
    assert 0 < step < total and f"at step {step};" in last
    assert not (out / "summary.json").exists()

    capsys.readouterr()
    hint = shlex.split(last.split("Continue with: ", 1)[1])  # the printed command, run as it is
    assert hint[0] == "semmae" and f"{out / 'config.yaml'}" in hint and hint[-1] == "--resume", hint
    assert main(hint[1:]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert load_checkpoint(out / "checkpoints" / "last.pt")["step"] == total
    assert result.get("complete", True) and result.get("steps", result.get("step")) == total


@pytest.mark.parametrize("name", ["pretrain", "finetune"])
def test_resume_of_a_finished_run_keeps_its_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    out = tmp_path / "run"
    argv = [*_argv(name, out, tmp_path), "data.limit=64", "data.toy_size=64", "eval.ft_batch_size=16"]
    assert main(argv) == 0
    before = (out / "summary.json").read_text()
    capsys.readouterr()
    assert main([*argv, "--resume"]) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (out / "summary.json").read_text() == before  # not rewritten with NaN loss and 0 s
    assert again["already_complete"] and "NaN" not in before
    if name == "finetune":
        assert len((tmp_path / "results.jsonl").read_text().splitlines()) == 1  # recorded once
    (out / "summary.json").unlink()  # killed after the last checkpoint, before the summary
    assert main([*argv, "--resume"]) == 0
    assert "NaN" not in (out / "summary.json").read_text()  # strict JSON: no loss was logged


def _stopped_stage_hint(code: int, err: str, out: Path) -> list[str]:
    """The arguments of the command a stopped pipeline or study prints, after checking the message."""
    assert code == 128 + signal.SIGTERM and "Traceback" not in err, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("semmae: stopped by SIGTERM at step ") and "checkpoint saved" in last, last
    hint = shlex.split(last.split("Continue with: ", 1)[1])
    assert hint[0] == "semmae" and str(out / "config.yaml") in hint and hint[-1] == "--resume", hint
    return hint[1:]


@pytest.mark.slow
def test_sigterm_stops_the_pipeline_in_one_line_and_a_rerun_finishes(tmp_path: Path) -> None:
    out = tmp_path / "pipe"
    tiny = ["data.limit=256", "model.name=mae_debug", "train.epochs=2", "train.batch_size=8", "parts.epochs=1",
            "parts.batch_size=32", "parts.eval_limit=64", "eval.linear_epochs=2", "eval.batch_size=128",
            "train.knn_every_epochs=0", "train.progress_bar=false", "train.ckpt_every_steps=1"]  # fmt: skip
    argv = ["pipeline", "--config", str(ROOT / "configs" / "pipeline_fmnist.yaml"), "--out", str(out), *tiny]
    code, err = _signal_after_first_checkpoint(argv, out / "mae", signal.SIGTERM)
    assert (out / "mae" / "checkpoints" / "last.pt").is_file() and not (out / "mae" / "DONE.json").exists()
    assert main(_stopped_stage_hint(code, err, out)) == 0  # the printed command, run as it is
    assert (out / "mae" / "DONE.json").is_file() and (out / "report.html").is_file()


@pytest.mark.slow
def test_sigterm_stops_the_study_in_one_line_and_a_rerun_finishes(tmp_path: Path) -> None:
    out = tmp_path / "study"
    argv = ["study", "--config", str(ROOT / "configs" / "study_relations.yaml"), "--budget", "quick",
            "--out", str(out), "data.toy_size=300", "parts.eval_limit=100", "train.batch_size=8",
            "train.ckpt_every_steps=1", "train.progress_bar=false"]  # fmt: skip
    code, err = _signal_after_first_checkpoint(argv, out / "prefix" / "mae", signal.SIGTERM)
    assert (out / "prefix" / "mae" / "checkpoints" / "last.pt").is_file()
    hint = _stopped_stage_hint(code, err, out)
    assert hint[hint.index("--budget") + 1] == "quick"
    assert main(hint) == 0  # the study's own config is not scaled by its budget a second time
    assert (out / "study.json").is_file() and (out / "study.html").is_file()
