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
    for label, rows in series.items():
        pts = [(r[x], r[key]) for r in rows if key in r and x in r and isinstance(r[key], (int, float))]
        if pts:
            xs, ys = zip(*pts, strict=True)
            ax.plot(xs, ys, marker="o" if len(xs) < 20 else None, markersize=3, label=label)
    if not ax.lines:
        plt.close(fig)
        return None
    ax.set_xlabel(x)
    ax.set_ylabel(ylabel or key)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def plot_interval_bars(
    values: dict[str, tuple[float, float | None, float | None]],
    path: str | Path,
    *,
    title: str = "",
    ylabel: str = "",
    zero_line: bool = False,
) -> Path | None:
    """One bar per label at its value, with whiskers from ``lo`` to ``hi`` where both are known.

    Args:
        values: label -> ``(value, lo, hi)``; ``lo``/``hi`` None draws the bar without whiskers.
        path: PNG to write.
        title: figure title.
        ylabel: y-axis label.
        zero_line: draw a line at 0 (for differences).

    Returns:
        The PNG path, or None when ``values`` is empty.
    """
    if not values:
        return None
    labels = list(values)
    mean = [values[k][0] for k in labels]
    lower = [values[k][0] - values[k][1] if values[k][1] is not None else 0.0 for k in labels]
    upper = [values[k][2] - values[k][0] if values[k][2] is not None else 0.0 for k in labels]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.8 * len(labels) + 1.5), 3.4), dpi=110)
    ax.bar(range(len(labels)), mean, yerr=[lower, upper], capsize=4, color="#4c78a8", ecolor="#222")
    ax.set_xticks(range(len(labels)), labels, rotation=20)
    if zero_line:
        ax.axhline(0.0, color="#888", linewidth=1)
    else:
        low = min(m - lo for m, lo in zip(mean, lower, strict=True))
        ax.set_ylim(bottom=max(0.0, low - 5.0))  # accuracies: zoom on the bars' range, never below 0
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


def _save(fig: Any, path: str | Path) -> Path:
    """Lay out, write and close a figure; parent folders are created."""
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
