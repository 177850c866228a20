"""The masking study's comparison (differences to random masking with 95% intervals) and its report.

:func:`compare` turns the per-run rows into per-metric statistics; :func:`write_study_report`
writes ``study.md`` and a self-contained ``study.html`` (bar charts of every method's mean with
its 95% interval, and of every method's paired difference to random with its 95% interval).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from semmae.pipeline.document import Document, count
from semmae.pipeline.layout import StudyLayout
from semmae.pipeline.stats import describe, paired_difference, t_interval, verdict
from semmae.viz.plots import plot_interval_bars

METRICS = {"knn_top1": "kNN top-1", "linear_top1": "linear top-1"}
REFERENCE = "random"
FLOOR = "floor"


def _metric(row: dict[str, Any], metric: str) -> float:
    return float(row["knn"]["top1"] if metric == "knn_top1" else row["linear"]["top1"])


def compare(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per metric and method: mean, std, 95% interval of the mean, and the paired difference to random.

    Args:
        rows: one per (method, seed) run, with ``method``, ``seed``, ``knn.top1``, ``linear.top1``.

    Returns:
        ``{metric: {method: {"mean", "std", "n", "lo", "hi", "vs_random", "vs_floor"}}}``;
        ``vs_random`` (every method but random) and ``vs_floor`` (random only) are the dicts of
        :func:`~semmae.pipeline.stats.paired_difference`, or None when there is nothing to pair.
    """
    out: dict[str, dict[str, Any]] = {}
    for metric in METRICS:
        by_method: dict[str, dict[int, float]] = {}
        for r in rows:
            by_method.setdefault(r["method"], {})[int(r["seed"])] = _metric(r, metric)
        ref = by_method.get(REFERENCE, {})
        entries: dict[str, Any] = {}
        for method, values in by_method.items():
            interval = t_interval(list(values.values()))
            entries[method] = {
                **describe(list(values.values())),
                "lo": interval[0] if interval else None,
                "hi": interval[1] if interval else None,
                "vs_random": None if method == REFERENCE else paired_difference(values, ref) if ref else None,
                "vs_floor": paired_difference(values, by_method[FLOOR])
                if method == REFERENCE and FLOOR in by_method
                else None,
            }
        out[metric] = entries
    return out


def verdicts(comparison: dict[str, dict[str, Any]], planned: Sequence[str] = ()) -> list[str]:
    """Sentences: pretraining vs the floor, then every strategy vs random, per metric.

    ``planned`` is ``pipeline.study_methods``: where it lists random, a table without random's runs
    is one that has not reached them yet.
    """
    lines = []
    for metric, label in METRICS.items():
        entries = comparison.get(metric, {})
        rnd = entries.get(REFERENCE)
        if rnd and rnd["vs_floor"] is not None:
            d, floor = rnd["vs_floor"], entries[FLOOR]
            spread = max(rnd["std"] or 0.0, floor["std"] or 0.0)
            margin = f"{d['mean'] / spread:.1f} standard deviations" if spread > 0 else "no measured spread"
            lines.append(verdict("random (MAE)", "the random-init floor", label, d) + f" Margin: {margin}.")
        others = [m for m in entries if m not in (REFERENCE, FLOOR)]
        if others and rnd is None:  # nothing to pair with: one sentence, not one "no seed" per method
            why = (
                "has no evaluated run yet" if REFERENCE in planned else "is not among pipeline.study_methods"
            )
            lines.append(f"random {why}, so no method is compared with it on {label}.")
            continue
        for method in others:
            lines.append(verdict(method, REFERENCE, label, entries[method]["vs_random"]))
    return lines


def _cell(mean: float, std: float | None) -> str:
    return f"{mean:.2f}" + ("" if std is None else f" ± {std:.2f}")


def _diff_cell(d: dict[str, Any] | None) -> str:
    if d is None:
        return "–"
    if d["lo"] is None:
        return f"{d['mean']:+.2f}"
    mark = " **✓**" if d["resolved"] else ""
    return f"{d['mean']:+.2f} [{d['lo']:+.2f}, {d['hi']:+.2f}]{mark}"


def table_rows(result: dict[str, Any]) -> list[list[str]]:
    """One row per method: kNN, Δ kNN, linear, Δ linear (Δ vs random, 95% CI), pretrain CPU minutes."""
    comp, table = result["comparison"], result["table"]
    rows = []
    for method in table:
        runs = [r for r in result["runs"] if r["method"] == method]
        cpu = [r["pretrain_cpu_s"] / 60 for r in runs if r.get("pretrain_cpu_s") is not None]
        row = [method]
        for metric in METRICS:
            e = comp[metric][method]
            row += [_cell(e["mean"], e["std"]), _diff_cell(e["vs_random"] if method != REFERENCE else None)]
        row.append(f"{sum(cpu) / len(cpu):.2f}" if cpu else "–")
        rows.append(row)
    return rows


def _document(layout: StudyLayout, result: dict[str, Any]) -> Document:
    doc = Document(layout.root)
    n_seeds = len(result["seeds"])
    arch = ", ".join(f"{k} {v}" for k, v in result.get("model_overrides", {}).items())
    doc.para(
        f"Data `{result['dataset']}` ({result['images']} images per split), model `{result['model']}`"
        f"{f' ({arch})' if arch else ''}, "
        f"{count(result['epochs'], 'epoch')}, seeds {result['seeds']}, {result['budget']} budget; "
        f"{result['cpu_minutes']:.1f} CPU-minutes in all (pretraining, part learning, evaluation). "
        f"Code: {result['provenance'].get('git') or 'unknown commit'}."
    )
    doc.heading("Results")
    doc.para(
        f"Mean ± sample std over {count(n_seeds, 'seed')}. Δ = method − random masking, paired by seed (runs with "
        "one seed share initial weights and data order), mean and 95% t-interval (n − 1 df); **✓** marks an "
        "interval that excludes 0. `floor` = the same network untrained (its seed's initialisation)."
    )
    header = [
        "method",
        "kNN top-1",
        "Δ kNN [95% CI]",
        "linear top-1",
        "Δ linear [95% CI]",
        "pretrain CPU min",
    ]
    doc.table(header, table_rows(result))
    doc.heading("Reading")
    for line in verdicts(result["comparison"], result.get("study_methods", ())):
        doc.para(line)
    doc.heading("Charts")
    for metric, label in METRICS.items():
        entries = result["comparison"][metric]
        means = {m: (e["mean"], e["lo"], e["hi"]) for m, e in entries.items()}
        diffs = {
            m: (e["vs_random"]["mean"], e["vs_random"]["lo"], e["vs_random"]["hi"])
            for m, e in entries.items()
            if e["vs_random"] is not None
        }
        path = plot_interval_bars(means, layout.plots / f"{metric}.png", title=f"{label}: mean, 95% CI",
                                  ylabel=f"{label} (%)")  # fmt: skip
        doc.image(path, f"{label} per method (bars: mean over seeds; whiskers: 95% t-interval)")
        path = plot_interval_bars(diffs, layout.plots / f"{metric}_vs_random.png",
                                  title=f"{label}: method − random, paired by seed", ylabel="Δ points",
                                  zero_line=True)  # fmt: skip
        doc.image(path, f"{label}: paired difference to random masking with its 95% t-interval")
    return doc


def write_study_report(root: Path, result: dict[str, Any]) -> Path:
    """Write ``study.md`` and the self-contained ``study.html`` of a study result into ``root``; returns the .md path."""
    layout = StudyLayout(Path(root))
    title = f"Masking study: {result['dataset']} ({result['budget']} budget)"
    return _document(layout, result).write(layout.table(".md"), title)
