"""The one training loop on a toy task: lr per step, accumulation, log rows, stop + exact resume."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import nn

from semmae.engine.logging import MetricsLogger, read_metrics
from semmae.engine.loop import Task, TrainLoop
from semmae.engine.schedule import make_plan
from semmae.errors import CheckpointError, ConfigError
from semmae.models.checkpoint import load_checkpoint


class Regression(Task):
    """Least squares on batches that are a pure function of (epoch, index)."""

    kind = "toy"

    def __init__(self, micro: int = 4) -> None:
        torch.manual_seed(0)
        self.model = nn.Linear(3, 1)
        self.arch = {"in": 3, "out": 1}
        self.micro, self.lrs, self.ends = micro, [], []
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1)

    def batches(self, epoch: int, start: int):  # noqa: ANN201
        k = self.micro // 4  # a micro-batch is k chunks of 4 samples; 8 chunks per epoch
        for i in range(start, 8 // k):
            gens = [torch.Generator().manual_seed(1000 * epoch + c) for c in range(i * k, (i + 1) * k)]
            x = torch.cat([torch.randn(4, 3, generator=g) for g in gens])
            yield x, x @ torch.tensor([[1.0], [-2.0], [0.5]])

    def step(self, net: nn.Module, batch: Any, step: int) -> tuple[torch.Tensor, int]:
        self.lrs.append((step, self.optimizer.param_groups[0]["lr"]))
        x, y = batch
        return ((net(x) - y) ** 2).mean(), x.shape[0]

    def log_metrics(self, step: int) -> dict[str, Any]:
        return {"bias": float(self.model.bias.detach())}

    def on_epoch_end(self, epoch: int, step: int, final: bool) -> dict[str, Any]:
        self.ends.append((epoch, step, final))
        return {"end": epoch}


def _loop(task: Regression, run_dir: Path, accum: int = 1, **train: Any) -> TrainLoop:
    per_epoch = 32 // (task.micro * accum)
    plan = make_plan(steps_per_epoch=per_epoch, epochs=2, max_steps=None, warmup_epochs=0.5, peak_lr=0.1,
                     min_lr=0.01, effective_batch=task.micro * accum, accum=accum)  # fmt: skip
    run_dir.mkdir(exist_ok=True)
    settings = SimpleNamespace(
        log_every=3, ckpt_every_steps=0, progress_bar=False, **{"precision": "fp32", **train}
    )
    logger = MetricsLogger(run_dir, tensorboard=False)
    return TrainLoop(task, plan, task.optimizer, run_dir, logger, config={}, train=settings,
                     device=torch.device("cpu"), desc="toy")  # fmt: skip


def test_lr_per_step_log_rows_and_epoch_hooks(tmp_path: Path) -> None:
    task = Regression()
    loop = _loop(task, tmp_path)
    result = loop.run()
    assert (result.step, result.epoch, result.interrupted) == (16, 2, None)
    assert [lr for _, lr in task.lrs] == [loop.plan.lr(s) for s, _ in task.lrs]
    assert task.lrs[0][1] == pytest.approx(0.1 / 4) and task.lrs[-1][1] > 0.01  # warm-up 4 steps, cosine
    rows = read_metrics(tmp_path / "metrics.jsonl")
    steps = [r["step"] for r in rows if "loss" in r]
    assert steps == [3, 6, 9, 12, 15, 16]
    assert {"epoch", "loss", "lr", "img_per_s", "bias"} <= set(rows[0])
    assert task.ends == [(0, 8, False), (1, 16, True)]
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert ckpt["kind"] == "toy" and ckpt["step"] == 16 and ckpt["epoch"] == 2 and ckpt["plan"]["accum"] == 1
    assert set(ckpt["provenance"]) == {"semmae", "torch"}


@pytest.mark.parametrize(("precision", "fused"), [("bf16", False), ("fp32", True)])
def test_the_loop_chooses_the_attention_for_its_precision(
    tmp_path: Path, precision: str, fused: bool
) -> None:
    task = Regression()
    task.model.fused_attn = True  # as timm's attention modules carry it
    _loop(task, tmp_path, precision=precision)
    assert task.model.fused_attn is fused  # on a CPU in bf16: the unfused form


def test_accumulation_matches_one_big_batch(tmp_path: Path) -> None:
    small, big = Regression(micro=4), Regression(micro=8)
    _loop(small, tmp_path / "a", accum=2).run()
    _loop(big, tmp_path / "b").run()
    for p, q in zip(small.model.parameters(), big.model.parameters(), strict=True):
        torch.testing.assert_close(p, q)


def test_stop_then_resume_is_bit_identical_and_a_done_run_stays_done(tmp_path: Path) -> None:
    whole = Regression()
    _loop(whole, tmp_path / "whole").run()
    cut = Regression()
    assert _loop(cut, tmp_path / "cut").run(stop_at_step=5).interrupted == -1
    again = Regression()  # a fresh process: new model and optimiser, state from the checkpoint
    loop = _loop(again, tmp_path / "cut")
    loop.resume()
    assert loop.run().step == 16
    for p, q in zip(whole.model.parameters(), again.model.parameters(), strict=True):
        assert torch.equal(p, q)
    done = _loop(Regression(), tmp_path / "cut")
    done.resume()
    assert done.run().already_complete


def test_resume_refuses_another_kind_or_arch(tmp_path: Path) -> None:
    _loop(Regression(), tmp_path).run(stop_at_step=2)
    other = Regression()
    other.arch = {"in": 3, "out": 2}
    with pytest.raises(CheckpointError, match="config builds"):
        _loop(other, tmp_path).resume()
    other = Regression()
    other.kind = "mae"
    with pytest.raises(CheckpointError, match="'toy' checkpoint"):
        _loop(other, tmp_path).resume()


def test_plan_with_nothing_to_train_is_refused() -> None:
    with pytest.raises(ConfigError, match="nothing to train"):
        make_plan(steps_per_epoch=4, epochs=0, max_steps=None, warmup_epochs=0, peak_lr=1, min_lr=0,
                  effective_batch=1)  # fmt: skip
    assert make_plan(steps_per_epoch=4, epochs=3, max_steps=5, warmup_epochs=0.5, peak_lr=1, min_lr=0,
                     effective_batch=1).total_steps == 5  # fmt: skip


def test_run_infrastructure_imports_nothing_above_it() -> None:
    """engine/ (run infrastructure) sits below eval/, train/, pipeline/ and cli/; parts/ below train/."""
    import ast

    src = Path(__file__).parents[2] / "src" / "semmae"
    above = {"engine": ("eval", "train", "pipeline", "cli"), "parts": ("train", "pipeline", "cli")}
    for package, forbidden in above.items():
        for path in (src / package).glob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
                names += [a.name for a in node.names] if isinstance(node, ast.Import) else []
                for name in names:
                    assert not name.startswith(tuple(f"semmae.{f}" for f in forbidden)), (
                        f"{path.name}: {name}"
                    )


def test_resume_keeps_this_machines_optimiser_kernel(tmp_path: Path) -> None:
    """A checkpoint written with fused AdamW (a GPU run) resumes with the kernel built here."""
    task = Regression()
    _loop(task, tmp_path).run(stop_at_step=2)
    last = tmp_path / "checkpoints" / "last.pt"
    ckpt = torch.load(last, weights_only=True)
    for group in ckpt["optimizer"]["param_groups"]:
        group["fused"], group["foreach"] = True, False
    torch.save(ckpt, last)
    resumed = Regression()
    loop = _loop(resumed, tmp_path)
    built = [(g.get("fused"), g.get("foreach")) for g in resumed.optimizer.param_groups]
    loop.resume()
    assert [(g.get("fused"), g.get("foreach")) for g in resumed.optimizer.param_groups] == built
    assert all(fused is not True for fused, _ in built)


def test_metrics_are_kept_where_tensorboard_is_not_installed(tmp_path: Path, monkeypatch, caplog) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # makes the import fail
    with caplog.at_level("WARNING"), MetricsLogger(tmp_path) as logger:
        logger.log(3, loss=0.5)
    assert "TensorBoard is not installed" in caplog.text and not (tmp_path / "tb").exists()
    assert read_metrics(tmp_path / "metrics.jsonl") == [{"step": 3, "loss": 0.5}]


def test_one_gpu_named_for_every_process_of_a_node_is_refused(monkeypatch) -> None:
    from semmae import runtime

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="under torchrun use train.device=cuda"):
        runtime.resolve_device("cuda:0")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    current: list[torch.device] = []
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    assert runtime.resolve_device("cuda:1") == torch.device("cuda", 1)  # one process: as given
    assert current == [torch.device("cuda", 1)]  # and current: its generator is the one saved


def test_a_floor_above_the_peak_lr_is_refused_by_its_setting() -> None:
    kwargs = dict(steps_per_epoch=4, epochs=1, max_steps=None, warmup_epochs=0, effective_batch=1)
    with pytest.raises(
        ConfigError, match=r"eval.ft_min_lr=0.2 is above the peak learning rate 0.1 \(from A\)"
    ):
        make_plan(**kwargs, peak_lr=0.1, min_lr=0.2, lr_settings=("eval.ft_min_lr", "from A"))
    assert make_plan(**kwargs, peak_lr=0.1, min_lr=0.1).lr(3) == pytest.approx(0.1)  # flat is allowed
