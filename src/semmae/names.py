"""The names a config may choose from, declared once at the bottom layer (DESIGN.md §7 rule 15).

The config types its fields with these ``Literal`` s, so a misspelt name fails when the config is
loaded, before torch is imported. The model and masking registries (:mod:`semmae.registry`) and
the λ schedules (:mod:`semmae.masking.schedule`) read their names from here: registering a name
not declared here is a bug, and tests hold every registry, the dataset dispatcher and the
pipeline to exactly the names declared here.
"""

from __future__ import annotations

from typing import Literal

DatasetName = Literal[
    "fashion_mnist", "toy_parts", "toy_relations", "image_folder", "cifar10", "cifar100", "stl10"
]
"""``data.name``: the datasets :func:`semmae.data.build_dataset` reads."""

ModelPreset = Literal[
    "mae_vit_tiny_patch16", "mae_vit_small_patch16", "mae_vit_base_patch16", "mae_vit_large_patch16",
    "mae_vit_huge_patch14", "mae_vit_base_patch8", "mae_fmnist_tiny", "mae_debug",
]  # fmt: skip
"""``model.name``: the MAE presets of :mod:`semmae.models`."""

MaskingName = Literal["random", "block", "semantic"]
"""``masking.name``: the registered masking strategies."""

ScheduleName = Literal["power", "intra", "inter", "linear", "reversed", "cosine"]
"""``masking.schedule``: the λ schedules of semantic masking."""

ProgressUnit = Literal["step", "epoch"]
"""``masking.step_per``: how often λ advances."""

PipelineStage = Literal["mae", "parts", "export", "semmae", "eval", "report"]
"""``pipeline.stages``: the stages of ``semmae pipeline``, in the order they run."""

StudyMethod = Literal["random", "block", "semantic", "intra", "inter", "reversed", "oracle"]
"""``pipeline.study_methods``: the masking variants ``semmae study`` compares."""

StudyBudget = Literal["quick", "full", "gpu"]
"""``semmae study --budget``: a smoke run, the config as written, or the study scaled for one GPU."""

FeatureName = Literal["cls", "mean"]
"""``eval.feature``: the encoder output the probes read, the CLS token or the patch-token mean."""

ProbeOptimizer = Literal["sgd", "adamw"]
"""``eval.linear_optimizer``: the fast linear probe's optimiser."""

GlobalPool = Literal["avg", "token"]
"""``eval.ft_global_pool``: how the fine-tuned classifier pools the encoder's tokens."""
