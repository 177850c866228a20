"""The names a config accepts are exactly the names the registries, the dataset dispatcher and the
pipeline implement: declared once in :mod:`semmae.names`, refused by a registry when undeclared."""

from __future__ import annotations

import typing

import pytest

import semmae.masking  # noqa: F401  (registers the strategies)
import semmae.models  # noqa: F401  (registers the presets)
from semmae import names
from semmae.config import DataConfig
from semmae.data import build_dataset
from semmae.errors import DataError
from semmae.masking.schedule import PROGRESS_UNITS, SCHEDULES
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
