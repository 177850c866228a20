"""The paper recipes end to end on full-size JPEGs, scaled down by overrides only (slow).

``SEMMAE_PAPER_FOLDER=DIR`` runs the checks on an existing ImageNet-style folder (e.g. the one
``benchmarks/bench_data.py --root DIR --keep`` writes); otherwise a folder of 500x375 / 375x500
JPEGs is written with the benchmark's own writer. Every command goes through the CLI:

1. ``pretrain --config configs/vit_base_in1k.yaml`` + a tiny model runs;
2. the same run SIGKILLed after a mid-run checkpoint and ``--resume``d ends bit-identical;
3. stage 1 (``parts train`` on that encoder, ``parts export``) then SemMAE pretraining with
   ``configs/vit_base_in1k_semmae.yaml`` and the exported maps runs;
4. ``eval linear`` (MAE protocol, from the recipe) and ``eval finetune`` run with the recipe's
   evaluation section, epochs/batch scaled down.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from semmae.models.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow
ROOT = Path(__file__).parents[2]
LIMIT = 48
TINY = [
    f"data.limit={LIMIT}", "data.num_workers=2", "model.name=mae_vit_tiny_patch16", "model.embed_dim=64",
    "model.depth=2", "model.num_heads=2", "model.decoder_embed_dim=32", "model.decoder_depth=1",
    "model.decoder_num_heads=2", "train.epochs=2", "train.warmup_epochs=0.5", "train.batch_size=8",
    "train.accum_steps=1", "train.precision=fp32", "train.device=cpu", "train.log_every=1",
    "train.ckpt_every_steps=1", "train.knn_every_epochs=-1", "train.keep_every_epochs=0",
    "train.image_every_epochs=0", "train.progress_bar=false",
]  # fmt: skip


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    given = os.environ.get("SEMMAE_PAPER_FOLDER")
    if given:
        return Path(given)
    sys.path.insert(0, str(ROOT / "benchmarks"))  # importable by name: its writer pool pickles it
    try:
        bench = importlib.import_module("bench_data")
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    root = tmp_path_factory.mktemp("jpegs")
    bench.write_folder(root, 60, ((500, 375), (375, 500)), workers=2)
    return root


def _semmae(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "semmae", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _pretrain(out: Path, folder: Path, recipe: str = "vit_base_in1k.yaml", *extra: str) -> list[str]:
    return [
        "pretrain",
        "--config",
        f"configs/{recipe}",
        "--out",
        str(out),
        f"data.root={folder}",
        *TINY,
        *extra,
    ]


def _kill_after_step(argv: list[str], out: Path, step: int) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "semmae", *argv], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 900
    while time.time() < deadline and proc.poll() is None:
        rows = [json.loads(x) for x in metrics.read_text().splitlines()] if metrics.is_file() else []
        if any(r.get("step", 0) >= step for r in rows):
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_paper_recipes_on_full_size_jpegs(folder: Path, tmp_path: Path) -> None:
    full, killed = tmp_path / "mae", tmp_path / "mae_killed"
    _semmae(*_pretrain(full, folder))
    ckpt = load_checkpoint(full / "checkpoints" / "last.pt")
    assert ckpt["step"] == 2 * (LIMIT // 8) and ckpt["config"]["data"]["crop_pct"] == 0.875

    _kill_after_step(_pretrain(killed, folder), killed, step=5)
    assert load_checkpoint(killed / "checkpoints" / "last.pt")["step"] < ckpt["step"]
    _semmae(*_pretrain(killed, folder), "--resume")
    resumed = load_checkpoint(killed / "checkpoints" / "last.pt")
    assert resumed["step"] == ckpt["step"]
    assert all(torch.equal(ckpt["model"][k], resumed["model"][k]) for k in ckpt["model"])

    parts, maps = tmp_path / "parts", tmp_path / "maps_train.npy"
    _semmae("parts", "train", "--config", "configs/parts_vitb16_in1k.yaml", "--out", str(parts),
            f"parts.backbone={full / 'checkpoints' / 'last.pt'}", f"data.root={folder}", f"data.limit={LIMIT}",
            "data.num_workers=0", "parts.epochs=1", "parts.batch_size=8", "parts.mlp_hidden=32",
            "parts.decoder_channels=16", "parts.decoder_min_channels=8", "parts.style_dim=16",
            "parts.eval_limit=16", "parts.num_vis=2", "train.precision=fp32", "train.device=cpu",
            "train.progress_bar=false")  # fmt: skip
    _semmae("parts", "export", "--run", str(parts), "--split", "train", "--out", str(maps), "--device", "cpu")
    assert json.loads(maps.with_suffix(".json").read_text())["view"] == "whole"
    semmae = tmp_path / "semmae"
    _semmae(*_pretrain(semmae, folder, "vit_base_in1k_semmae.yaml", f"masking.parts={maps}"))
    assert load_checkpoint(semmae / "checkpoints" / "last.pt")["config"]["masking"]["name"] == "semantic"

    encoder = str(full / "checkpoints" / "last.pt")
    evaluation = ["--config", "configs/vit_base_in1k.yaml", f"data.root={folder}", f"data.limit={LIMIT}",
                  "data.num_workers=2", "train.device=cpu", "train.precision=fp32", "train.progress_bar=false"]  # fmt: skip
    probe = _semmae("eval", "linear", "--checkpoint", encoder, "--out", str(tmp_path / "probe"), *evaluation,
                    "eval.linear_batch_size=16", "eval.batch_size=8", "eval.linear_epochs=2",
                    "eval.linear_warmup_epochs=1")  # fmt: skip
    res = json.loads(probe.stdout.strip().splitlines()[-1])
    assert res["protocol"] == "mae" and res["accum_steps"] == 2 and 0 <= res["top1"] <= 100
    ft = _semmae("eval", "finetune", "--checkpoint", encoder, "--out", str(tmp_path / "ft"), *evaluation,
                 "eval.ft_epochs=1", "eval.ft_batch_size=8", "eval.ft_warmup_epochs=0.5")  # fmt: skip
    res = json.loads(ft.stdout.strip().splitlines()[-1])
    assert res["eval"] == "finetune" and res["layer_decay"] == 0.65 and 0 <= res["top1"] <= 100
