"""Value checks of a :class:`semmae.config.Config`: types, choices, ranges, cross-field rules.

Every failure is a :class:`ConfigError` whose message names the key and says what it accepts.
"""

from __future__ import annotations

import types
import typing
from typing import TYPE_CHECKING, Any

from semmae.errors import ConfigError

if TYPE_CHECKING:
    from semmae.config import Config

CHOICES: dict[str, tuple[str, ...]] = {
    "data.name": (
        "fashion_mnist",
        "toy_parts",
        "toy_relations",
        "image_folder",
        "cifar10",
        "cifar100",
        "stl10",
    ),
    "data.on_corrupt": ("warn", "error"),
    "masking.name": ("random", "block", "semantic"),
    "masking.schedule": ("power", "intra", "inter", "linear", "reversed", "cosine"),
    "masking.step_per": ("step", "epoch"),
    "train.precision": ("fp32", "bf16"),
    "parts.global_token": ("cls", "mean"),
    "eval.feature": ("cls", "mean"),
    "eval.linear_optimizer": ("sgd", "adamw"),
    "eval.ft_global_pool": ("avg", "token"),
    "eval.linear_protocol": ("fast", "mae"),
    "parts.blur_padding": ("replicate", "reflect"),
    "parts.decoder_upsample": ("nearest", "bilinear"),
    "parts.label_source": ("raw", "blurred"),
    "parts.cache_dtype": ("float16", "float32"),
}


def coerce(key: str, value: Any, tp: Any) -> Any:
    """Coerce ``value`` to the annotated type ``tp`` or raise a ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(key, value, arg)
            except ConfigError:
                continue
        raise ConfigError(f"config key {key!r}: expected {tp}, got {value!r}")
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise ConfigError(f"config key {key!r}: expected a list, got {value!r}")
        return [coerce(key, v, item_tp) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key {key!r}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"config key {key!r}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "3e-3" as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"config key {key!r}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"config key {key!r}: expected a string, got {value!r}")
    raise TypeError(f"unsupported config field type {tp} for {key}")


def validate(cfg: Config) -> None:
    """Check values that types alone cannot; raises ConfigError naming the key."""
    for key, choices in CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value not in choices:
            raise ConfigError(f"config key {key!r} must be one of {', '.join(choices)}; got {value!r}")
    if not 0.0 < cfg.masking.ratio < 1.0:
        raise ConfigError(f"config key 'masking.ratio' must be in (0, 1), got {cfg.masking.ratio}")
    positive = {
        "data.image_size": cfg.data.image_size,
        "data.in_chans": cfg.data.in_chans,
        "train.batch_size": cfg.train.batch_size,
        "train.accum_steps": cfg.train.accum_steps,
        "train.log_every": cfg.train.log_every,
        "parts.num_parts": cfg.parts.num_parts,
        "parts.batch_size": cfg.parts.batch_size,
        "eval.knn_k": cfg.eval.knn_k,
        "eval.batch_size": cfg.eval.batch_size,
        "eval.linear_batch_size": cfg.eval.linear_batch_size,
        "eval.linear_epochs": cfg.eval.linear_epochs,
        "eval.ft_batch_size": cfg.eval.ft_batch_size,
        "eval.ft_epochs": cfg.eval.ft_epochs,
        "eval.knn_chunk_size": cfg.eval.knn_chunk_size,
    }
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"config key {key!r} must be at least 1, got {value}")
    if cfg.train.epochs < 0 or (cfg.train.max_steps is not None and cfg.train.max_steps < 1):
        raise ConfigError("config keys 'train.epochs' must be >= 0 and 'train.max_steps' >= 1")
    if not all(s > 0 for s in cfg.data.std):
        raise ConfigError(f"config key 'data.std' must hold positive values (it divides), got {cfg.data.std}")
    for key in ("train.ckpt_every_steps", "train.warmup_epochs"):
        section, name = key.split(".")
        if getattr(getattr(cfg, section), name) < 0:
            raise ConfigError(f"config key {key!r} must be >= 0, got {getattr(getattr(cfg, section), name)}")
    if cfg.data.limit is not None and cfg.data.limit < 1:
        raise ConfigError(f"config key 'data.limit' must be at least 1, got {cfg.data.limit}")
    lo, hi = cfg.data.crop_scale if len(cfg.data.crop_scale) == 2 else (-1.0, -1.0)
    if not 0.0 < lo <= hi <= 1.0:
        raise ConfigError(
            f"config key 'data.crop_scale' must be [lo, hi] with 0 < lo <= hi <= 1, got {cfg.data.crop_scale}"
        )
    if len(cfg.data.mean) not in (1, cfg.data.in_chans) or len(cfg.data.std) != len(cfg.data.mean):
        raise ConfigError("config keys 'data.mean' and 'data.std' need 1 or data.in_chans values each")
    if cfg.model.patch_size is not None and (
        cfg.model.patch_size < 1 or cfg.data.image_size % cfg.model.patch_size
    ):
        raise ConfigError(
            f"config key 'model.patch_size' ({cfg.model.patch_size}) must divide "
            f"data.image_size ({cfg.data.image_size})"
        )
    if cfg.parts.export_scale not in (1, 2):
        raise ConfigError(f"config key 'parts.export_scale' must be 1 or 2, got {cfg.parts.export_scale}")
    for key in ("lambda_div", "lambda_area"):
        if getattr(cfg.parts, key) < 0:
            raise ConfigError(f"config key 'parts.{key}' must be >= 0, got {getattr(cfg.parts, key)}")
    if cfg.parts.tau <= 0 or cfg.parts.tau_min <= 0:
        raise ConfigError("config keys 'parts.tau' and 'parts.tau_min' must be positive")
    if cfg.parts.epochs < 1 or (cfg.parts.max_steps is not None and cfg.parts.max_steps < 1):
        raise ConfigError("config keys 'parts.epochs' and 'parts.max_steps' must be at least 1")
    if cfg.parts.num_parts < 2:
        raise ConfigError(f"config key 'parts.num_parts' must be at least 2, got {cfg.parts.num_parts}")
    _check_paper_protocol_fields(cfg)
    if not 0.0 <= cfg.eval.linear_val_frac < 1.0:
        raise ConfigError("config key 'eval.linear_val_frac' must be in [0, 1)")


def _check_paper_protocol_fields(cfg: Config) -> None:
    """Ranges of ``data.crop_pct``, the fine-tune and MAE-probe crop scales and ``eval.linear_blr``."""
    pct = cfg.data.crop_pct
    if pct is not None and not 0.0 < pct <= 1.0:
        raise ConfigError(f"config key 'data.crop_pct' must be in (0, 1] (e.g. 0.875), got {pct}")
    if pct is not None and pct != 1.0 and cfg.data.name != "image_folder":
        raise ConfigError(
            f"config key 'data.crop_pct' applies to image folders only ({cfg.data.name} is stored at "
            "its training size); leave it unset"
        )
    for key in ("ft_crop_scale", "linear_crop_scale"):
        value = getattr(cfg.eval, key)
        lo, hi = value if len(value) == 2 else (-1.0, -1.0)
        if not 0.0 < lo <= hi <= 1.0:
            raise ConfigError(f"config key 'eval.{key}' must be [lo, hi] with 0 < lo <= hi <= 1, got {value}")
    if cfg.eval.linear_blr <= 0:
        raise ConfigError(f"config key 'eval.linear_blr' must be positive, got {cfg.eval.linear_blr}")
