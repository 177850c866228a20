"""The one encoder-spec parser: every form, and the malformed timm form refused in one line."""

from __future__ import annotations

import gzip
import tarfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from semmae.encoder_spec import EncoderSpec, check_encoder_files, check_weights_file, parse_encoder_spec
from semmae.engine.rundir import check_out_holds_no_inputs
from semmae.errors import CheckpointError, ConfigError, RunDirError


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("random:mae_vit_base", EncoderSpec("random", name="mae_vit_base")),
        (
            "timm:vit_base_patch16_224@w/a.safetensors",
            EncoderSpec("timm", "vit_base_patch16_224", Path("w/a.safetensors")),
        ),
        ("runs/x/checkpoints/last.pt", EncoderSpec("file", path=Path("runs/x/checkpoints/last.pt"))),
        ("timm_weights.pth", EncoderSpec("file", path=Path("timm_weights.pth"))),
    ],
)
def test_every_form_parses(spec: str, expected: EncoderSpec) -> None:
    assert parse_encoder_spec(spec) == expected


@pytest.mark.parametrize("spec", ["timm:vit_base_patch16_224", "timm:@w.pth", "timm:vit_base_patch16_224@"])
def test_malformed_timm_spec_is_refused(spec: str) -> None:
    with pytest.raises(CheckpointError, match="timm:MODEL_NAME@WEIGHTS_FILE"):
        parse_encoder_spec(spec)


def test_the_file_of_a_timm_spec_is_an_input_the_output_may_not_hold(tmp_path: Path) -> None:
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"")
    with pytest.raises(RunDirError):
        check_out_holds_no_inputs(tmp_path, [("--encoder", f"timm:vit_tiny_patch16_224@{weights}")])
    check_out_holds_no_inputs(tmp_path / "out", [("--encoder", "random:mae_vit_base")])


def _zip(path: Path) -> None:
    torch.save({"model": {"w": torch.ones(2)}}, path)


def _legacy(path: Path) -> None:
    torch.save({"model": {"w": torch.ones(2)}}, path, _use_new_zipfile_serialization=False)


def _tar(path: Path) -> None:  # the archive form of PyTorch before 0.4: let through to torch.load
    with tarfile.open(path, "w") as tar:
        tar.add(__file__, arcname="sys_info")


def _safetensors(path: Path) -> None:
    save_file({"w": torch.ones(2)}, str(path))


@pytest.mark.parametrize(
    ("write", "name"),
    [(_zip, "w.pt"), (_legacy, "w.pth"), (_tar, "w.tar"), (_safetensors, "w.safetensors"), (_zip, "w.bin")],
)
def test_every_weights_format_passes_the_check(tmp_path: Path, write, name: str) -> None:  # noqa: ANN001
    write(tmp_path / name)
    check_weights_file(tmp_path / name)
    check_encoder_files(f"timm:vit_tiny_patch16_224@{tmp_path / name}")


def _text(path: Path) -> None:
    path.write_text("model: not weights\n")


def _png(path: Path) -> None:
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))


def _gz(path: Path) -> None:
    path.write_bytes(gzip.compress(b"weights"))


def _binary(path: Path) -> None:
    path.write_bytes(bytes(range(200, 256)) * 4)


def _bad_header(path: Path) -> None:  # a header length past the end of the file
    path.write_bytes((10**9).to_bytes(8, "little") + b"{}")


@pytest.mark.parametrize(
    ("write", "name", "reason"),
    [
        (
            _text,
            "w.pt",
            "is not a weights file (it is text); give a torch checkpoint (.pt, .pth) or a .safetensors file",
        ),
        (_png, "w.pth", "(it is an image)"),
        (_gz, "w.pth.gz", "(it is gzip-compressed; decompress it first)"),
        (_binary, "w.pt", "(its first bytes match no known format)"),
        (_safetensors, "w.pt", "(it is a safetensors file: name it .safetensors)"),
        (_zip, "w.safetensors", "is not a safetensors file (it is a torch file: name it .pth)"),
        (_text, "w.safetensors", "is not a safetensors file (it is text)"),
        (_bad_header, "w.safetensors", "is not a safetensors file"),
        (lambda p: p.write_bytes(b""), "w.pt", "is empty"),
        (lambda p: p.mkdir(), "run", "is a folder; give the file"),
        (lambda p: None, "missing.pt", "not found"),
    ],
)
def test_a_file_that_holds_no_weights_is_refused_by_its_first_bytes(
    tmp_path: Path,
    write,
    name: str,
    reason: str,  # noqa: ANN001
) -> None:
    write(tmp_path / name)
    with pytest.raises(
        CheckpointError, match="^checkpoint .*" + reason.replace("(", r"\(").replace(")", r"\)")
    ):
        check_weights_file(tmp_path / name)


def test_a_random_encoder_names_no_file() -> None:
    check_encoder_files("random:mae_debug")  # nothing to read, nothing refused


def test_a_random_encoder_of_an_unknown_preset_is_refused_without_torch() -> None:
    with pytest.raises(ConfigError, match="unknown model 'nope'; known: mae_debug, mae_fmnist_tiny, "):
        check_encoder_files("random:nope")
