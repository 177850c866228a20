"""What the benchmarks measure with: the matmul peak, a step's FLOPs, timed steps, the loop's clock.

Shared by ``bench_step.py`` (the CPU step, its profile and the engine beside it) and
``gpu_check.py`` (the same figures on a GPU), so both count FLOPs and time steps alike.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from semmae import runtime
from semmae.engine.logging import MetricsLogger


def matmul_peak(
    dtype: torch.dtype, device: torch.device, n: int = 2048, reps: int = 5
) -> tuple[float, float]:
    """Median GFLOP/s of an n×n×n matmul, in wall time and in this process's CPU time.

    On this project's CPU the sizes 512–3072 give medians within the machine's run-to-run spread
    of each other; 2048³ runs long enough (0.1–0.2 s) to be timed well. On a GPU pass a size that
    fills it (``gpu_check`` does).
    """
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    times, cpu = [], []
    for _ in range(reps):
        sync(device)
        t, c = time.perf_counter(), time.process_time()
        a @ b
        sync(device)
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return 2 * n**3 / statistics.median(times) / 1e9, 2 * n**3 / statistics.median(cpu) / 1e9


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU), so a clock reads finished work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cpu_sdpa_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:  # noqa: ANN001, ANN003
    return sdpa_flop_count(query, key, value)


def _cpu_sdpa_backward_flops(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:  # noqa: ANN001, ANN003
    return sdpa_backward_flop_count(grad_out, query, key, value)


def flop_counter() -> FlopCounterMode:
    """torch's FLOP counter, which also counts the CPU's fused attention kernel.

    torch counts the CUDA attention kernels (flash, memory-efficient, cuDNN) but not the CPU's
    ``_scaled_dot_product_flash_attention_for_cpu``; the same formulas (the two matmuls of
    attention, five in its backward) are registered for it, so a step's FLOPs do not depend on
    the device that counts them.
    """
    aten = torch.ops.aten
    cpu_attention = {
        aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward_flops,
    }
    return FlopCounterMode(display=False, custom_mapping=cpu_attention)


def step_flops(model: torch.nn.Module, x: torch.Tensor, mask) -> int:  # noqa: ANN001
    """FLOPs of one forward + backward, attention included."""
    with flop_counter() as counter:
        model(x, mask).loss.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def time_steps(
    model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, masking: Callable[..., Any],
    device: torch.device, precision: str, steps: int, warmup: int = 3,
) -> tuple[list[float], float]:  # fmt: skip
    """Per-step wall seconds of mask + forward + backward + AdamW step, and CPU seconds per step."""
    times = []
    for i in range(steps + warmup):
        sync(device)
        t = time.perf_counter()
        if i == warmup:
            cpu0 = time.process_time()
        mask = masking(
            x.shape[0], model.num_patches, generator=torch.Generator().manual_seed(i), device=device
        )
        with runtime.autocast(device, precision):
            loss = model(x, mask).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)
        if i >= warmup:  # warm-up steps excluded
            times.append(time.perf_counter() - t)
    return times, (time.process_time() - cpu0) / steps


@contextlib.contextmanager
def log_clock() -> Iterator[list[tuple[int, float, float]]]:
    """Record (step, wall s, process CPU s) at every ``MetricsLogger.log`` call of the loop.

    Process CPU time is what this process itself consumed: on a machine shared with other work
    it moves far less than wall time, so the CPU-time ratio is the fairer one there.
    """
    marks: list[tuple[int, float, float]] = []
    original = MetricsLogger.log

    def log(self: MetricsLogger, step: int, **metrics: Any) -> None:
        if "img_per_s" in metrics:
            marks.append((step, time.perf_counter(), time.process_time()))
        original(self, step, **metrics)

    MetricsLogger.log = log  # type: ignore[method-assign]
    try:
        yield marks
    finally:
        MetricsLogger.log = original  # type: ignore[method-assign]
