"""``--overwrite`` of a single-file output replaces only a file of the kind that output writes.

A user's notes named like a part-map output (``X.npy``/``X.json``), an export (``.safetensors``,
``.onnx``) or a drawing (``.png``) are refused in one line, with or without ``--overwrite``, and
stay byte for byte; a file of that kind, written by the command itself, is still replaced.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from semmae import config as config_lib
from semmae.cli.main import main
from semmae.errors import RunDirError

ROOT = Path(__file__).parents[2]
TOY = [str(ROOT / "configs" / "parts_toy.yaml"), "data.toy_size=64"]  # 32x32 toy-parts: an 8x8 grid
NOTES = b'{"my": "notes"}\n'
# A tiny part learner on 28x28 grey toy-parts and the random mae_debug backbone.
_PARTS = [
    "data.name=toy_parts", "data.image_size=28", "data.in_chans=1", "data.toy_size=16",
    "data.mean=[0.27]", "data.std=[0.18]", "parts.backbone=random:mae_debug", "parts.num_parts=4",
    "parts.batch_size=16", "parts.mlp_hidden=16", "parts.decoder_channels=8", "parts.style_dim=8",
    "parts.epochs=1", "parts.eval_limit=8", "parts.eval_kmeans=false", "parts.num_vis=1",
    "train.progress_bar=false", "train.device=cpu",
]  # fmt: skip


pytestmark = pytest.mark.usefixtures("single_thread")  # tests/conftest.py


def _from_masks(out: Path) -> list[str]:
    return [
        "parts",
        "from-masks",
        "--config",
        TOY[0],
        "--split",
        "train",
        "--grid",
        "8",
        "--out",
        str(out),
        TOY[1],
    ]


def _parts_export(out: Path, run: Path) -> list[str]:
    argv = ["parts", "export", "--run", str(run), "--split", "test", "--out", str(out)]
    return [*argv, "--device", "cpu", "--batch-size", "8"]


def _export(out: Path, fmt: str) -> list[str]:
    return ["export", "--checkpoint", "random:mae_debug", "--format", fmt, "--out", str(out), "--no-verify"]


def _show(out: Path, maps: Path) -> list[str]:
    return ["parts", "show", "--maps", str(maps), "--config", TOY[0], "--n", "2", "--out", str(out), TOY[1]]


# (command, --out, the user's file at an output path): the command's inputs need not exist, since
# the output is refused before any is read.
CASES = {
    "from-masks.json": (lambda d: _from_masks(d / "n"), "n.json"),
    "from-masks.npy": (lambda d: _from_masks(d / "n"), "n.npy"),
    "parts-export.json": (lambda d: _parts_export(d / "n", d / "no_run"), "n.json"),
    "parts-export.npy": (lambda d: _parts_export(d / "n.npy", d / "no_run"), "n.npy"),
    "export-timm": (lambda d: _export(d / "notes.safetensors", "timm"), "notes.safetensors"),
    "export-onnx": (lambda d: _export(d / "x.onnx", "onnx"), "x.onnx"),
    "parts-show": (lambda d: _show(d / "mine.png", d / "no_maps.npy"), "mine.png"),
}


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _one_line(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("semmae: error: "), captured.err
    assert "Traceback" not in captured.err + captured.out
    return err[0]


@pytest.mark.parametrize("overwrite", [False, True], ids=["plain", "overwrite"])
@pytest.mark.parametrize("case", list(CASES))
def test_a_users_file_at_an_output_path_is_refused_and_kept(
    tmp_path: Path, capsys, case: str, overwrite: bool
) -> None:
    argv, name = CASES[case]
    (tmp_path / name).write_bytes(NOTES)
    before = _snapshot(tmp_path)
    line = _one_line(capsys, [*argv(tmp_path), *(["--overwrite"] if overwrite else [])])
    assert repr(str(tmp_path / name)) in line, line
    assert "semmae did not write it; choose another --out" in line and "--overwrite" not in line, line
    assert _snapshot(tmp_path) == before  # byte for byte, and nothing new beside it


def test_the_library_refuses_a_users_file_too(tmp_path: Path) -> None:
    """The pipeline and the study call the writers directly: the check is theirs as well."""
    from semmae.models.export import run_export
    from semmae.parts.export import maps_from_masks

    (tmp_path / "n.json").write_bytes(NOTES)
    (tmp_path / "e.onnx").write_bytes(NOTES)
    before = _snapshot(tmp_path)
    cfg = config_lib.load(TOY[0], [TOY[1]])
    with pytest.raises(RunDirError, match="n.json' exists and is not a part-map manifest"):
        maps_from_masks(cfg, "train", 8, tmp_path / "n", overwrite=True)
    with pytest.raises(RunDirError, match="e.onnx' exists and is not an ONNX model"):
        run_export("random:mae_debug", "onnx", tmp_path / "e.onnx", overwrite=True)
    assert _snapshot(tmp_path) == before


def _replaced(capsys: pytest.CaptureFixture[str], argv: list[str], *paths: Path) -> None:
    """``argv`` writes ``paths``; again without --overwrite it is told to pass it; with it, it
    writes them anew."""
    assert main(argv) == 0
    assert "--overwrite" in _one_line(capsys, argv)
    for path in paths:
        os.utime(path, (0, 0))
    assert main([*argv, "--overwrite"]) == 0
    capsys.readouterr()
    assert all(path.stat().st_mtime > 0 for path in paths), [path.stat().st_mtime for path in paths]


def test_part_maps_of_semmae_are_replaced(tmp_path: Path, capsys) -> None:
    _replaced(capsys, _from_masks(tmp_path / "n"), tmp_path / "n.npy", tmp_path / "n.json")
    _replaced(capsys, _show(tmp_path / "grid.png", tmp_path / "n.npy"), tmp_path / "grid.png")


def test_an_export_of_part_maps_is_replaced(tmp_path: Path, capsys) -> None:
    from semmae.train.parts import run_parts_train

    run_parts_train(config_lib.load(None, _PARTS), tmp_path / "run")
    out = tmp_path / "maps"
    _replaced(capsys, _parts_export(out, tmp_path / "run"), out.with_suffix(".npy"), out.with_suffix(".json"))


@pytest.mark.parametrize(("fmt", "name"), [("timm", "e.safetensors"), ("onnx", "e.onnx")])
def test_an_export_of_semmae_is_replaced(tmp_path: Path, capsys, fmt: str, name: str) -> None:
    _replaced(capsys, _export(tmp_path / name, fmt), tmp_path / name)
