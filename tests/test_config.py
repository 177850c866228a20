"""Config loading: defaults, recipes, overrides, and clear refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from semmae import config as config_lib
from semmae.errors import ConfigError

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_recipe_loads(path: Path) -> None:
    cfg = config_lib.load(path)
    assert isinstance(cfg, config_lib.Config)


def test_overrides_are_typed_and_applied() -> None:
    cfg = config_lib.load(
        None, ["train.epochs=3", "data.limit=100", "masking.ratio=0.6", "data.crop_scale=[0.5,1]"]
    )
    assert cfg.train.epochs == 3 and cfg.data.limit == 100
    assert cfg.masking.ratio == pytest.approx(0.6)
    assert cfg.data.crop_scale == [0.5, 1.0]


def test_round_trip_through_dict_and_yaml(tmp_path: Path) -> None:
    cfg = config_lib.load(None, ["train.seed=7", "model.depth=3"])
    config_lib.dump(cfg, tmp_path / "c.yaml")
    again = config_lib.load(tmp_path / "c.yaml")
    assert again == cfg == config_lib.from_dict(cfg.to_dict())


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("train.epoch=2", "did you mean 'train.epochs'"),
        ("trian.epochs=2", "unknown config section"),
        ("masking.ratio=1.5", "masking.ratio"),
        ("masking.ratio=0", "masking.ratio"),
        ("model.patch_size=5", "model.patch_size"),
        ("train.epochs=two", "train.epochs"),
        ("train.precision=fp16", "train.precision"),
        ("data.name=mnist", "data.name"),
        ("epochs", "section.field=value"),
        ("parts.lambda_area=-1", "parts.lambda_area"),
        ("parts.tau=0", "parts.tau"),
        ("parts.blur_padding=zeros", "parts.blur_padding"),
    ],
)
def test_bad_values_fail_with_the_key_named(override: str, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_lib.load(None, [override])
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_and_broken_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        config_lib.load(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        config_lib.load(bad)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("train:\n  lr: 0.1\n")
    with pytest.raises(ConfigError, match="train.lr"):
        config_lib.load(unknown)
