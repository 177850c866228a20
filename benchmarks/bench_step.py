"""Training-step throughput of the fmnist_tiny MAE against this machine's matmul peak.

Prints one JSON object: img/s in fp32 and bf16 (autocast), FLOPs per step counted with
``torch.utils.flop_counter``, the measured fp32/bf16 matmul peak (GFLOP/s) and the utilisation
(achieved / peak). Medians over repetitions; all measured in one process so ratios are fair.

    python benchmarks/bench_step.py [--batch 128] [--steps 12] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from semmae import runtime
from semmae.engine.optim import build_adamw
from semmae.masking import build
from semmae.models import build_mae


def matmul_peak(dtype: torch.dtype, device: torch.device, n: int = 1024, reps: int = 10) -> float:
    """Median GFLOP/s of an n×n×n matmul."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(reps):
        _sync(device)
        t = time.perf_counter()
        a @ b
        _sync(device)
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times) / 1e9


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_flops(model: torch.nn.Module, x: torch.Tensor, mask) -> int:  # noqa: ANN001
    """FLOPs of one forward + backward."""
    with FlopCounterMode(display=False) as counter:
        model(x, mask).loss.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def time_steps(model, opt, x, masking, device, precision: str, steps: int) -> list[float]:  # noqa: ANN001
    """Per-step seconds of mask + forward + backward + AdamW step."""
    times = []
    for i in range(steps + 3):
        _sync(device)
        t = time.perf_counter()
        mask = masking(
            x.shape[0], model.num_patches, generator=torch.Generator().manual_seed(i), device=device
        )
        with runtime.autocast(device, precision):
            loss = model(x, mask).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        _sync(device)
        if i >= 3:  # warm-up steps excluded
            times.append(time.perf_counter() - t)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    device = runtime.resolve_device(args.device)
    torch.manual_seed(0)
    model = build_mae("mae_fmnist_tiny", norm_pix_loss=True).to(device)
    opt = build_adamw(model, 1e-4, 0.05)
    masking = build("random", ratio=0.75)
    x = torch.randn(args.batch, 1, 28, 28, device=device)
    flops = step_flops(
        model,
        x,
        masking(args.batch, model.num_patches, generator=torch.Generator().manual_seed(0), device=device),
    )
    result: dict = {
        "model": "mae_fmnist_tiny", "batch": args.batch, "device": str(device), "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
        "gflop_per_step": round(flops / 1e9, 3), "cpu_native_bf16": runtime.cpu_has_native_bf16(),
    }  # fmt: skip
    for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        peak = matmul_peak(dtype, device)
        t = statistics.median(time_steps(model, opt, x, masking, device, precision, args.steps))
        achieved = flops / t / 1e9
        result[precision] = {
            "img_per_s": round(args.batch / t, 1), "step_ms": round(1000 * t, 1),
            "achieved_gflop_s": round(achieved, 1), "matmul_peak_gflop_s": round(peak, 1),
            "utilisation": round(achieved / peak, 3),
        }  # fmt: skip
    result["bf16_speedup"] = round(result["bf16"]["img_per_s"] / result["fp32"]["img_per_s"], 3)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
