"""Typed configuration: dataclass defaults, YAML recipes of overrides, dotted CLI overrides.

A recipe in ``configs/`` holds only what differs from the defaults (the fields of
:mod:`semmae.config_sections`). Command-line overrides look like ``train.epochs=2 data.limit=2000
masking.name=semantic``; values are parsed as YAML scalars. Unknown keys and invalid values fail
in :func:`load` with a :class:`ConfigError` that names the key.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from semmae.config_checks import apply_key, flatten, parse_override, read_recipe
from semmae.config_sections import (
    DataConfig,
    EvalConfig,
    MaskingConfig,
    ModelConfig,
    PartLearnerArch,
    PartsConfig,
    PipelineConfig,
    TrainConfig,
)
from semmae.errors import ConfigError


@dataclass
class Config:
    """Everything a command needs; sections a command does not use are ignored by it."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    parts: PartsConfig = field(default_factory=PartsConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)

    def to_dict(self) -> dict[str, Any]:
        """A plain nested dict (YAML/JSON-serialisable)."""
        return dataclasses.asdict(self)


def validate(cfg: Config) -> None:
    """Every section's own checks, then the rules that join sections (all of them are here).

    Raises:
        ConfigError: the first invalid value, naming its key and what it accepts.
    """
    for section in dataclasses.fields(cfg):
        getattr(cfg, section.name).check()
    patch, size = cfg.model.patch_size, cfg.data.image_size
    if patch is not None and size % patch:
        raise ConfigError(f"config key 'model.patch_size' ({patch}) must divide data.image_size ({size})")


def load(
    path: str | Path | None = None, overrides: list[str] | None = None, *, base: Config | None = None
) -> Config:
    """Build a validated :class:`Config` from a base, a YAML recipe and dotted overrides.

    Args:
        path: a YAML file of overrides (sections of fields), or None for none.
        overrides: ``section.field=value`` strings, applied after the file.
        base: what the file and overrides apply to (not modified): the defaults when None, or
            e.g. the settings a checkpoint recorded (``semmae eval``).

    Raises:
        ConfigError: unreadable file, unknown key, wrong type or invalid value.
    """
    cfg = copy.deepcopy(base) if base is not None else Config()
    if path is not None:
        for key, value in flatten(read_recipe(path)).items():
            apply_key(cfg, key, value)
    for text in overrides or []:
        apply_key(cfg, *parse_override(text))
    validate(cfg)
    return cfg


def from_dict(tree: dict[str, Any]) -> Config:
    """Rebuild a Config from :meth:`Config.to_dict` output (e.g. a checkpoint's config).

    Types and choices are checked; the cross-field ranges are not (:func:`validate` does that).
    """
    cfg = Config()
    for key, value in flatten(tree).items():
        apply_key(cfg, key, value)
    return cfg


def dump(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML."""
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


__all__ = [
    "Config", "DataConfig", "EvalConfig", "MaskingConfig", "ModelConfig", "PartLearnerArch", "PartsConfig",
    "PipelineConfig", "TrainConfig", "dump", "from_dict", "load", "parse_override", "validate",
]  # fmt: skip
