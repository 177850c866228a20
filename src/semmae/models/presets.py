"""Registered MAE presets: MAE's ViT sizes (huge at patch 14, as MAE), ViT-B/8, and the small models."""

from __future__ import annotations

from functools import partial
from typing import Any

from semmae.model_sizes import PRESET_SIZES, preset_sizes
from semmae.models.mae import MaskedAutoencoderViT
from semmae.registry import MODELS


def preset(name: str) -> dict[str, Any]:
    """Constructor arguments of a registered preset (a fresh dict)."""
    MODELS.get(name)  # raises a ConfigError listing the names
    return preset_sizes(name)


def build_mae(name: str, **overrides: Any) -> MaskedAutoencoderViT:
    """Build a registered MAE preset with overrides (None values keep the preset)."""
    kwargs = preset(name)
    kwargs.update({k: v for k, v in overrides.items() if v is not None})
    return MaskedAutoencoderViT(**kwargs)


for _name in PRESET_SIZES:
    MODELS.register(_name)(partial(build_mae, _name))
