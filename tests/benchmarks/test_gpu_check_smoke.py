"""``benchmarks/gpu_check.py --smoke``: the GPU check's code paths run on the CPU and fill every field."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]
RUNS = ("random_eager", "semantic_eager", "random_compiled", "semantic_compiled")


def _positive(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_smoke_fills_every_field(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--smoke", "--out", str(out)],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["smoke"] is True and result["gpu"].startswith("CPU") and result["device"] == "cpu"
    assert result["complete"] is True and isinstance(result["packages"]["timm"], str)
    tests = result["cuda_tests"]
    assert "--continue-on-collection-errors" in tests["command"]
    assert not tests["timed_out"] and tests["exit_code"] == 0 and tests["failed"] == 0
    assert tests["passed"] + tests["skipped"] >= 1  # the CUDA-named tests were collected (skipped on CPU)
    assert _positive(result["matmul"]["peak_tflop_s"])
    pre = result["pretrain"]
    assert _positive(pre["gflop_per_image"])
    assert pre["toy_sets_drawn"] == 1  # the four runs and the oracle part maps share one drawing
    for key in RUNS:
        run = pre[key]
        assert run["batch"] == 8 and run["steps_timed"] >= 1, key
        assert _positive(run["img_per_s"]) and _positive(run["peak_memory_gib"]), key
        # MFU is img/s x FLOPs per image / the matmul peak, within the rounding of the recorded
        # GFLOP/image (2 decimals) and TFLOP/s (3) and of the MFU itself (4 significant digits).
        # (Not below 1 here: a 256³ matmul on a CPU is no ceiling for a compiled tiny model.)
        gflop, peak = pre["gflop_per_image"], result["matmul"]["peak_tflop_s"]
        lo = run["img_per_s"] * max(gflop - 0.005, 0.0) / ((peak + 0.0005) * 1e3)
        hi = run["img_per_s"] * (gflop + 0.005) / (max(peak - 0.0005, 1e-9) * 1e3)
        assert _positive(run["mfu"]) and lo * (1 - 1e-3) <= run["mfu"] <= hi * (1 + 1e-3), (key, lo, hi)
    ft = result["finetune"]
    assert ft["batch"] == 8 and _positive(ft["img_per_s"]) and _positive(ft["peak_memory_gib"])
    loader = result["loader"]
    assert loader["streamed"] is True and _positive(loader["loader_img_per_s"])
    assert _positive(loader["decode_jpeg_cpu_img_per_s"])
    assert _positive(loader["device_decode_loader_img_per_s"])  # data.decode=device, on the CPU here
    targets = result["targets"]
    assert targets["pretrain_img_per_s"]["min"] == 4000 and targets["pretrain_img_per_s"]["pass"] is False
    ratio = targets["semantic_over_random_time"]
    assert ratio["max"] == 1.02 and _positive(ratio["value"]) and ratio["pass"] == (ratio["value"] <= 1.02)
    assert isinstance(targets["cpu_jpeg_loader_keeps_up"]["pass"], bool)
    assert isinstance(targets["device_decode_loader_keeps_up"]["pass"], bool)
    assert result["provenance"]["torch"] == result["torch"]


def test_without_a_gpu_the_full_check_refuses_in_one_line() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py")],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("gpu_check: error: no CUDA GPU") and "--smoke" in proc.stderr


def test_a_failing_section_is_recorded_and_the_others_still_run(monkeypatch) -> None:
    import torch

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import gpu_check

    def boom(message: str):  # noqa: ANN202
        def fail(*args: object) -> dict:
            raise RuntimeError(message)

        return fail

    monkeypatch.setattr(torch._dynamo.config, "disable", torch._dynamo.config.disable)  # the smoke sets it
    monkeypatch.setattr(gpu_check.runtime, "configure_backends", lambda device: None)
    monkeypatch.setattr(gpu_check, "cuda_tests", boom("No module named pytest"))
    monkeypatch.setattr(gpu_check, "pretrain_section", lambda *a: {"random_eager": {"img_per_s": 5.0}})
    monkeypatch.setattr(gpu_check, "finetune_section", boom("CUDA error: an illegal memory access"))
    monkeypatch.setattr(gpu_check, "loader_section", lambda *a: {"loader_img_per_s": 7.0})
    saved: list[dict] = []
    result = gpu_check.run_check(
        gpu_check.SMOKE, torch.device("cpu"), True, lambda r: saved.append(json.loads(json.dumps(r)))
    )
    assert result["cuda_tests"]["error"] == "RuntimeError: No module named pytest"
    assert "raise RuntimeError(message)" in result["cuda_tests"]["traceback_tail"]
    assert result["finetune"]["error"] == "RuntimeError: CUDA error: an illegal memory access"
    assert (
        result["pretrain"]["random_eager"]["img_per_s"] == 5.0 and result["loader"]["loader_img_per_s"] == 7.0
    )
    assert result["targets"]["cpu_jpeg_loader_keeps_up"]["pass"] is True  # 7 img/s keeps up with 5
    sections = [
        [k for k in ("cuda_tests", "matmul", "pretrain", "finetune", "loader") if k in r] for r in saved
    ]
    assert sections[-1] == ["cuda_tests", "matmul", "pretrain", "finetune", "loader"]
    assert len(saved) == 6 and sections[1] == ["cuda_tests"]  # written again after every section
