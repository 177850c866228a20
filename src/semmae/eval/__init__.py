"""Evaluation of encoders: frozen features, weighted kNN, linear probe (fine-tuning: :mod:`semmae.train.finetune`)."""

from semmae.eval.features import (
    FeatureSet,
    encode_batches,
    evaluate_classifier,
    pool_tokens,
    prepare_features,
)
from semmae.eval.knn import knn_classify, run_knn, topk_accuracy
from semmae.eval.linear import ProbeGrid, linear_probe, run_linear

__all__ = [
    "FeatureSet",
    "ProbeGrid",
    "encode_batches",
    "evaluate_classifier",
    "knn_classify",
    "linear_probe",
    "pool_tokens",
    "prepare_features",
    "run_knn",
    "run_linear",
    "topk_accuracy",
]
