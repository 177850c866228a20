"""A crafted pickle payload on every loading path never runs and is refused in one line.

Each case plants a checkpoint that is valid except for one extra object whose ``__reduce__`` would
create a marker directory when unpickled, and drives a command that reads it (in-process, through
``semmae.cli.main.main``; two cases as real subprocesses). The marker must never appear.
"""

from __future__ import annotations

import argparse
import os
import pickle
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from semmae import config as config_lib
from semmae.cli.main import main
from semmae.models import build_mae

TOY = [
    "data.name=toy_parts", "data.image_size=28", "data.in_chans=1", "data.toy_size=32", "data.mean=[0.27]",
    "data.std=[0.18]", "model.name=mae_debug", "train.device=cpu", "train.progress_bar=false",
    "train.knn_every_epochs=-1", "train.batch_size=16", "parts.batch_size=16", "parts.num_parts=4",
    "parts.eval_limit=16", "parts.num_vis=2", "eval.ft_epochs=1", "eval.ft_batch_size=16",
]  # fmt: skip
EXECUTE = "holds Python objects that loading would have to execute"


class _Payload:
    """Unpickling this creates the directory ``marker``: proof that loading ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (os.mkdir, (str(self.marker),))


pytestmark = pytest.mark.usefixtures("single_thread")  # tests/conftest.py


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "PAYLOAD_RAN"


def _toy_cfg() -> config_lib.Config:
    return config_lib.load(None, TOY)


def _mae_state(cfg: config_lib.Config, **extra: object) -> dict:
    mae = build_mae("mae_debug")
    return {"kind": "mae", "model": mae.state_dict(), "arch": mae.arch, "config": cfg.to_dict(), **extra}


def _evil_run(root: Path, state: dict, marker: Path, cfg: config_lib.Config | None = None) -> Path:
    """A run directory whose ``checkpoints/last.pt`` carries the payload (``cfg``: its config.yaml)."""
    (root / "checkpoints").mkdir(parents=True)
    config_lib.dump(cfg or _toy_cfg(), root / "config.yaml")
    torch.save({**state, "evil": _Payload(marker)}, root / "checkpoints" / "last.pt")
    return root


def _refused(
    capsys: pytest.CaptureFixture[str], argv: list[str], marker: Path, needle: str = EXECUTE
) -> None:
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert err and err[-1].startswith("semmae: error: ") and needle in err[-1], err
    assert not any("Traceback" in line for line in err)
    assert not marker.exists(), "the payload ran"


def _evil_mae(tmp_path: Path, marker: Path) -> str:
    path = tmp_path / "evil_mae.pt"
    torch.save(_mae_state(_toy_cfg(), evil=_Payload(marker)), path)
    return str(path)


@pytest.mark.parametrize("command", ["knn", "linear"])
def test_eval_frozen(tmp_path: Path, capsys, marker: Path, command: str) -> None:
    _refused(capsys, ["eval", command, "--checkpoint", _evil_mae(tmp_path, marker), *TOY], marker)


def test_eval_finetune_checkpoint(tmp_path: Path, capsys, marker: Path) -> None:
    argv = [
        "eval",
        "finetune",
        "--checkpoint",
        _evil_mae(tmp_path, marker),
        "--out",
        str(tmp_path / "ft"),
        *TOY,
    ]
    _refused(capsys, argv, marker)


def test_export(tmp_path: Path, capsys, marker: Path) -> None:
    argv = [
        "export",
        "--checkpoint",
        _evil_mae(tmp_path, marker),
        "--format",
        "timm",
        "--out",
        str(tmp_path / "e.safetensors"),
    ]
    _refused(capsys, argv, marker)


def test_parts_train_backbone(tmp_path: Path, capsys, marker: Path) -> None:
    argv = [
        "parts",
        "train",
        "--out",
        str(tmp_path / "p"),
        *TOY,
        f"parts.backbone={_evil_mae(tmp_path, marker)}",
    ]
    _refused(capsys, argv, marker)


def _parts_state() -> dict:
    return {"kind": "parts", "model": {"w": torch.ones(2)}, "config": _toy_cfg().to_dict(), "step": 1}


def test_parts_export_run(tmp_path: Path, capsys, marker: Path) -> None:
    run = _evil_run(tmp_path / "p", _parts_state(), marker)
    argv = ["parts", "export", "--run", str(run), "--split", "train", "--out", str(tmp_path / "m.npy")]
    _refused(capsys, argv, marker)


def test_pretrain_resume(tmp_path: Path, capsys, marker: Path) -> None:
    run = _evil_run(tmp_path / "r", _mae_state(_toy_cfg(), step=1), marker)
    _refused(capsys, ["pretrain", "--out", str(run), "--resume", *TOY], marker)


def test_parts_train_resume(tmp_path: Path, capsys, marker: Path) -> None:
    cfg = config_lib.load(None, [*TOY, "parts.backbone=random:mae_debug"])  # the run's own config
    run = _evil_run(tmp_path / "p", _parts_state(), marker, cfg)
    _refused(
        capsys,
        ["parts", "train", "--out", str(run), "--resume", *TOY, "parts.backbone=random:mae_debug"],
        marker,
    )


def test_eval_finetune_resume(tmp_path: Path, capsys, marker: Path) -> None:
    good = tmp_path / "good.pt"
    torch.save(_mae_state(_toy_cfg()), good)
    run = _evil_run(tmp_path / "ft", {"kind": "finetune", "model": {}, "step": 1}, marker)
    argv = ["eval", "finetune", "--checkpoint", str(good), "--out", str(run), "--resume", *TOY]
    _refused(capsys, argv, marker)


def test_pipeline_resume(tmp_path: Path, capsys, marker: Path) -> None:
    root = tmp_path / "pipe"
    _evil_run(root / "mae", _mae_state(_toy_cfg(), step=1), marker)
    config_lib.dump(_toy_cfg(), root / "config.yaml")
    _refused(capsys, ["pipeline", "--out", str(root), "--resume", *TOY], marker)


def _official(path: Path, marker: Path) -> Path:
    mae = build_mae("mae_debug")
    args = argparse.Namespace(model="mae_vit_base_patch16", norm_pix_loss=True)
    torch.save({"model": mae.state_dict(), "args": args, "evil": _Payload(marker)}, path)
    return path


def test_official_mae_pth(tmp_path: Path, capsys, marker: Path) -> None:
    path = _official(tmp_path / "mae_pretrain.pth", marker)
    _refused(capsys, ["eval", "knn", "--checkpoint", str(path), *TOY], marker)


def test_timm_name_at_file(tmp_path: Path, capsys, marker: Path) -> None:
    pytest.importorskip("timm")
    path = _official(tmp_path / "vit.pth", marker)
    _refused(capsys, ["eval", "knn", "--checkpoint", f"timm:vit_tiny_patch16_224@{path}", *TOY], marker)


def _bare_pickle(path: Path, marker: Path) -> Path:
    path.write_bytes(pickle.dumps({"model": {}, "evil": _Payload(marker)}))
    return path


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_bare_pickle(tmp_path: Path, capsys, marker: Path) -> None:
    path = _bare_pickle(tmp_path / "weights.pkl", marker)
    _refused(capsys, ["eval", "knn", "--checkpoint", str(path), *TOY], marker, needle="could not be read")


def test_legacy_torch_format(tmp_path: Path, capsys, marker: Path) -> None:
    path = tmp_path / "legacy.pt"
    torch.save(_mae_state(_toy_cfg(), evil=_Payload(marker)), path, _use_new_zipfile_serialization=False)
    _refused(capsys, ["eval", "knn", "--checkpoint", str(path), *TOY], marker)


@pytest.mark.parametrize(  # a real process too: the console script's exit code and stderr
    ("make", "needle"),
    [
        (_official, EXECUTE),
        pytest.param(_bare_pickle, "could not be read", marks=pytest.mark.slow),
    ],
    ids=["official_pth", "bare_pickle"],
)
def test_as_a_subprocess(
    tmp_path: Path, marker: Path, make: Callable[[Path, Path], Path], needle: str
) -> None:
    path = make(tmp_path / "ckpt.pth", marker)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "semmae", "eval", "knn", "--checkpoint", str(path), *TOY],
                          capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr[-2000:]
    assert lines[-1].startswith("semmae: error: ") and needle in lines[-1]
    assert "Traceback" not in done.stderr and not marker.exists()
