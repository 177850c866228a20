"""Reading and checking config keys and values, for any dataclass of dataclass sections.

This module knows no section: :mod:`semmae.config_sections` declares them and :mod:`semmae.config`
puts them together. Recipes (YAML) and overrides (``section.field=value``) become flat
``{"section.field": value}`` items; :func:`apply_key` checks the key and :func:`coerce` the value
against the field's annotation, ``Literal[...]`` choices included, so a field's type and its
accepted values are written once, on the field. The range helpers give every section's
``check()`` the same one-line messages. Every failure is a :class:`ConfigError` that names the key
and says what it accepts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from semmae.errors import ConfigError


def coerce(key: str, value: Any, tp: Any) -> Any:
    """Coerce ``value`` to the annotated type ``tp`` or raise a ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        if any(value == c and type(value) is type(c) for c in choices):
            return value
        raise ConfigError(f"config key {key!r} must be one of {', '.join(map(str, choices))}; got {value!r}")
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is not type(None):
                with contextlib.suppress(ConfigError):  # then the next type of the union
                    return coerce(key, value, arg)
        raise ConfigError(f"config key {key!r}: expected {tp}, got {value!r}")
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise ConfigError(f"config key {key!r}: expected a list, got {value!r}")
        return [coerce(key, v, item_tp) for v in value]
    return _coerce_scalar(key, value, tp)


def _coerce_scalar(key: str, value: Any, tp: Any) -> Any:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is bool and isinstance(value, bool):
        return value
    if tp is int and number and isinstance(value, int):
        return value
    if tp is float and number:
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads "3e-3" as a string
        with contextlib.suppress(ValueError):
            return float(value)
    if tp is str and (isinstance(value, str) or number):
        return str(value)
    if tp is str and value is None:  # `key=` or `key:` with nothing after it: the empty string
        return ""
    expected = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    if tp not in expected:
        raise TypeError(f"unsupported config field type {tp} for {key}")
    raise ConfigError(f"config key {key!r}: expected {expected[tp]}, got {value!r}")


def apply_key(tree: Any, key: str, value: Any) -> None:
    """Set ``section.field`` of a dataclass of dataclass sections to ``value``, coerced to its type.

    Raises:
        ConfigError: a key not of that form, an unknown section or field (with a close match), or
            a value of the wrong type or outside the field's choices.
    """
    parts = key.split(".")
    if len(parts) != 2:
        raise ConfigError(f"config key {key!r} must look like 'section.field' (e.g. train.epochs)")
    section_name, field_name = parts
    sections = [f.name for f in dataclasses.fields(tree)]
    if section_name not in sections:
        hint = difflib.get_close_matches(section_name, sections, n=1)
        extra = f" (did you mean {hint[0]!r}?)" if hint else f"; sections: {', '.join(sections)}"
        raise ConfigError(f"unknown config section {section_name!r} in {key!r}{extra}")
    section = getattr(tree, section_name)
    hints = typing.get_type_hints(type(section))
    if field_name not in hints:
        hint = difflib.get_close_matches(field_name, hints, n=1)
        extra = f" (did you mean '{section_name}.{hint[0]}'?)" if hint else ""
        raise ConfigError(f"unknown config key {key!r}{extra}")
    setattr(section, field_name, coerce(key, value, hints[field_name]))


def at_least(section: str, obj: Any, minimum: float, *names: str) -> None:
    """Each field ``names`` of ``obj`` (None skipped: unset) is finite and at least ``minimum``."""
    for name in names:
        value = getattr(obj, name)
        if value is not None and not minimum <= value < math.inf:  # NaN fails too
            raise ConfigError(
                f"config key '{section}.{name}' must be a finite number of at least {minimum}, got {value}"
            )


def positive(section: str, obj: Any, *names: str) -> None:
    """Each field ``names`` of ``obj`` is > 0 and finite (None skipped)."""
    for name in names:
        value = getattr(obj, name)
        if value is not None and not 0 < value < math.inf:
            raise ConfigError(f"config key '{section}.{name}' must be a positive finite number, got {value}")


def finite_values(key: str, values: list[float], *, positive: bool = False) -> None:
    """Every entry of a list field is finite (and > 0 with ``positive``)."""
    if not all(math.isfinite(v) and (v > 0 or not positive) for v in values):
        kind = "positive finite values" if positive else "finite values"
        raise ConfigError(f"config key {key!r} must hold {kind}, got {values}")


def fractions(section: str, obj: Any, *names: str, one: bool = False) -> None:
    """Each field ``names`` of ``obj`` is in [0, 1) (a probability or rate), or [0, 1] with ``one``."""
    for name in names:
        value = getattr(obj, name)
        if not (0.0 <= value <= 1.0 if one else 0.0 <= value < 1.0):
            raise ConfigError(
                f"config key '{section}.{name}' must be in [0, 1{']' if one else ')'}, got {value}"
            )


