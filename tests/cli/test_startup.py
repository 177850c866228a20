"""Start-up cost of the CLI: help and refusals of bad input must not import torch.

Importing torch (with timm and torchvision) takes seconds; ``semmae --help`` and a config error take
a fraction of that only while the heavy libraries stay unimported. These tests check the modules
loaded in a fresh interpreter (not a timing, which would be flaky on a loaded machine).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
HEAVY = ("torch", "timm", "torchvision", "matplotlib", "sklearn", "tensorboard")

_PROBE = """
import json, sys
from semmae.cli.main import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
heavy = sorted(m for m in {heavy!r} if m in sys.modules)
print(json.dumps({{"code": code, "heavy": heavy}}), file=sys.__stdout__)
"""


def _heavy_modules(argv: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE.format(heavy=HEAVY), *argv],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=120,
    )  # fmt: skip
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "err": proc.stderr}


def test_help_does_not_import_heavy_libraries() -> None:
    result = _heavy_modules(["--help"])
    assert result["code"] == 0
    assert result["heavy"] == [], f"`semmae --help` imported {result['heavy']}"


@pytest.mark.parametrize(
    "command",
    [
        ["pretrain"],
        ["parts", "train"],
        ["pipeline"],
        ["study", "--budget", "quick"],
        ["study", "--budget", "gpu"],
    ],
)
def test_config_refusal_does_not_import_torch(command: list[str], tmp_path: Path) -> None:
    argv = [
        *command,
        "--config",
        "configs/debug_tiny.yaml",
        "--out",
        str(tmp_path / "run"),
        "train.epochs=-1",
    ]
    result = _heavy_modules(argv)
    assert result["code"] == 2 and "train.epochs" in result["err"], result["err"]
    assert result["heavy"] == [], (
        f"`semmae {' '.join(command)}` refused bad input after importing {result['heavy']}"
    )
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("command", [["pretrain"], ["pipeline"], ["study"]])
@pytest.mark.parametrize(
    ("override", "says"),
    [
        ("train.epochs=0", "nothing to train: train.epochs is 0"),
        ("train.min_lr=1", "train.min_lr=1 is above the peak"),
    ],
)
def test_nothing_to_pretrain_or_a_rising_schedule_is_refused_before_torch(
    command: list[str], override: str, says: str, tmp_path: Path
) -> None:
    argv = [*command, "--config", "configs/debug_tiny.yaml", "--out", str(tmp_path / "run"), override]
    result = _heavy_modules(argv)
    assert result["code"] == 2 and says in result["err"], result["err"]
    assert result["heavy"] == [] and not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "spec", ["missing.pt", "timm:vit_base_patch16_224@missing.safetensors", "timm:no_file"]
)
def test_eval_refuses_a_missing_checkpoint_before_torch(spec: str, tmp_path: Path) -> None:
    result = _heavy_modules(
        ["eval", "knn", "--checkpoint", str(tmp_path / spec) if spec == "missing.pt" else spec]
    )
    assert result["code"] == 2
    assert result["heavy"] == [], (
        f"`semmae eval knn --checkpoint {spec}` imported {result['heavy']} to refuse it"
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["eval", "knn", "--checkpoint", "{notes}"],
        ["export", "--checkpoint", "{notes}", "--format", "timm", "--out", "{tmp}/e.safetensors"],
        [
            "parts",
            "train",
            "--config",
            "configs/parts_toy.yaml",
            "--out",
            "{tmp}/run",
            "parts.backbone={notes}",
        ],
    ],
    ids=["eval", "export", "parts_train"],
)
def test_a_file_that_is_no_checkpoint_is_refused_before_torch(argv: list[str], tmp_path: Path) -> None:
    notes = tmp_path / "notes.pt"
    notes.write_text("not weights")
    result = _heavy_modules([a.format(notes=notes, tmp=tmp_path) for a in argv])
    assert result["code"] == 2 and "notes.pt" in result["err"] and "is not a weights file" in result["err"]
    assert result["heavy"] == [], f"`semmae {argv[0]}` imported {result['heavy']} to refuse a text file"
    assert not (tmp_path / "run").exists() and not (tmp_path / "e.safetensors").exists()


@pytest.mark.parametrize("command", [["pretrain"], ["pipeline"], ["study"], ["parts", "train"]])
@pytest.mark.parametrize(
    ("holds", "says"),
    [
        ("run", "is not empty; pass --resume to continue it or --overwrite to replace it"),
        ("finished_run", "is not empty; pass --resume to continue it or --overwrite to replace it"),
        ("run_and_user_file", "holds a semmae run and 'thesis.tex', which semmae did not write"),
        ("user_file", "holds no semmae run ('thesis.tex' is not semmae's); choose another --out"),
    ],
)
def test_an_occupied_out_is_refused_before_torch(
    command: list[str], holds: str, says: str, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    if holds != "user_file":
        (out / ".semmae-run").write_text("{}")
        (out / "checkpoints").mkdir()
        (out / "checkpoints" / "last.pt").write_bytes(b"PK")
    if holds == "finished_run":  # the lock file its process left, naming a PID now dead
        done = subprocess.run(
            [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
        )
        holder = {"pid": int(done.stdout), "host": socket.gethostname()}
        (out / ".semmae.lock").write_text(json.dumps(holder))
    if "user_file" in holds:
        (out / "thesis.tex").write_text("mine")
    before = sorted(p.name for p in out.rglob("*"))
    result = _heavy_modules([*command, "--config", "configs/debug_tiny.yaml", "--out", str(out)])
    assert result["code"] == 2 and result["heavy"] == [], result
    assert says in result["err"] and len(result["err"].strip().splitlines()) == 1, result["err"]
    assert sorted(p.name for p in out.rglob("*")) == before


@pytest.mark.parametrize(
    "command", [["pretrain"], ["pipeline"], ["eval", "finetune", "--checkpoint", "random:mae_debug"]]
)
def test_resume_with_overwrite_is_a_usage_error_before_torch(command: list[str], tmp_path: Path) -> None:
    result = _heavy_modules([*command, "--out", str(tmp_path / "run"), "--resume", "--overwrite"])
    assert result["code"] == 2 and result["heavy"] == [], result


def test_semantic_masking_without_part_maps_is_refused_before_torch(tmp_path: Path) -> None:
    argv = [
        "pretrain",
        "--config",
        "configs/debug_tiny.yaml",
        "--out",
        str(tmp_path / "run"),
        "masking.name=semantic",
    ]
    result = _heavy_modules(argv)
    assert result["code"] == 2 and result["heavy"] == [], result
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("argv", "name"),
    [
        (["parts", "from-masks", "--config", "configs/parts_toy.yaml", "--split", "train", "--grid", "8",
          "--out", "{tmp}/n"], "n.json"),
        (["parts", "export", "--run", "{tmp}/run", "--split", "train", "--out", "{tmp}/n"], "n.npy"),
        (["parts", "show", "--maps", "{tmp}/n.npy", "--out", "{tmp}/mine.png"], "mine.png"),
        (["export", "--checkpoint", "random:mae_debug", "--format", "timm", "--out", "{tmp}/notes.safetensors"],
         "notes.safetensors"),
        (["export", "--checkpoint", "random:mae_debug", "--format", "onnx", "--out", "{tmp}/x.onnx"], "x.onnx"),
    ],
    ids=["from-masks", "parts-export", "parts-show", "export-timm", "export-onnx"],
)  # fmt: skip
def test_a_users_file_at_an_output_path_is_refused_before_torch(
    argv: list[str], name: str, tmp_path: Path
) -> None:
    (tmp_path / name).write_text("my notes")
    result = _heavy_modules([*(a.format(tmp=tmp_path) for a in argv), "--overwrite"])
    assert result["code"] == 2 and result["heavy"] == [], result
    assert f"{name}' exists and is not" in result["err"] and "semmae did not write it" in result["err"]
    assert (tmp_path / name).read_text() == "my notes"
