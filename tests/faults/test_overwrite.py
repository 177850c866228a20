"""``--overwrite`` deletes only what semmae wrote, and never an input of the same command."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from semmae import config as config_lib
from semmae.cli.main import main
from semmae.engine import rundir, runfiles
from semmae.engine.lock import release_run_lock
from semmae.engine.rundir import MARKER, first_foreign_entry, prepare_run_dir
from semmae.errors import RunDirError
from semmae.file_kinds import PART_MAP_MANIFEST_KEYS
from semmae.models import build_mae

TOY = [
    "data.name=toy_parts", "data.image_size=28", "data.in_chans=1", "data.toy_size=32", "data.mean=[0.27]",
    "data.std=[0.18]", "model.name=mae_debug", "train.device=cpu", "train.progress_bar=false",
    "train.knn_every_epochs=-1", "train.batch_size=16", "train.image_every_epochs=0",
]  # fmt: skip


pytestmark = pytest.mark.usefixtures("single_thread")  # tests/conftest.py


def _snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` with its bytes (None for directories)."""
    return {str(p.relative_to(root)): None if p.is_dir() else p.read_bytes() for p in sorted(root.rglob("*"))}


def _refused(capsys: pytest.CaptureFixture[str], argv: list[str], needle: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("semmae: error: ") and needle in err[0], err
    return err[0]


def _toolkit_run(root: Path) -> Path:
    """A run directory with what a finished pretraining leaves (marker, config, checkpoint, logs)."""
    cfg = config_lib.load(None, TOY)
    prepare_run_dir(root, cfg, resume=False, overwrite=False)
    release_run_lock(root)
    mae = build_mae("mae_debug")
    (root / "checkpoints").mkdir()
    torch.save({"kind": "mae", "model": mae.state_dict(), "arch": mae.arch, "config": cfg.to_dict()},
               root / "checkpoints" / "last.pt")  # fmt: skip
    (root / "metrics.jsonl").write_text('{"step": 1, "loss": 0.5}\n')
    (root / "summary.json").write_text("{}\n")
    (root / "tb").mkdir()
    (root / "tb" / "events.out.tfevents.1.host").write_bytes(b"\x00")
    (root / "images").mkdir()
    (root / "images" / "recon_epoch_0001.png").write_bytes(b"png")
    return root


def test_a_foreign_directory_is_refused_and_kept_byte_identical(tmp_path: Path, capsys) -> None:
    mine = tmp_path / "thesis"
    (mine / "sub").mkdir(parents=True)
    (mine / "thesis.tex").write_text("\\documentclass{article}")
    (mine / "sub" / "data.csv").write_text("a,b\n1,2\n")
    before = _snapshot(mine)
    _refused(capsys, ["pretrain", "--out", str(mine), "--overwrite", *TOY], "semmae did not write")
    assert _snapshot(mine) == before


@pytest.mark.parametrize(
    "name", ["notes.txt", "my_best_copy.pt", "epoch_best.pt", "epoch_1_mine.pt", "epoch_12.pt"]
)
def test_a_foreign_file_inside_a_run_is_refused(tmp_path: Path, capsys, name: str) -> None:
    # A user's own checkpoint copy is theirs although it ends in .pt: only last.pt, epoch_N.pt and
    # nonfinite.pt are the toolkit's.
    run = _toolkit_run(tmp_path / "run")
    (run / "checkpoints" / name).write_text("keep me")
    before = _snapshot(run)
    err = _refused(capsys, ["pretrain", "--out", str(run), "--overwrite", *TOY], "semmae did not write")
    assert name in err and _snapshot(run) == before


@pytest.mark.parametrize(
    "text", ['{"format_version": 3, "mine": true}', '["format_version"]', '"format_version?"']
)
def test_a_json_that_only_mentions_a_manifest_field_is_not_a_manifest(tmp_path: Path, text: str) -> None:
    # A part-map manifest is an object with every field; a note naming one of them is the user's.
    run = _toolkit_run(tmp_path / "run")
    (run / "notes.json").write_text(text)
    assert runfiles.first_foreign_entry(run) == run / "notes.json"


def test_every_checkpoint_name_the_loop_writes_counts_as_the_toolkits(tmp_path: Path) -> None:
    run = _toolkit_run(tmp_path / "run")
    for name in ("epoch_0001.pt", "epoch_12345.pt", "nonfinite.pt", ".last.pt.x1y2.tmp"):
        (run / "checkpoints" / name).write_bytes(b"")
    assert runfiles.first_foreign_entry(run) is None


def test_out_holding_the_config_file_is_refused(tmp_path: Path, capsys) -> None:
    run = _toolkit_run(tmp_path / "run")
    before = _snapshot(run)
    argv = ["pretrain", "--config", str(run / "config.yaml"), "--out", str(run), "--overwrite", *TOY]
    _refused(capsys, argv, "holds the --config file")
    assert _snapshot(run) == before


def test_out_holding_the_checkpoint_being_read_is_refused(tmp_path: Path, capsys) -> None:
    run = _toolkit_run(tmp_path / "run")
    before = _snapshot(run)
    ckpt = str(run / "checkpoints" / "last.pt")
    argv = ["eval", "finetune", "--checkpoint", ckpt, "--out", str(run), "--overwrite", *TOY]
    _refused(capsys, argv, "holds the --checkpoint")
    assert _snapshot(run) == before
    out = str(run / "checkpoints" / "last.pt")  # an export writes only a file of its format's suffix
    _refused(
        capsys,
        ["export", "--checkpoint", ckpt, "--format", "timm", "--out", out, "--overwrite"],
        "writes a .safetensors file",
    )
    assert _snapshot(run) == before


def test_out_holding_the_backbone_is_refused(tmp_path: Path, capsys) -> None:
    run = _toolkit_run(tmp_path / "run")
    before = _snapshot(run)
    backbone = f"parts.backbone={run / 'checkpoints' / 'last.pt'}"
    _refused(
        capsys, ["parts", "train", "--out", str(run), "--overwrite", *TOY, backbone], "holds parts.backbone"
    )
    assert _snapshot(run) == before


def test_library_callers_name_their_inputs(tmp_path: Path) -> None:
    run = _toolkit_run(tmp_path / "run")
    before = _snapshot(run)
    cfg = config_lib.load(None, TOY)
    cfg.masking.parts = str(run / "maps.npy")  # inputs named by the config are checked too
    with pytest.raises(RunDirError, match="holds masking.parts"):
        prepare_run_dir(run, cfg, resume=False, overwrite=True)
    with pytest.raises(RunDirError, match="holds the encoder"):
        prepare_run_dir(run, None, resume=False, overwrite=True, inputs={"the encoder": run / "checkpoints"})
    assert _snapshot(run) == before


def test_a_toolkit_run_is_replaced(tmp_path: Path, capsys) -> None:
    run = _toolkit_run(tmp_path / "run")
    stage = run / "export"  # a pipeline stage: part maps with their manifest
    stage.mkdir()
    (stage / "parts_train.npy").write_bytes(b"\x93NUMPY")
    manifest = dict.fromkeys(PART_MAP_MANIFEST_KEYS, None)  # every field: a manifest, as semmae writes
    (stage / "parts_train.json").write_text(json.dumps({**manifest, "format_version": 2}))
    (stage / "DONE.json").write_text("{}")
    assert runfiles.first_foreign_entry(run) is None
    assert main(["pretrain", "--out", str(run), "--overwrite", *TOY, "train.max_steps=1"]) == 0
    capsys.readouterr()
    assert not stage.exists() and (run / MARKER).is_file()
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["step"] == 1


def test_a_directory_without_marker_or_run_files_is_not_a_run(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.yaml").write_text("train:\n  epochs: 3\n")  # the user's own, not a run's
    with pytest.raises(RunDirError, match="semmae did not write"):
        prepare_run_dir(mine, None, resume=False, overwrite=True)
    assert (mine / "config.yaml").read_text() == "train:\n  epochs: 3\n"


def test_a_symlink_is_never_followed(tmp_path: Path) -> None:
    run = _toolkit_run(tmp_path / "run")
    elsewhere = tmp_path / "precious"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("x")
    (run / "images" / "link").symlink_to(elsewhere)
    with pytest.raises(RunDirError, match="link"):
        prepare_run_dir(run, None, resume=False, overwrite=True)
    assert (elsewhere / "keep.txt").read_text() == "x"


def test_resume_into_a_foreign_directory_writes_nothing(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("x")
    with pytest.raises(RunDirError, match="holds no semmae run to resume"):
        prepare_run_dir(mine, config_lib.load(None, TOY), resume=True, overwrite=False)
    assert [p.name for p in mine.iterdir()] == ["thesis.tex"]


def test_a_removal_the_file_system_refuses_leaves_the_run_whole(tmp_path: Path, monkeypatch, capsys) -> None:
    run = _toolkit_run(tmp_path / "run")
    before = _snapshot(run)
    real_rename = os.rename

    def rename(src, dst):  # the last entry in sorted order ("tb") is on a read-only mount, say
        if Path(src).name == "tb":
            raise PermissionError(13, "Permission denied")
        return real_rename(src, dst)

    monkeypatch.setattr(rundir.os, "rename", rename)
    line = _refused(capsys, ["pretrain", "--out", str(run), "--overwrite", *TOY, "train.max_steps=1"], "tb")
    assert "nothing was deleted" in line and "Permission denied" in line
    assert _snapshot(run) == before  # the entries moved before "tb" are back; no hidden folder left


def test_an_overwrite_killed_midway_is_finished_by_the_next_start(tmp_path: Path) -> None:
    run = _toolkit_run(tmp_path / "run")
    trash = run / f"{rundir.TRASH_PREFIX}abc.tmp"  # the entries had been moved; the process died
    trash.mkdir()
    for name in ("checkpoints", "metrics.jsonl", "tb"):
        (run / name).rename(trash / name)
    assert first_foreign_entry(run) is None  # so --overwrite is not refused for it
    prepare_run_dir(run, None, resume=False, overwrite=True)
    release_run_lock(run)
    assert not trash.exists() and not (run / "checkpoints").exists()


def test_a_folder_named_like_the_overwrite_folder_but_holding_a_users_file_is_kept(tmp_path: Path) -> None:
    run = _toolkit_run(tmp_path / "run")
    trash = run / f"{rundir.TRASH_PREFIX}abc.tmp"
    trash.mkdir()
    (trash / "thesis.tex").write_text("x")
    prepare_run_dir(run, None, resume=True, overwrite=False)
    release_run_lock(run)
    with pytest.raises(RunDirError, match="thesis.tex"):
        prepare_run_dir(run, None, resume=False, overwrite=True)
    assert (trash / "thesis.tex").read_text() == "x"


def test_a_users_config_yaml_beside_run_like_names_is_not_a_run(tmp_path: Path, capsys) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.yaml").write_text("lr: 0.1\n")  # the user's own files, named as a run's are
    (mine / "summary.json").write_text('{"acc": 0.93}\n')
    (mine / "results.jsonl").write_text('{"acc": 0.93}\n')
    before = _snapshot(mine)
    _refused(
        capsys, ["pretrain", "--out", str(mine), "--overwrite", *TOY, "train.max_steps=1"], "did not write"
    )
    _refused(capsys, ["pretrain", "--out", str(mine), "--resume", *TOY, "train.max_steps=1"], "no semmae run")
    assert _snapshot(mine) == before


def test_a_run_written_before_markers_is_still_recognised(tmp_path: Path) -> None:
    run = _toolkit_run(tmp_path / "run")
    (run / MARKER).unlink()
    assert runfiles.is_toolkit_dir(run)  # its config.yaml is a whole resolved config
    prepare_run_dir(run, None, resume=False, overwrite=True)
    release_run_lock(run)
    assert not (run / "checkpoints").exists()


def test_resuming_with_a_config_that_changes_the_computation_is_refused(tmp_path: Path) -> None:
    """What keeps a pipeline or study from training its remaining stages with other settings."""
    run = _toolkit_run(tmp_path / "run")  # config.yaml: TOY, as the run saved it
    before = _snapshot(run)
    changed = config_lib.load(None, [*TOY, "masking.ratio=0.5", "train.base_lr=0.1"])
    with pytest.raises(
        RunDirError, match=r"other values of masking\.ratio, train\.base_lr; resume with its own"
    ):
        prepare_run_dir(run, changed, resume=True, overwrite=False)
    assert _snapshot(run) == before
    longer = config_lib.load(None, [*TOY, "train.epochs=9", "train.device=cpu", "pipeline.seeds=[1]"])
    prepare_run_dir(run, longer, resume=True, overwrite=False)  # how long, where: may change
    release_run_lock(run)
    with pytest.raises(
        RunDirError, match=r"other values of train\.epochs"
    ):  # a pipeline's stages: not longer
        prepare_run_dir(run, longer, resume=True, overwrite=False, same_length=True)


def test_a_rank_other_than_the_main_one_raises_the_main_ones_refusal(tmp_path: Path, monkeypatch) -> None:
    """Under torchrun only rank 0 opens --out; the others learn its outcome from a broadcast."""
    sent: list[object] = []
    monkeypatch.setattr(rundir, "is_main", lambda: False)
    monkeypatch.setattr(
        rundir, "broadcast_object", lambda obj: sent.append(obj) or "output directory 'x' is in use"
    )
    with pytest.raises(RunDirError, match="output directory 'x' is in use"):
        prepare_run_dir(tmp_path / "run", None, resume=False, overwrite=False)
    assert sent == [None] and not (tmp_path / "run").exists()  # it sent nothing and touched nothing
    monkeypatch.setattr(rundir, "broadcast_object", lambda obj: None)  # the main rank succeeded
    assert prepare_run_dir(tmp_path / "run", None, resume=False, overwrite=False) == tmp_path / "run"


def test_a_run_saved_before_a_config_key_existed_resumes(tmp_path: Path) -> None:
    """A key added later (data.decode, say) ran with its default: not a change."""
    import yaml

    from semmae.engine.state import changed_config_keys

    run = _toolkit_run(tmp_path / "run")
    saved = yaml.safe_load((run / "config.yaml").read_text())
    del saved["data"]["decode"]
    (run / "config.yaml").write_text(yaml.safe_dump(saved))
    cfg = config_lib.load(None, TOY)
    assert changed_config_keys(saved, cfg.to_dict()) == []
    prepare_run_dir(run, cfg, resume=True, overwrite=False)
    release_run_lock(run)
    other = config_lib.load(None, [*TOY, "data.decode=device", "data.name=image_folder", "data.root=x"])
    assert "data.decode" in changed_config_keys(saved, other.to_dict())  # a real change still counts


def test_a_new_run_into_a_users_folder_says_to_choose_another_out(tmp_path: Path, capsys) -> None:
    # Neither flag would help there (--resume finds no run, --overwrite deletes nothing of the user's).
    mine = tmp_path / "thesis"
    mine.mkdir()
    (mine / "thesis.tex").write_text("mine")
    err = _refused(capsys, ["pretrain", "--out", str(mine), *TOY], "holds no semmae run")
    assert "('thesis.tex' is not semmae's); choose another --out" in err and "--resume" not in err
    run = _toolkit_run(tmp_path / "run")
    err = _refused(capsys, ["pretrain", "--out", str(run), *TOY], "is not empty")
    assert "pass --resume to continue it or --overwrite to replace it" in err
    # A run with a user's file in it: --overwrite would refuse to delete that file, so only --resume.
    (run / "thesis.tex").write_text("mine")
    err = _refused(capsys, ["pretrain", "--out", str(run), *TOY], "holds a semmae run and 'thesis.tex'")
    assert "pass --resume to continue the run, or choose another --out" in err and "--overwrite" not in err
    assert (run / "thesis.tex").read_text() == "mine"


def test_kept_epoch_checkpoints_are_the_loops_by_epoch(tmp_path: Path) -> None:
    # A user's epoch_best.pt is not one of them, and epoch 10000 comes after epoch 9999.
    for name in ("epoch_10000.pt", "epoch_9999.pt", "epoch_best.pt", "epoch_1_mine.pt", "last.pt"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in runfiles.kept_epoch_checkpoints(tmp_path)] == ["epoch_9999.pt", "epoch_10000.pt"]
