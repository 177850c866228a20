"""atomic_path: the target is either the old file or the whole new one, and no temp file stays."""

from __future__ import annotations

from pathlib import Path

import pytest

from semmae.atomic import atomic_path


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
