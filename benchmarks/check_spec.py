"""What one GPU check measures (:class:`Spec`: the full check, or the CPU smoke) and its time budgets."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Spec:
    """What one run of the check measures (the full GPU check, or the CPU smoke)."""

    smoke: bool
    model: str
    image_size: int
    precision: str
    batch: int
    window: int  # steps between the loop's log steps; the first window is warm-up
    windows: int  # timed windows
    matmul_n: int
    jpegs: int
    jpeg_size: tuple[int, int]  # (W, H) of the loader's files
    loader_batch: int
    ft_steps: int
    test_paths: tuple[str, ...]  # files, or folders whose test files that mention "cuda" are run
    budgets: dict[str, float]  # seconds per section
    total_s: float  # the whole check; a section gets less than its budget when time runs short


FULL = Spec(
    smoke=False, model="mae_vit_base_patch16", image_size=224, precision="bf16", batch=256, window=5, windows=2, matmul_n=8192,
    jpegs=768, jpeg_size=(500, 375), loader_batch=32, ft_steps=10, test_paths=("tests",),
    budgets={"cuda_tests": 90, "matmul": 15, "pretrain": 210, "finetune": 40, "loader": 45}, total_s=460,
)  # fmt: skip
SMOKE = Spec(
    smoke=True, model="mae_debug", image_size=28, precision="fp32", batch=8, window=1, windows=1, matmul_n=256,
    jpegs=24, jpeg_size=(40, 30), loader_batch=4, ft_steps=2, test_paths=("tests/models/test_speed_path.py",),
    # No budget cuts in the smoke: it must reach every code path even on a loaded machine.
    budgets={"cuda_tests": 900, "matmul": 900, "pretrain": 900, "finetune": 900, "loader": 900}, total_s=4500,
)  # fmt: skip


class Section:
    """A section's time budget: ``left()`` seconds remain, ``over`` once spent."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.t0 = seconds, time.perf_counter()

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.t0)

    @property
    def over(self) -> bool:
        return self.left() <= 0


def usable_cores() -> int:
    """The CPU cores this process may run on (a container's share, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def failure(exc: BaseException) -> dict[str, Any]:
    """What a failed section or run records: the error, and the last lines of its traceback."""
    import traceback

    trace = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return {"error": f"{type(exc).__name__}: {exc}"[:2000], "traceback_tail": tail(trace, 12)}


def tail(text: str, lines: int = 15) -> str:
    """The last ``lines`` lines of ``text`` (a command's output, a traceback), for the JSON."""
    return "\n".join(text.strip().splitlines()[-lines:])
