"""``benchmarks/bench_step.py``: its verdicts, its bf16 statement, and (slow) one whole run."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_step  # noqa: E402


def test_bf16_is_stated_not_timed_on_a_cpu_without_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench_step.runtime, "cpu_has_native_bf16", lambda: False)
    timed, note = bench_step.bf16_wanted("auto", torch.device("cpu"))
    assert not timed and "cpu_native_bf16 is false" in note and "cannot be measured here" in note
    timed, note = bench_step.bf16_wanted("on", torch.device("cpu"))
    assert timed and "cannot be measured here" in note
    monkeypatch.setattr(bench_step.runtime, "cpu_has_native_bf16", lambda: True)
    assert bench_step.bf16_wanted("auto", torch.device("cpu")) == (True, None)


def test_targets_pass_and_fail_on_the_thresholds() -> None:
    result = {
        "fp32": {"utilisation": 0.65},
        "cpu_native_bf16": False,
        "bf16_speedup": 2.0,
        "engine_over_step": 0.94,
    }
    t = bench_step.targets(result)
    assert t["fp32_utilisation"]["pass"] is True
    assert t["bf16_speedup"] == {
        "min": 1.4,
        "value": None,
        "pass": None,
    }  # not measurable without native bf16
    assert t["engine_over_step"]["pass"] is False
    result["cpu_native_bf16"] = True
    assert bench_step.targets(result)["bf16_speedup"]["pass"] is True


@pytest.mark.slow
def test_one_whole_run_reports_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_step.py"), "--batch", "32", "--steps", "2",
           "--engine-steps", "5", "--engine-runs", "2", "--bf16", "off", "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["fp32"]["img_per_s"] > 0 and 0 < result["fp32"]["utilisation_cpu_time"] < 1.5
    engine = result["engine"]
    assert engine["steps_timed"] >= 5 and engine["img_per_s"] > 0 and 0 <= engine["epoch_overhead"] < 1
    assert (
        result["engine_over_step"] > 0
        and result["engine_over_step_with_epoch_end"] <= result["engine_over_step"]
    )
    assert set(result["targets"]) == {"fp32_utilisation", "bf16_speedup", "engine_over_step"}
    assert result["engine_runs"] == 2 and len(result["engine_over_step_each"]) == 2
    assert result["fp32"]["rounds"] == 5 and result["fp32"]["page_faults_per_step"] >= 0


def test_each_engine_run_is_measured_against_its_two_neighbours(monkeypatch: pytest.MonkeyPatch) -> None:
    # Bare steps of 1.0, 0.5, 0.25 s (the machine speeding up); every engine run delivers 200 img/s.
    bare = iter([(1.0, 1.0), (0.5, 0.5), (0.25, 0.25)])
    engine = {"img_per_s": 200.0, "img_per_cpu_s": 200.0, "epoch_overhead": 0.1}
    monkeypatch.setattr(bench_step, "engine_rates", lambda *a: dict(engine))
    args = argparse.Namespace(batch=100, engine_steps=5, engine_runs=2)
    out = bench_step.engine_figures(args, torch.device("cpu"), lambda: next(bare))
    # Neighbours' mean rates: 2·100 / (1.0 + 0.5) = 133.3 img/s, then 2·100 / (0.5 + 0.25) = 266.7.
    assert out["engine_over_step_each"] == [pytest.approx(1.5, abs=1e-3), pytest.approx(0.75, abs=1e-3)]
    assert out["engine_over_step"] == pytest.approx(0.75, abs=1e-3)  # the lower of the middle two
    assert out["engine_over_step_with_epoch_end"] == pytest.approx(0.75 * 0.9, abs=1e-3)
    assert out["engine"]["bare_step_after_over_before"] == 2.0  # the second run's neighbours


def test_the_step_profile_splits_the_time_and_finds_the_matmuls() -> None:
    torch.manual_seed(0)
    model = bench_step.build_mae("mae_debug")
    opt = bench_step.build_adamw(model, 1e-4, 0.05)
    x = torch.randn(8, 1, 28, 28)
    prof = bench_step.step_profile(
        model, opt, x, bench_step.build("random", ratio=0.75), torch.device("cpu"), 10.0, steps=1
    )
    shares = prof["time_shares"]
    assert {"matmul", "attention", "gelu", "other"} <= set(shares)
    assert sum(shares.values()) == pytest.approx(1.0, abs=0.01)
    # The linears (and the conv patch embedding) are most FLOPs; attention's count too, outside them.
    assert 0.5 < prof["matmul_flop_share"] < 1.0
    assert prof["matmul_gflop_s"] > 0
    assert prof["utilisation_if_only_matmuls"] >= prof["matmul_over_peak"]


def test_the_step_flops_count_cpu_attention_by_its_formula() -> None:
    # mae_debug: encoder width 32 over 1 + 12 visible tokens (2 blocks), decoder width 32 over 50 (1 block).
    torch.manual_seed(0)
    model, batch = bench_step.build_mae("mae_debug"), 4
    x = torch.randn(batch, 1, 28, 28)
    mask = bench_step.build("random", ratio=0.75)(batch, model.num_patches, generator=torch.Generator())
    with torch.utils.flop_counter.FlopCounterMode(display=False) as plain:
        model(x, mask).loss.backward()
    # Attention's two matmuls forward are 4·B·L²·D FLOPs; its backward recomputes one and adds four.
    attention_fwd = 4 * batch * 32 * (2 * 13**2 + 1 * 50**2)
    assert bench_step.step_flops(model, x, mask) - plain.get_total_flops() == attention_fwd * 7 // 2


def test_the_setting_names_the_cpu_instruction_set() -> None:
    got = bench_step.describe(bench_step.parse_args(["--batch", "8"]), torch.device("cpu"), 2_000_000_000)
    assert got["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert (got["batch"], got["gflop_per_step"], got["device"]) == (8, 2.0, "cpu")


@pytest.mark.parametrize(("isa", "shown"), [("AVX512", " AVX512"), ("DEFAULT", "")])
def test_provenance_names_the_isa_where_torch_has_one(
    monkeypatch: pytest.MonkeyPatch, isa: str, shown: str
) -> None:
    from semmae import runtime

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: isa)
    expected = f"CPU ({runtime.platform.machine()}{shown}, {torch.get_num_threads()} threads)"
    assert runtime.describe_device() == expected
