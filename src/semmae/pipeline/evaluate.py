"""Frozen-feature evaluation of several encoders with one feature extraction each."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from semmae.config import Config
from semmae.engine.logging import append_result, read_metrics
from semmae.eval.features import prepare_features
from semmae.eval.knn import run_knn
from semmae.eval.linear import run_linear

log = logging.getLogger(__name__)


def evaluate_encoder(cfg: Config, spec: str, *, progress: bool = True) -> dict[str, Any]:
    """kNN and linear probe of one encoder on ``cfg.data``, sharing one feature extraction.

    Returns:
        ``{"checkpoint", "dataset", "feature", "n_train", "n_test", "feature_seconds", "knn": {...},
        "linear": {...}, "seconds"}``: the rows of :func:`~semmae.eval.knn.run_knn` and
        :func:`~semmae.eval.linear.run_linear`, accuracies in percent.
    """
    t0 = time.perf_counter()
    fs = prepare_features(cfg, spec, progress=progress)
    knn = run_knn(cfg, spec, progress=progress, features=fs)
    linear = run_linear(cfg, spec, progress=progress, features=fs)
    return {
        **fs.info,
        "knn": {k: v for k, v in knn.items() if k not in fs.info},
        "linear": {k: v for k, v in linear.items() if k not in fs.info},
        "seconds": round(time.perf_counter() - t0, 2),
    }


def evaluate_encoders(cfg: Config, encoders: dict[str, str], results_file: Path) -> dict[str, Any]:
    """Evaluate each named encoder; append one JSON line per encoder to ``results_file``.

    Encoders already present in ``results_file`` (same name and checkpoint) are not evaluated
    again, so an interrupted evaluation stage resumes.
    """
    rows = read_metrics(results_file)
    done = {row["name"]: row for row in rows if encoders.get(row.get("name")) == row.get("checkpoint")}
    for name, spec in encoders.items():
        if name in done:
            continue
        log.info("evaluating %s (%s)", name, spec)
        row = {"name": name, **evaluate_encoder(cfg, spec)}
        append_result(results_file, row)
        done[name] = row
    return {name: done[name] for name in encoders}
