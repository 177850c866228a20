"""atomic_path: the target is either the old file or the whole new one, and no temp file stays."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

import pytest

from semmae.atomic import FILE_MODE, atomic_path, remove_stale_temps_of


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "last.pt"
    target.write_text("old")
    with pytest.raises(OSError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise OSError("disk full")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_a_write_replaces_the_file_and_creates_missing_folders(tmp_path: Path) -> None:
    target = tmp_path / "new" / "folder" / "config.yaml"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(".config.yaml.") and tmp.suffix == ".tmp"
        tmp.write_text("whole")
    assert target.read_text() == "whole"
    assert [p.name for p in target.parent.iterdir()] == ["config.yaml"]


def test_a_symlink_written_in_place_of_the_temp_file_is_moved_into_place(tmp_path: Path) -> None:
    source = tmp_path / "source.bin"
    source.write_bytes(b"data")
    target = tmp_path / "link.bin"
    with atomic_path(target) as tmp:
        tmp.unlink()
        tmp.symlink_to(source)
    assert target.is_symlink() and target.read_bytes() == b"data"


def test_written_files_get_the_mode_an_ordinary_write_gives(tmp_path: Path) -> None:
    mask = os.umask(0o022)
    os.umask(mask)
    assert FILE_MODE == 0o666 & ~mask
    target = tmp_path / "last.pt"
    with atomic_path(target) as tmp:
        tmp.write_text("x")
    assert stat.S_IMODE(target.stat().st_mode) == FILE_MODE


def test_only_the_temp_files_atomic_path_makes_for_that_file_are_stale(tmp_path: Path) -> None:
    target = tmp_path / "last.pt"
    fd, _ = tempfile.mkstemp(prefix=".last.pt.", suffix=".tmp", dir=tmp_path)  # a killed writer's
    os.close(fd)
    kept = [".last.pt.notmine.tmp", ".other.pt.abcd_123.tmp", ".last.pt.abcd_123.bak", "last.pt.abcd_123.tmp"]
    for name in kept:
        (tmp_path / name).write_text("x")
    remove_stale_temps_of(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept)
