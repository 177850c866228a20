"""MAE's evaluation protocols on a folder of full-resolution images: the MAE linear probe and the
fine-tune with timm's transform, both on the one loop, both resuming exactly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from semmae import config as config_lib
from semmae.cli.main import main
from semmae.engine.state import LAST
from semmae.models.checkpoint import load_checkpoint
from semmae.train.finetune import run_finetune
from semmae.train.linear_probe import run_linear_probe

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two classes of small grey JPEGs of mixed sizes: bright left half (a) or right half (b)."""
    root = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(0)
    for split, count in (("train", 24), ("val", 8)):
        for i in range(count):
            w, h = (48, 36) if i % 2 else (36, 48)
            arr = rng.integers(0, 60, (h, w), dtype=np.uint8)
            label = "a" if i % 4 < 2 else "b"
            arr[:, : w // 2] += 150 if label == "a" else 0
            arr[:, w // 2 :] += 150 if label == "b" else 0
            path = root / split / label / f"{i:02d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(path, quality=90)
    return root


def _cfg(folder: Path, *extra: str) -> config_lib.Config:
    base = [
        "data.name=image_folder", f"data.root={folder}", "data.image_size=28", "data.in_chans=1",
        "train.device=cpu", "train.progress_bar=false", "train.log_every=1", "train.ckpt_every_steps=100",
    ]  # fmt: skip
    return config_lib.load(None, base + list(extra))


PROBE = ["eval.linear_protocol=mae", "eval.linear_batch_size=8", "eval.batch_size=4", "eval.linear_epochs=2",
         "eval.linear_warmup_epochs=1"]  # fmt: skip


def test_mae_linear_probe_runs_through_the_cli_and_names_its_protocol(
    folder: Path, tmp_path: Path, capsys
) -> None:
    argv = ["eval", "linear", "--checkpoint", "random:mae_debug", "--out", str(tmp_path / "probe"),
            "--results", str(tmp_path / "r.jsonl"), "data.name=image_folder", f"data.root={folder}",
            "data.image_size=28", "data.in_chans=1", "train.device=cpu", "train.progress_bar=false", *PROBE]  # fmt: skip
    assert main(argv) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["eval"] == "linear" and res["protocol"] == "mae" and res["optimizer"] == "lars"
    assert (res["effective_batch"], res["accum_steps"], res["steps"]) == (8, 2, 6)  # 24 images, 2 epochs
    assert res["lr"] == pytest.approx(0.1 * 8 / 256) and res["n_train"] == 24 and res["n_test"] == 8
    assert json.loads((tmp_path / "probe" / "summary.json").read_text()) == res
    ckpt = load_checkpoint(tmp_path / "probe" / LAST)
    assert ckpt["kind"] == "linear_probe" and "head.norm.running_mean" in ckpt["model"]
    assert main(argv[:5] + argv[7:]) == 2  # the MAE protocol needs --out


def test_mae_linear_probe_resumes_exactly(folder: Path, tmp_path: Path) -> None:
    cfg = _cfg(folder, *PROBE, "eval.linear_epochs=3")
    full = run_linear_probe(cfg, "random:mae_debug", tmp_path / "a", progress=False)
    cut = run_linear_probe(cfg, "random:mae_debug", tmp_path / "b", progress=False, stop_at_step=4)
    assert cut["interrupted"] == -1 and cut["step"] == 4
    resumed = run_linear_probe(cfg, "random:mae_debug", tmp_path / "b", resume=True, progress=False)
    assert resumed["steps"] == full["steps"] == 9 and resumed["top1"] == full["top1"]
    a, b = (load_checkpoint(tmp_path / d / LAST)["model"] for d in ("a", "b"))
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert not torch.equal(a["head.linear.weight"], torch.zeros_like(a["head.linear.weight"]))


@pytest.mark.slow
def test_finetune_on_full_resolution_files_resumes_exactly(folder: Path, tmp_path: Path) -> None:
    cfg = _cfg(folder, "eval.ft_epochs=2", "eval.ft_batch_size=8", "eval.ft_warmup_epochs=1")
    full = run_finetune(cfg, "random:mae_debug", tmp_path / "a", progress=False)
    run_finetune(cfg, "random:mae_debug", tmp_path / "b", progress=False, stop_at_step=2)
    resumed = run_finetune(cfg, "random:mae_debug", tmp_path / "b", resume=True, progress=False)
    assert resumed["steps"] == full["steps"] == 6
    a, b = (load_checkpoint(tmp_path / d / LAST)["model"] for d in ("a", "b"))
    assert all(torch.equal(a[k], b[k]) for k in a)
