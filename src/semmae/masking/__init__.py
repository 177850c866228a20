"""Masking strategies: pure functions of (part labels, progress, generator) -> index tensors.

Build one by name: ``semmae.masking.build("random", ratio=0.75)``.
"""

from __future__ import annotations

from typing import Any

from semmae.masking import block as _block  # noqa: F401  (registers "block")
from semmae.masking import random as _random  # noqa: F401  (registers "random")
from semmae.masking import semantic as _semantic  # noqa: F401  (registers "semantic")
from semmae.masking.base import MaskingStrategy, MaskOutput, mask_budget, mask_from_scores
from semmae.registry import MASKINGS


def build(name: str, **params: Any) -> MaskingStrategy:
    """Construct the strategy registered as ``name`` (``random``, ``block``, ``semantic``)."""
    return MASKINGS.build(name, **params)


def names() -> list[str]:
    """Registered strategy names."""
    return MASKINGS.names()


__all__ = ["MaskOutput", "MaskingStrategy", "build", "mask_budget", "mask_from_scores", "names"]
