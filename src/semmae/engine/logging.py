"""Metrics out: one JSON object per line in ``metrics.jsonl`` and the same scalars in TensorBoard."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from types import TracebackType
from typing import Any

from semmae.runtime import is_main

log = logging.getLogger(__name__)


def _clean(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN; keep it readable
    return value


class MetricsLogger:
    """Append-only metrics for one run (rank 0 writes; other ranks are silent).

    Args:
        run_dir: the run directory; writes ``metrics.jsonl`` and ``tb/`` under it.
        tensorboard: also write TensorBoard event files (skipped, with a warning, where the
            ``tensorboard`` package is not installed: ``metrics.jsonl`` holds the same numbers).
    """

    def __init__(self, run_dir: str | Path, tensorboard: bool = True) -> None:
        self.active = is_main()
        self.path = Path(run_dir) / "metrics.jsonl"
        self._tb = None
        if self.active and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                log.warning(
                    "TensorBoard is not installed (pip install tensorboard): metrics go to %s only", self.path
                )
                return
            self._tb = SummaryWriter(log_dir=str(Path(run_dir) / "tb"))

    def log(self, step: int, **metrics: Any) -> None:
        """Write ``{"step": step, **metrics}`` as a line and numeric values to TensorBoard."""
        if not self.active:
            return
        row = {"step": step, **{k: _clean(v) for k, v in metrics.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self._tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()
            self._tb = None

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All rows of a JSON-lines file such as ``metrics.jsonl`` or ``results.jsonl`` ([] if it does not exist)."""
    p = Path(path)
    if not p.exists():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def append_result(path: str | Path, result: dict[str, Any]) -> None:
    """Append one JSON object to a results file (``results.jsonl``; its folder is created if missing)."""
    if not is_main():
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with Path(path).open("a") as f:
        f.write(json.dumps({k: _clean(v) for k, v in result.items()}) + "\n")
