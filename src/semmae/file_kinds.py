"""What kind a file is, told from its first bytes without loading it (no torch, no numpy).

Two uses, both before any heavy library loads:

* inputs: :mod:`semmae.encoder_spec` refuses a weights file that is neither a torch file nor a
  safetensors file (:func:`is_torch_file`, :func:`is_safetensors`);
* outputs: ``--overwrite`` replaces a single-file output only where the file at its path is of the
  kind that output writes (:func:`refuse_foreign_output`). A user's notes named ``maps.json``,
  ``x.npy`` or ``model.onnx`` were not written by semmae and are refused, with or without
  ``--overwrite`` (DESIGN.md §7, rule 14).

A part-map output is a pair (:func:`npy_path`, :func:`manifest_path`); its names live here so a
command can check both paths before torch is imported.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

from semmae.errors import RunDirError

HEAD_BYTES = 512
ZIP_MAGIC = b"PK\x03\x04"  # torch.save since PyTorch 1.6 writes a zip archive
PICKLE_PROTO = 0x80  # older torch.save files (and a pickle's PROTO opcode) start with this byte
TAR_MAGIC = b"ustar"  # at offset 257: the tar format of PyTorch before 0.4, which torch.load still reads
NPY_MAGIC = b"\x93NUMPY"  # every .npy file (numpy.lib.format), whatever its version
# An ONNX file is a serialised ModelProto. Protobuf writers emit fields in field-number order and
# ONNX always sets field 1, ir_version (a varint: tag byte 0x08, then one byte while the version is
# below 128). torch.onnx.export's file starts 08 08 12 07 "pytorch": ir_version 8, then
# producer_name. The byte after the version is the tag of the next field present: producer_name
# (0x12), producer_version (0x1a), domain (0x22), model_version (0x28), doc_string (0x32),
# graph (0x3a) or opset_import (0x42).
ONNX_IR_VERSION_TAG = 0x08
ONNX_NEXT_TAGS = frozenset({0x12, 0x1A, 0x22, 0x28, 0x32, 0x3A, 0x42})
# What an image output's suffix says its first bytes are (PIL writes the format its suffix names).
IMAGE_MAGIC: dict[str, tuple[bytes, ...]] = {
    ".png": (b"\x89PNG\r\n\x1a\n",),
    ".jpg": (b"\xff\xd8\xff",),
    ".jpeg": (b"\xff\xd8\xff",),
    ".webp": (b"RIFF",),  # and "WEBP" at offset 8
    ".bmp": (b"BM",),
    ".tif": (b"II*\x00", b"MM\x00*"),
    ".tiff": (b"II*\x00", b"MM\x00*"),
}
IMAGE_SUFFIXES = tuple(IMAGE_MAGIC)
# The fields of every part-map manifest (semmae.data.partmaps.PartMapManifest; ``view`` came with
# version 2), and the size no manifest comes near: a bigger .json is not one and is not read.
PART_MAP_MANIFEST_KEYS = frozenset({
    "format_version", "dataset", "split", "num_images", "image_size", "grid", "num_parts",
    "fingerprint", "learner_hash", "created", "source",
})  # fmt: skip
MANIFEST_MAX_BYTES = 1 << 16

OutputKind = Literal["npy", "part-map manifest", "safetensors", "onnx", "image"]


def is_safetensors(head: bytes, size: int) -> bool:
    """An 8-byte little-endian header length that fits the file, then the JSON header's ``{``."""
    return len(head) > 8 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") <= size - 8


def is_torch_file(head: bytes) -> bool:
    """A ``torch.save`` file: a zip archive, or (PyTorch before 1.6) a pickle or a tar archive."""
    return head.startswith(ZIP_MAGIC) or head[:1] == bytes([PICKLE_PROTO]) or head[257:262] == TAR_MAGIC


def is_onnx(head: bytes) -> bool:
    """An ONNX ModelProto: ir_version first, then another ModelProto field (see ONNX_NEXT_TAGS)."""
    return (
        len(head) > 2 and head[0] == ONNX_IR_VERSION_TAG and 0 < head[1] < 0x80 and head[2] in ONNX_NEXT_TAGS
    )


def is_image(head: bytes, suffix: str) -> bool:
    """The first bytes of the image format ``suffix`` (``.png``, ``.jpg``, ...) names."""
    ok = head.startswith(IMAGE_MAGIC.get(suffix.lower(), ()))
    return ok and (suffix.lower() != ".webp" or head[8:12] == b"WEBP")


