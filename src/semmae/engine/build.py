"""Build the pieces of a pretraining run from a :class:`Config` (the only place that reads it)."""

from __future__ import annotations

import dataclasses
import inspect

from semmae import runtime
from semmae.config import Config
from semmae.errors import ConfigError
from semmae.masking import MaskingStrategy
from semmae.models import MaskedAutoencoderViT, build_mae
from semmae.registry import MASKINGS


def build_model(cfg: Config) -> MaskedAutoencoderViT:
    """The MAE of ``cfg.model`` sized for ``cfg.data``, compiled when ``cfg.train.compile``.

    Raises:
        ConfigError: unknown preset, or a patch size that does not divide the image size.
    """
    # Every model field but the preset's name overrides a constructor argument (None keeps the preset's).
    kwargs = {k: v for k, v in dataclasses.asdict(cfg.model).items() if k != "name"}
    try:
        model = build_mae(cfg.model.name, **kwargs, img_size=cfg.data.image_size, in_chans=cfg.data.in_chans)
    except ValueError as exc:
        raise ConfigError(
            f"model {cfg.model.name!r} does not fit data.image_size={cfg.data.image_size}: {exc}"
        ) from None
    if cfg.train.compile:
        # In place and lazily, on the first step; the state_dict keeps its names (no ``_orig_mod.``
        # prefix), so checkpoints of compiled and eager runs are interchangeable.
        model.compile()
    return model


def build_masking(cfg: Config, grid: tuple[int, int]) -> MaskingStrategy:
    """The strategy registered as ``cfg.masking.name``, given those of the ``cfg.masking`` fields,
    ``grid`` and ``check_labels`` that its constructor names (so a new strategy needs no change here)."""
    # The range check of the labels is a host sync per step on an accelerator; there the labels
    # come from part-map files whose values were checked when they were written.
    available = {
        **dataclasses.asdict(cfg.masking),
        "grid": grid,
        "check_labels": runtime.resolve_device(cfg.train.device).type == "cpu",
    }
    ctor = MASKINGS.get(cfg.masking.name)
    takes = inspect.signature(ctor).parameters
    return ctor(**{k: v for k, v in available.items() if k in takes})
