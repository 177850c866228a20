"""Named constructors: models and masking strategies are chosen by name, never by copied files."""

from __future__ import annotations

import typing
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from semmae.errors import ConfigError
from semmae.names import MaskingName, ModelPreset

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> constructor map with helpful errors.

    Args:
        kind: What the registry holds, used in error messages (e.g. ``"model"``).
        declared: The names it may hold, declared in :mod:`semmae.names` (where the config reads them).
    """

    def __init__(self, kind: str, declared: tuple[str, ...]) -> None:
        self.kind = kind
        self.declared = declared
        self._items: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator that registers ``fn`` under ``name``; duplicate names are a bug."""

        def deco(fn: Callable[..., T]) -> Callable[..., T]:
            if name in self._items:
                raise KeyError(f"{self.kind} {name!r} is already registered")
            if name not in self.declared:  # the config could never choose it
                raise KeyError(f"{self.kind} {name!r} is not declared in semmae.names")
            self._items[name] = fn
            return fn

        return deco

    def get(self, name: str) -> Callable[..., T]:
        """Return the constructor registered as ``name``.

        Raises:
            ConfigError: if no such name exists; the message lists the known names.
        """
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items))
            raise ConfigError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def build(self, name: str, **kwargs: Any) -> T:
        """Construct the item registered as ``name`` with ``kwargs``."""
        return self.get(name)(**kwargs)

    def names(self) -> list[str]:
        """Sorted registered names."""
        return sorted(self._items)


MODELS: Registry[Any] = Registry("model", typing.get_args(ModelPreset))
MASKINGS: Registry[Any] = Registry("masking strategy", typing.get_args(MaskingName))
