"""The one parser of encoder spec strings, the way commands and configs name a ViT encoder.

A spec is one of:

* ``random:<mae preset>``: the preset at a fixed seed, the floor of every metric;
* ``timm:NAME@FILE``: a timm ViT weights file, its head count taken from the timm model ``NAME``;
* anything else: a checkpoint file (ours, an official MAE ``.pth``, a timm state dict).

It sits at the bottom layer with no torch import, so a command can check the files it will read
before it loads any heavy library.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from semmae.errors import CheckpointError

RANDOM = "random:"
TIMM = "timm:"


@dataclass(frozen=True)
class EncoderSpec:
    """What an encoder spec string names.

    Attributes:
        kind: ``random``, ``timm`` or ``file``.
        name: the MAE preset (``random``) or the timm model name (``timm``); None for ``file``.
        path: the weights file, as written; None for ``random``.
    """

    kind: Literal["random", "timm", "file"]
    name: str | None = None
    path: Path | None = None


def parse_encoder_spec(spec: str) -> EncoderSpec:
    """Split ``spec`` into its kind, name and file.

    Raises:
        CheckpointError: a ``timm:`` spec without ``@FILE``.
    """
    if spec.startswith(RANDOM):
        return EncoderSpec("random", name=spec[len(RANDOM) :])
    if spec.startswith(TIMM):
        name, sep, path = spec[len(TIMM) :].partition("@")
        if not sep or not name or not path:
            raise CheckpointError(f"encoder {spec!r} must look like timm:MODEL_NAME@WEIGHTS_FILE")
        return EncoderSpec("timm", name=name, path=Path(path))
    return EncoderSpec("file", path=Path(spec))
