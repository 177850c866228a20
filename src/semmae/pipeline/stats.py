"""Statistics of a masking study: mean ± std over seeds and differences with 95% t-intervals.

Runs of different methods with the same seed share the initial weights and the data order
(crops, flips and batch composition are keyed by (seed, epoch, batch), see
:mod:`semmae.engine.batches`); only the masks differ. So a method is compared with the
reference *paired by seed*: the interval is that of the mean of the per-seed differences,
a Student t-interval with n − 1 degrees of freedom. With a single common seed there is no
spread and so no interval.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from scipy import stats as sps

CONFIDENCE = 0.95


def describe(values: Sequence[float]) -> dict[str, Any]:
    """``{"mean", "std", "n"}`` of ``values``; ``std`` is the sample std (None for one value)."""
    if not values:
        raise ValueError("describe needs at least one value")
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else None,
        "n": len(values),
    }


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """Two-sided t-interval of the mean of ``values`` (n − 1 df); None with fewer than two values."""
    n = len(values)
    if n < 2:
        return None
    mean, sd = statistics.fmean(values), statistics.stdev(values)
    half = float(sps.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    return mean - half, mean + half


def paired_difference(
    method: Mapping[int, float], reference: Mapping[int, float], confidence: float = CONFIDENCE
) -> dict[str, Any] | None:
    """``method − reference`` over the seeds both have, paired by seed.

    Args:
        method: seed -> metric of the method.
        reference: seed -> metric of the reference (e.g. random masking).
        confidence: level of the interval.

    Returns:
        ``{"mean", "std", "n", "seeds", "lo", "hi", "resolved"}``, ``lo``/``hi`` None (and
        ``resolved`` False) with fewer than two common seeds; ``resolved`` is True when the
        interval excludes 0. None when the two share no seed.
    """
    seeds = sorted(set(method) & set(reference))
    if not seeds:
        return None
    diffs = [method[s] - reference[s] for s in seeds]
    interval = t_interval(diffs, confidence)
    lo, hi = interval if interval else (None, None)
    return {
        **describe(diffs),
        "seeds": seeds,
        "lo": lo,
        "hi": hi,
        "resolved": interval is not None and (lo > 0 or hi < 0),
    }


def verdict(method: str, reference: str, metric: str, diff: Mapping[str, Any] | None) -> str:
    """One sentence: is ``method``'s difference to ``reference`` on ``metric`` resolved or not?"""
    if diff is None:
        return f"{method} and {reference} share no seed, so {metric} cannot be compared."
    if diff["lo"] is None:
        return f"{method} vs {reference} on {metric}: {diff['mean']:+.2f} from one seed, no interval (unresolved)."
    where = (
        "resolved: higher"
        if diff["lo"] > 0
        else "resolved: lower"
        if diff["hi"] < 0
        else "not resolved: the interval includes 0"
    )
    return (
        f"{method} vs {reference} on {metric}: {diff['mean']:+.2f} points, 95% CI "
        f"[{diff['lo']:+.2f}, {diff['hi']:+.2f}] over {diff['n']} paired seeds ({where})."
    )
