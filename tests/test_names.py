"""The names a config accepts are exactly the names the registries, the dataset dispatcher and the
pipeline implement: declared once in :mod:`semmae.names`, refused by a registry when undeclared."""

from __future__ import annotations

import typing

import pytest
import torch

import semmae.masking  # noqa: F401  (registers the strategies)
import semmae.models  # noqa: F401  (registers the presets)
from semmae import names
from semmae.cli.main import build_parser
from semmae.config import DataConfig, load
from semmae.data import build_dataset
from semmae.errors import DataError
from semmae.eval.features import pool_tokens
from semmae.eval.linear import ProbeGrid, _optimizer
from semmae.masking.schedule import PROGRESS_UNITS, SCHEDULES
from semmae.models import build_mae
from semmae.models.vit import build_classifier
from semmae.models.vit_encoder import ViTEncoder
from semmae.pipeline.budgets import budget_overrides
from semmae.pipeline.stages import STAGES
from semmae.pipeline.study import SCHEDULES as STUDY_SCHEDULES
from semmae.registry import MASKINGS, MODELS, Registry


def test_registries_hold_exactly_the_declared_names() -> None:
    assert MODELS.names() == sorted(typing.get_args(names.ModelPreset))
    assert MASKINGS.names() == sorted(typing.get_args(names.MaskingName))
    assert SCHEDULES == typing.get_args(names.ScheduleName)
    assert PROGRESS_UNITS == typing.get_args(names.ProgressUnit)


def test_a_registry_refuses_an_undeclared_name() -> None:
    reg: Registry[int] = Registry("thing", ("a",))
    reg.register("a")(lambda: 1)
    with pytest.raises(KeyError, match="not declared"):
        reg.register("b")(lambda: 2)
    assert reg.names() == ["a"]


def test_the_dataset_dispatcher_knows_exactly_the_declared_names() -> None:
    cfg = DataConfig()
    cfg.name = "no_such_set"  # type: ignore[assignment]  (past the config's own check)
    with pytest.raises(DataError) as info:
        build_dataset(cfg, "train")
    listed = str(info.value).rsplit("use one of ", 1)[1].split(", ")
    assert sorted(listed) == sorted(typing.get_args(names.DatasetName))


def test_the_pipeline_runs_exactly_the_declared_stages_and_methods() -> None:
    assert STAGES == typing.get_args(names.PipelineStage)
    # random and block are masking strategies; every other method is semantic masking with a schedule
    assert {"random", "block", *STUDY_SCHEDULES} == set(typing.get_args(names.StudyMethod))


def test_the_evaluation_names_are_the_ones_the_code_implements() -> None:
    tokens = torch.randn(2, 5, 8)
    for feature in typing.get_args(names.FeatureName):
        assert pool_tokens(tokens, feature).shape == (2, 8)
    grid = ProbeGrid(8, 3, 2)
    for name in typing.get_args(names.ProbeOptimizer):
        assert isinstance(_optimizer(grid, [0.1, 0.01], name, 0.0), torch.optim.Optimizer)
    encoder = ViTEncoder.from_arch(build_mae("mae_debug").arch)
    for pool in typing.get_args(names.GlobalPool):
        assert build_classifier(encoder, 3, global_pool=pool).global_pool == pool
    for budget in typing.get_args(names.StudyBudget):
        assert isinstance(budget_overrides(budget, load(None)), list)
    parser = build_parser()
    assert parser.parse_args(["study", "--out", "o", "--budget", "gpu"]).budget == "gpu"
