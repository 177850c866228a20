"""Frozen-feature evaluation of several encoders with one feature extraction each."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from semmae import runtime
from semmae.config import Config
from semmae.engine.logging import append_result

log = logging.getLogger(__name__)


def evaluate_encoder(cfg: Config, spec: str, *, progress: bool = True) -> dict[str, Any]:
    """kNN and linear probe of one encoder on ``cfg.data``, sharing the extracted features.

    Returns:
        ``{"knn": {...}, "linear": {...}, "feature_seconds", "seconds"}`` with accuracies in percent.
    """
    from semmae.eval.features import prepare_features
    from semmae.eval.knn import knn_accuracy
    from semmae.eval.linear import linear_probe

    t0 = time.perf_counter()
    fs = prepare_features(cfg, spec, progress=progress)
    device = runtime.resolve_device(cfg.train.device)
    ftr, fte = fs.train_feats.to(device), fs.test_feats.to(device)
    e = cfg.eval
    t_knn = time.perf_counter()
    knn = knn_accuracy(ftr, fs.train_labels, fte, fs.test_labels, k=e.knn_k, temperature=e.knn_t,
                       num_classes=fs.num_classes, chunk_size=e.knn_chunk_size)  # fmt: skip
    knn_s = time.perf_counter() - t_knn
    t_lin = time.perf_counter()
    linear = linear_probe(
        ftr, fs.train_labels, fte, fs.test_labels, num_classes=fs.num_classes, lrs=e.linear_lrs,
        epochs=e.linear_epochs, batch_size=e.linear_batch_size, val_frac=e.linear_val_frac,
        optimizer=e.linear_optimizer, weight_decay=e.linear_weight_decay, warmup_epochs=e.linear_warmup_epochs,
        seed=cfg.train.seed, progress=progress,
    )  # fmt: skip
    lin_s = time.perf_counter() - t_lin
    return {
        "checkpoint": spec, **{k: v for k, v in fs.info.items() if k != "checkpoint"},
        "knn": {**knn, "k": e.knn_k, "t": e.knn_t, "seconds": round(knn_s, 2)},
        "linear": {**linear, "seconds": round(lin_s, 2)},
        "seconds": round(time.perf_counter() - t0, 2),
    }  # fmt: skip


def evaluate_encoders(cfg: Config, encoders: dict[str, str], results_file: Path) -> dict[str, Any]:
    """Evaluate each named encoder; append one JSON line per encoder to ``results_file``.

    Encoders already present in ``results_file`` (same name and checkpoint) are not evaluated
    again, so an interrupted evaluation stage resumes.
    """
    done: dict[str, Any] = {}
    if results_file.is_file():
        for line in results_file.read_text().splitlines():
            row = json.loads(line)
            if encoders.get(row.get("name")) == row.get("checkpoint"):
                done[row["name"]] = row
    for name, spec in encoders.items():
        if name in done:
            continue
        log.info("evaluating %s (%s)", name, spec)
        row = {"name": name, **evaluate_encoder(cfg, spec)}
        append_result(results_file, row)
        done[name] = row
    return {name: done[name] for name in encoders}