# torch device names the toolkit runs on (resolved by semmae.runtime.resolve_device).
_DEVICE = re.compile(r"(auto|cpu|mps|cuda(:\d+)?)")
# timm's augmentation policy strings: RandAugment / AugMix / AutoAugment, with "-m9-mstd0.5"-style options.
_AUGMENT = re.compile(r"((rand|augmix|original|originalr|v0|v0r|3a)(-[a-z]+[0-9.]*|-t[a-z0-9]+)*)?")


def scaled_lr(base_lr: float, effective_batch: int) -> float:
    """MAE's linear scaling rule: ``lr = base_lr × effective_batch / 256``."""
    return base_lr * effective_batch / 256.0


def check_lr_floor(min_lr: float, peak_lr: float, lr_settings: tuple[str, str]) -> None:
    """Refuse a cosine floor above its peak, where the "decay" would rise.

    Checked at load where the peak is a setting itself (``parts.lr``); where it scales with the
    world size, before torch loads (``TrainConfig.check_pretraining``) or before the trainer reads
    any data (fine-tuning), and by every plan (``make_plan``).

    Args:
        min_lr: the schedule's floor.
        peak_lr: the lr after warm-up.
        lr_settings: for the error, the setting of ``min_lr`` and where ``peak_lr`` comes from.

    Raises:
        ConfigError: ``min_lr`` is above ``peak_lr``.
    """
    if min_lr > peak_lr:
        name, peak_from = lr_settings
        raise ConfigError(
            f"{name}={min_lr:g} is above the peak learning rate {peak_lr:g} ({peak_from}), so the cosine "
            f"schedule would rise instead of decay; lower {name} (0 is the usual floor)"
        )


def device_name(key: str, value: str) -> None:
    """``auto``, ``cpu``, ``mps``, ``cuda`` or ``cuda:N``; ``key`` is a config key or a ``--flag``."""
    if not _DEVICE.fullmatch(value):
        name = key if key.startswith("--") else f"config key {key!r}"
        raise ConfigError(f"{name} must be auto, cpu, cuda, cuda:N or mps, got {value!r}")


def augment_policy(key: str, value: str) -> None:
    """A timm auto-augment policy (``rand-m9-mstd0.5-inc1``, ``augmix-m5``, ``original``) or ``""``."""
    if not _AUGMENT.fullmatch(value):
        raise ConfigError(
            f"config key {key!r} must be a timm policy such as rand-m9-mstd0.5-inc1 (or empty for none), got {value!r}"
        )


def scale_range(key: str, value: list[float]) -> None:
    """A crop-scale range: ``[lo, hi]`` with 0 < lo <= hi <= 1."""
    lo, hi = value if len(value) == 2 else (-1.0, -1.0)
    if not 0.0 < lo <= hi <= 1.0:
        raise ConfigError(f"config key {key!r} must be [lo, hi] with 0 < lo <= hi <= 1, got {value}")


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{section: {field: value}}`` -> ``{"section.field": value}`` (values that are dicts kept whole)."""
    if not isinstance(tree, dict):
        raise ConfigError(f"config {prefix or 'file'} must be a mapping of sections, got {tree!r}")
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if not prefix and v is None:  # `data:` with nothing under it: a section that sets nothing
            continue
        if not prefix and not isinstance(v, dict):
            raise ConfigError(
                f"config section {key!r} must be a mapping of its keys (e.g. {key}: {{epochs: 2}} or an "
                f"indented block), got {v!r}"
            )
        if isinstance(v, dict) and not prefix:
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``section.field=value`` and parse the value as a YAML scalar or list."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.field=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else None
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (YAML would keep the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`: keys written beside it win
                continue
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_recipe(path: str | Path) -> Any:
    """The YAML tree of a recipe file ({} when empty).

    Raises:
        ConfigError: a missing, unreadable, non-UTF-8 or invalid YAML file.
    """
    p = Path(path)
    if p.is_dir():
        raise ConfigError(
            f"config file {str(p)!r} is a folder; give a YAML recipe such as configs/fmnist_tiny.yaml"
        )
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} not found")
    try:
        # A SafeLoader subclass: it builds plain data only, never a Python object.
        return yaml.load(p.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader) or {}
    except UnicodeDecodeError:
        raise ConfigError(f"config file {str(p)!r} is not UTF-8 text; give a YAML recipe") from None
    except OSError as exc:
        raise ConfigError(f"config file {str(p)!r} could not be read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0]
        raise ConfigError(f"config file {str(p)!r} is not valid YAML: {first}") from None
