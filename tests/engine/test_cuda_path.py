"""The CUDA path of the training loop: no host syncs between log steps, and resumes across devices.

Every test here needs a GPU (``benchmarks/gpu_check.py`` runs them there, by the ``cuda`` in
their names); on a CPU-only machine they are skipped.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from semmae import config as config_lib
from semmae.engine.loop import TrainLoop
from semmae.models import build_mae
from semmae.models.checkpoint import rng_state, set_rng_state
from semmae.train.pretrain import run_pretrain

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

TOY = [
    "data.name=toy_parts", "data.image_size=28", "data.in_chans=1", "data.toy_size=64", "data.mean=[0.27]",
    "data.std=[0.18]", "model.name=mae_debug", "train.progress_bar=false", "train.knn_every_epochs=-1",
    "train.image_every_epochs=0", "train.batch_size=8", "train.warmup_epochs=0",
]  # fmt: skip


def _oracle_parts(tmp_path: Path) -> Path:
    from semmae.parts.export import maps_from_masks

    out = tmp_path / "oracle_train.npy"
    maps_from_masks(config_lib.load(None, TOY), "train", build_mae("mae_debug", img_size=28).grid[0], out)
    return out


@pytest.mark.parametrize("masking", ["random", "block", "semantic"])
def test_cuda_steps_between_log_steps_make_no_host_sync(tmp_path: Path, monkeypatch, masking: str) -> None:
    """From the end of step 1 to the log step: batches, masks, forward, backward, AdamW, all queued."""
    checked: list[int] = []
    step, log_window, checkpoint = TrainLoop._optimizer_step, TrainLoop._log_window, TrainLoop.checkpoint

    def step_then_check(self: TrainLoop) -> None:
        step(self)
        checked.append(self.step)
        if self.step == 1:  # first-use set-up (caches, kernels' lazy init) is allowed to sync
            torch.cuda.set_sync_debug_mode("error")

    def unchecked(original):  # noqa: ANN001, ANN202 - the log step reads the loss by design
        def run(self: TrainLoop, *args, **kwargs):  # noqa: ANN202
            torch.cuda.set_sync_debug_mode(0)
            return original(self, *args, **kwargs)

        return run

    monkeypatch.setattr(TrainLoop, "_optimizer_step", step_then_check)
    monkeypatch.setattr(TrainLoop, "_log_window", unchecked(log_window))
    monkeypatch.setattr(TrainLoop, "checkpoint", unchecked(checkpoint))
    overrides = [*TOY, "train.device=cuda", "train.precision=bf16", f"masking.name={masking}",
                 "train.max_steps=5", "train.log_every=5"]  # fmt: skip
    if masking == "semantic":
        overrides.append(f"masking.parts={_oracle_parts(tmp_path)}")
    try:
        run_pretrain(config_lib.load(None, overrides), tmp_path / "run")
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert checked == [1, 2, 3, 4, 5]


def test_a_cpu_checkpoint_resumes_on_cuda_with_the_fused_kernel(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run_pretrain(config_lib.load(None, [*TOY, "train.device=cpu", "train.max_steps=2"]), run)
    summary = run_pretrain(
        config_lib.load(run / "config.yaml", ["train.device=cuda", "train.max_steps=4"]), run, resume=True
    )
    assert summary["step"] == 4 and summary["complete"] and summary["final_loss"] is not None


def test_cuda_rng_state_round_trips_on_this_device_only() -> None:
    torch.cuda.init()
    state = rng_state()
    assert set(state) >= {"torch", "cuda_device"} and "cuda" not in state
    first = torch.rand(4, device="cuda")
    set_rng_state(state)
    assert torch.equal(torch.rand(4, device="cuda"), first)
    older = {**state, "cuda": [state.pop("cuda_device")] * torch.cuda.device_count()}  # the old layout
    set_rng_state(older)
    assert torch.equal(torch.rand(4, device="cuda"), first)
