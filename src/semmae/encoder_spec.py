"""The one parser of encoder spec strings, the way commands and configs name a ViT encoder.

A spec is one of:

* ``random:<mae preset>``: the preset at a fixed seed, the floor of every metric;
* ``timm:NAME@FILE``: a timm ViT weights file, its head count taken from the timm model ``NAME``;
* anything else: a checkpoint file (ours, an official MAE ``.pth``, a timm state dict).

It sits at the bottom layer with no torch import, so a command can check the encoder files it
will read (:func:`check_encoder_files`: present, and a weights format by their first bytes, as
:mod:`semmae.file_kinds` tells them) and the export it will write (:func:`check_export_target`)
before it loads any heavy library;
:func:`same_encoder` says whether two specs name one encoder (a resumed fine-tune's source), and
:func:`absolute_spec` names a spec's file from any working folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from semmae.errors import CheckpointError, ConfigError, RunDirError
from semmae.file_kinds import HEAD_BYTES, is_safetensors, is_torch_file, refuse_foreign_output
from semmae.names import ModelPreset

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


def _looks_like(head: bytes) -> str:
    """A few words on what a file that holds no weights seems to be, for the refusal."""
    if head.startswith((b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"RIFF", b"BM")):
        return "it is an image"
    if head.startswith(b"\x1f\x8b"):
        return "it is gzip-compressed; decompress it first"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return "its first bytes match no known format"
    return "it is text"


def check_weights_file(path: Path) -> None:
    """Refuse, from its first bytes and without importing torch, a file that cannot hold weights.

    The formats read are a torch file (``torch.save``: a zip archive, or from PyTorch before 1.6 a
    pickle or a tar archive) and, by its ``.safetensors`` suffix, a safetensors file (an 8-byte
    little-endian header length, then a JSON header). This looks only at the format; whether the
    contents are an encoder is for the loader to say.

    Raises:
        CheckpointError: ``path`` is missing, a folder, unreadable, empty, or in neither format
            (or in the other one than its suffix says, with the rename that fixes it).
    """
    where = repr(str(path))
    if path.is_dir():
        raise CheckpointError(
            f"checkpoint {where} is a folder; give the file (a run's is RUN/checkpoints/last.pt)"
        )
    if not path.is_file():
        raise CheckpointError(f"checkpoint {where} not found")
    try:
        with path.open("rb") as f:
            head = f.read(HEAD_BYTES)
        size = path.stat().st_size
    except OSError as exc:
        raise CheckpointError(f"checkpoint {where} could not be read ({exc.strerror})") from None
    if not head:
        raise CheckpointError(f"checkpoint {where} is empty")
    if path.suffix == ".safetensors":
        if not is_safetensors(head, size):
            hint = "it is a torch file: name it .pth" if is_torch_file(head) else _looks_like(head)
            raise CheckpointError(f"checkpoint {where} is not a safetensors file ({hint})")
    elif not is_torch_file(head):
        hint = (
            "it is a safetensors file: name it .safetensors"
            if is_safetensors(head, size)
            else _looks_like(head)
        )
        raise CheckpointError(
            f"checkpoint {where} is not a weights file ({hint}); give a torch checkpoint (.pt, .pth) "
            "or a .safetensors file"
        )


def absolute_spec(spec: str) -> str:
    """``spec`` with its file as an absolute path: the same encoder named from any working folder."""
    parsed = parse_encoder_spec(spec)
    if parsed.path is None:
        return spec
    path = os.path.abspath(parsed.path)  # not resolve(): a link the user named stays that link
    return f"{TIMM}{parsed.name}@{path}" if parsed.kind == "timm" else path


def same_encoder(a: str, b: str) -> bool:
    """Whether two specs name the same encoder: the same kind and name, and the same file (or,
    where one file is gone, the same resolved path)."""
    x, y = parse_encoder_spec(a), parse_encoder_spec(b)
    if (x.kind, x.name) != (y.kind, y.name):
        return False
    if x.path is None or y.path is None:
        return x.path == y.path
    try:
        return x.path.samefile(y.path)
    except OSError:
        return x.path.resolve() == y.path.resolve()


def check_encoder_files(spec: str) -> None:
    """:func:`check_weights_file` on the file ``spec`` names, if any; a ``random:`` spec's preset must exist.

    Raises:
        ConfigError: a ``random:`` spec names no MAE preset.
        CheckpointError: a ``timm:`` spec without ``@FILE``, or a file :func:`check_weights_file` refuses.
    """
    parsed = parse_encoder_spec(spec)
    if parsed.kind == "random" and parsed.name not in get_args(ModelPreset):
        raise ConfigError(f"unknown model {parsed.name!r}; known: {', '.join(sorted(get_args(ModelPreset)))}")
    if parsed.path is not None:
        check_weights_file(parsed.path)


EXPORT_SUFFIXES = {"timm": ".safetensors", "onnx": ".onnx"}  # export format -> its file's suffix


def check_export_target(fmt: str, out: Path, *, overwrite: bool) -> None:
    """Refuse an export's format or output file before any work (and before torch loads).

    The file's suffix must be its format's, and a file already there must be of that format by
    its first bytes (:func:`~semmae.file_kinds.refuse_foreign_output`), so ``--overwrite`` only
    ever replaces an export, never a user's notes or a checkpoint.

    Raises:
        ConfigError: an unknown format. RunDirError: ``out`` is a folder, has another suffix, holds
            a file of another kind, or exists without ``overwrite``.
    """
    if fmt not in EXPORT_SUFFIXES:
        raise ConfigError(f"unknown export format {fmt!r}; choose one of: {', '.join(EXPORT_SUFFIXES)}")
    suffix = EXPORT_SUFFIXES[fmt]
    if out.is_dir():
        raise RunDirError(f"output path {str(out)!r} is a directory; give a file name ending in {suffix}")
    if out.suffix != suffix:
        raise RunDirError(
            f"--format {fmt} writes a {suffix} file; name --out {str(out.with_suffix(suffix))!r}"
        )
    refuse_foreign_output(out, "safetensors" if fmt == "timm" else "onnx")
    if out.exists() and not overwrite:
        raise RunDirError(f"output file {str(out)!r} exists; pass --overwrite to replace it")
