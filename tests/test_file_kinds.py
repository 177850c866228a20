"""Telling a file's kind from its first bytes: what ``--overwrite`` of a single-file output may replace."""

from __future__ import annotations

import dataclasses
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import save_file

from semmae.errors import RunDirError
from semmae.file_kinds import (
    IMAGE_SUFFIXES,
    MANIFEST_MAX_BYTES,
    PART_MAP_MANIFEST_KEYS,
    is_image,
    is_of_kind,
    is_onnx,
    is_part_map_manifest,
    refuse_foreign_output,
    refuse_part_map_out,
)

NOTES = b"my notes: nothing semmae wrote\n"
# The first bytes torch.onnx.export (PyTorch 2.x) writes: ir_version 8, producer_name "pytorch".
TORCH_ONNX_HEAD = b"\x08\x08\x12\x07pytorch\x1a\x062.14.1:\xc6\xf5\x07"


def _manifest() -> dict:
    return {
        "format_version": 2, "dataset": "toy_parts", "split": "train", "num_images": 3, "image_size": 32,
        "grid": [8, 8], "num_parts": 4, "fingerprint": "f00d", "learner_hash": None,
        "created": "2024-01-01T00:00:00+00:00", "source": "oracle", "view": "whole",
    }  # fmt: skip


def test_the_manifest_keys_are_the_manifest_fields() -> None:
    from semmae.data.partmaps import PartMapManifest  # torch: only for this cross-check

    assert {f.name for f in dataclasses.fields(PartMapManifest)} - {"view"} == PART_MAP_MANIFEST_KEYS


def test_a_manifest_is_a_small_json_object_with_every_field(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    path.write_text(json.dumps(_manifest()))
    assert is_part_map_manifest(path)
    for other in (
        {"my": "notes"},
        {"format_version": 1},  # one field of a manifest is not a manifest
        sorted(PART_MAP_MANIFEST_KEYS),  # the names as a list, not an object
        "format_version",
    ):
        path.write_text(json.dumps(other))
        assert not is_part_map_manifest(path), other
    path.write_text("{not json")
    assert not is_part_map_manifest(path)
    path.write_text(json.dumps({**_manifest(), "pad": "x" * MANIFEST_MAX_BYTES}))  # too big to read
    assert not is_part_map_manifest(path)
    assert not is_part_map_manifest(tmp_path / "missing.json") and not is_part_map_manifest(tmp_path)


def test_npy_and_safetensors_by_their_first_bytes(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.zeros((2, 3, 3), np.uint8))
    save_file({"w": np.zeros(3, np.float32)}, str(tmp_path / "a.safetensors"))
    (tmp_path / "notes").write_bytes(NOTES)
    assert is_of_kind(tmp_path / "a.npy", "npy") and is_of_kind(tmp_path / "a.safetensors", "safetensors")
    assert not is_of_kind(tmp_path / "a.npy", "safetensors")
    assert not is_of_kind(tmp_path / "a.safetensors", "npy")
    for kind in ("npy", "safetensors", "onnx", "part-map manifest"):
        assert not is_of_kind(tmp_path / "notes", kind), kind  # type: ignore[arg-type]


def test_onnx_is_a_model_proto_with_ir_version_first() -> None:
    assert is_onnx(TORCH_ONNX_HEAD)
    assert is_onnx(b"\x08\x07\x3a\x10")  # ir_version 7, then the graph
    assert not is_onnx(NOTES) and not is_onnx(b"\x08") and not is_onnx(b"")
    assert not is_onnx(b"\x08\x08hello")  # a field tag ModelProto does not have
    assert not is_onnx(b"\x08\x80\x01\x12")  # an ir_version no ONNX release has (a two-byte varint)


@pytest.mark.parametrize("suffix", IMAGE_SUFFIXES)
def test_an_image_by_the_magic_its_suffix_names(suffix: str) -> None:
    buf = io.BytesIO()
    fmt = Image.registered_extensions()[suffix]
    Image.new("RGB", (4, 4), (200, 10, 10)).save(buf, format=fmt)
    assert is_image(buf.getvalue()[:512], suffix) and is_image(buf.getvalue()[:512], suffix.upper())
    assert not is_image(NOTES, suffix)
    other = ".bmp" if suffix != ".bmp" else ".png"
    assert not is_image(buf.getvalue()[:512], other)  # another format under this suffix is not ours


@pytest.mark.parametrize(
    ("name", "kind", "says"),
    [
        ("x.npy", "npy", "is not a NumPy array"),
        ("x.safetensors", "safetensors", "is not a safetensors file"),
        ("x.onnx", "onnx", "is not an ONNX model"),
        ("x.png", "image", "is not a PNG image"),
        ("x.json", "part-map manifest", "is not a part-map manifest"),
    ],
)
def test_a_foreign_file_is_refused_in_one_line(tmp_path: Path, name: str, kind: str, says: str) -> None:
    path = tmp_path / name
    path.write_bytes(NOTES)
    with pytest.raises(RunDirError) as info:
        refuse_foreign_output(path, kind)  # type: ignore[arg-type]
    msg = str(info.value)
    assert name in msg and says in msg and "semmae did not write it; choose another --out" in msg
    assert "--overwrite" not in msg and "\n" not in msg
    assert path.read_bytes() == NOTES
    refuse_foreign_output(tmp_path / "missing.npy", "npy")  # nothing there: nothing to refuse


def test_a_link_or_a_folder_is_never_ours(tmp_path: Path) -> None:
    real = tmp_path / "real.npy"
    np.save(real, np.zeros(2, np.uint8))
    (tmp_path / "link.npy").symlink_to(real)
    (tmp_path / "dangling.npy").symlink_to(tmp_path / "gone.npy")
    (tmp_path / "dir.npy").mkdir()
    for name, says in [
        ("link.npy", "symbolic link"),
        ("dangling.npy", "symbolic link"),
        ("dir.npy", "regular"),
    ]:
        with pytest.raises(RunDirError, match=f"{says}.*semmae did not write it; choose another --out"):
            refuse_foreign_output(tmp_path / name, "npy")
    refuse_foreign_output(real, "npy")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_file_is_refused_without_calling_it_foreign(tmp_path: Path) -> None:
    path = tmp_path / "x.npy"
    np.save(path, np.zeros(2, np.uint8))
    path.chmod(0)
    try:
        with pytest.raises(RunDirError, match="cannot be read"):
            refuse_foreign_output(path, "npy")
    finally:
        path.chmod(0o600)


def test_a_part_map_out_checks_both_files(tmp_path: Path) -> None:
    out = tmp_path / "maps"
    refuse_part_map_out(out, overwrite=False)  # nothing there
    np.save(tmp_path / "maps.npy", np.zeros((1, 2, 2), np.uint8))
    (tmp_path / "maps.json").write_text(json.dumps(_manifest()))
    with pytest.raises(RunDirError, match="'.*maps.npy' and '.*maps.json' exist .*pass --overwrite"):
        refuse_part_map_out(out, overwrite=False)
    refuse_part_map_out(out, overwrite=True)  # a whole pair of semmae's: replaceable
    (tmp_path / "maps.json").write_text('{"my": "notes"}')
    for overwrite in (False, True):
        with pytest.raises(RunDirError, match="maps.json' exists and is not a part-map manifest"):
            refuse_part_map_out(out, overwrite=overwrite)
