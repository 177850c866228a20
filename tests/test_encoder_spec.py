"""The one encoder-spec parser: every form, and the malformed timm form refused in one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from semmae.encoder_spec import EncoderSpec, parse_encoder_spec
from semmae.engine.rundir import check_out_holds_no_inputs
from semmae.errors import CheckpointError, RunDirError


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
