"""Curves for reports (the only module that imports pyplot; Agg backend, no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_curves(
    series: dict[str, list[dict[str, Any]]],
    key: str,
    path: str | Path,
    *,
    x: str = "step",
    title: str = "",
    ylabel: str = "",
) -> Path | None:
    """Plot ``key`` against ``x`` for each named list of metric rows; None when no row has ``key``.

    Args:
        series: label -> metric rows (as read from ``metrics.jsonl``).
        key: the metric to plot (e.g. ``loss``, ``knn_top1``).
        path: PNG to write.
        x: the x-axis metric.
        title: figure title.
        ylabel: y-axis label (defaults to ``key``).
    """
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=110)
    drawn = False
    for label, rows in series.items():
        pts = [(r[x], r[key]) for r in rows if key in r and x in r and isinstance(r[key], (int, float))]
        if not pts:
            continue
        xs, ys = zip(*pts, strict=True)
        ax.plot(xs, ys, marker="o" if len(xs) < 20 else None, markersize=3, label=label)
        drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel(x)
    ax.set_ylabel(ylabel or key)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