def is_part_map_manifest(path: Path) -> bool:
    """Whether ``path`` is a small JSON object with every field of a part-map manifest."""
    try:
        with open(path, "rb") as f:
            text = f.read(MANIFEST_MAX_BYTES + 1)
        tree = json.loads(text) if len(text) <= MANIFEST_MAX_BYTES else None
    except (OSError, ValueError):
        return False
    return isinstance(tree, dict) and PART_MAP_MANIFEST_KEYS <= tree.keys()


def npy_path(path: str | os.PathLike[str]) -> Path:
    """The ``.npy`` file of a part-map path: ``X.npy`` for ``X.npy``, ``X`` or the manifest ``X.json``
    (``.npy`` is appended to any other name)."""
    p = Path(path)
    if p.suffix == ".npy":
        return p
    return p.with_suffix(".npy") if p.suffix == ".json" else p.with_name(p.name + ".npy")


def manifest_path(path: str | os.PathLike[str]) -> Path:
    """The ``.json`` manifest next to a part-map file."""
    return npy_path(path).with_suffix(".json")


def _words(path: Path, kind: OutputKind) -> str:
    return {
        "npy": "a NumPy array",
        "part-map manifest": "a part-map manifest",
        "safetensors": "a safetensors file",
        "onnx": "an ONNX model",
        "image": f"a {path.suffix.lstrip('.').upper()} image",
    }[kind]


def is_of_kind(path: Path, kind: OutputKind) -> bool:
    """Whether the regular file ``path`` is a file of ``kind``, by its first bytes.

    Raises:
        OSError: ``path`` cannot be read.
    """
    if kind == "part-map manifest":
        path.open("rb").close()  # unreadable: say so rather than call it foreign
        return is_part_map_manifest(path)
    with open(path, "rb") as f:
        head, size = f.read(HEAD_BYTES), os.fstat(f.fileno()).st_size
    if kind == "npy":
        return head.startswith(NPY_MAGIC)
    if kind == "safetensors":
        return is_safetensors(head, size)
    if kind == "onnx":
        return is_onnx(head)
    return is_image(head, path.suffix)


def refuse_foreign_output(path: Path, kind: OutputKind) -> None:
    """Refuse to write ``path`` where something stands that semmae's output of ``kind`` is not.

    Nothing there, or a regular file of ``kind``, passes (whether it may be replaced is the
    ``--overwrite`` check's to say). A symbolic link, a folder or a file of another kind was not
    written by semmae, and ``--overwrite`` would not help: the fix is another ``--out``.

    Raises:
        RunDirError: one line naming ``path``.
    """
    if not os.path.lexists(path):
        return
    where = repr(str(path))
    if path.is_symlink() or not path.is_file():
        what = "a symbolic link" if path.is_symlink() else "not a regular file"
        raise RunDirError(f"{where} exists and is {what}: semmae did not write it; choose another --out")
    try:
        ours = is_of_kind(path, kind)
    except OSError as exc:
        raise RunDirError(
            f"{where} exists and cannot be read ({exc.strerror}) to tell whether semmae wrote it; "
            "choose another --out"
        ) from None
    if not ours:
        raise RunDirError(
            f"{where} exists and is not {_words(path, kind)}: semmae did not write it; choose another --out"
        )


def refuse_part_map_out(out: str | os.PathLike[str], *, overwrite: bool) -> None:
    """Refuse a part-map output ``out`` (``X.npy`` and its manifest ``X.json``) before writing it.

    Either file being of another kind is refused (:func:`refuse_foreign_output`); either existing
    is refused without ``overwrite``.

    Raises:
        RunDirError: one line naming the files.
    """
    pair = (npy_path(out), manifest_path(out))
    refuse_foreign_output(pair[0], "npy")
    refuse_foreign_output(pair[1], "part-map manifest")
    existing = [repr(str(p)) for p in pair if os.path.lexists(p)]
    if existing and not overwrite:
        raise RunDirError(
            f"{' and '.join(existing)} {'exist' if len(existing) > 1 else 'exists'} (a part-map output "
            f"{str(pair[0])!r} writes the .npy and its .json manifest); pass --overwrite "
            "to replace them or choose another --out"
        )
