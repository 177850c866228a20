"""A full or read-only file system: one line, exit 2, nothing half-written, the last checkpoint intact.

Needs root to mount a small tmpfs (skipped otherwise, with the reason).
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from semmae.cli.main import main
from semmae.engine.lock import release_run_lock

TOY = [
    "data.name=toy_parts", "data.image_size=28", "data.in_chans=1", "data.toy_size=32", "data.mean=[0.27]",
    "data.std=[0.18]", "model.name=mae_debug", "train.device=cpu", "train.progress_bar=false",
    "train.knn_every_epochs=-1", "train.batch_size=16", "train.image_every_epochs=0",
]  # fmt: skip
CKPT_BYTES = 576 * 1024  # one mae_debug pretraining checkpoint (weights + AdamW state), measured


pytestmark = pytest.mark.usefixtures("single_thread")  # tests/conftest.py


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """``mount(size_kib, read_only=False)``: a fresh tmpfs under ``tmp_path``, unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mounted: list[Path] = []

    def mount(size_kib: int, read_only: bool = False) -> Path:
        point = tmp_path / f"fs{len(mounted)}"
        point.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(point)],
                              capture_output=True, text=True)  # fmt: skip
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(point)
        if read_only:
            subprocess.run(["mount", "-o", "remount,ro", str(point)], check=True)
        return point

    yield mount
    for point in mounted:
        release_run_lock(point / "run")
        subprocess.run(["umount", "-l", str(point)], check=False)


def _one_line(capsys: pytest.CaptureFixture[str], argv: list[str], needle: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("semmae: error: ") and needle in err[0], err
    return err[0]


def test_checkpoint_that_does_not_fit_keeps_the_previous_one(tmpfs, capsys) -> None:
    run = tmpfs(CKPT_BYTES * 3 // 2 // 1024 + 64) / "run"  # room for one checkpoint, not for a second
    argv = ["pretrain", "--out", str(run), *TOY, "train.ckpt_every_steps=1", "train.epochs=2"]
    err = _one_line(capsys, argv, str(run))
    assert "full" in err or "no space left" in err
    last = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert last["step"] >= 1 and all(torch.isfinite(v).all() for v in last["model"].values())
    assert not [p for p in run.rglob("*.tmp")], "temp files left behind"


def test_a_full_disk_at_start_leaves_no_empty_config(tmpfs, capsys) -> None:
    point = tmpfs(64)
    fd = os.open(point / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    _one_line(capsys, ["pretrain", "--out", str(point / "run"), *TOY], "no space left on device")
    assert not (point / "run" / "config.yaml").exists()
    assert not [p for p in point.rglob("*") if p.is_file() and p.name != "filler"]


def test_read_only_output(tmpfs, capsys) -> None:
    point = tmpfs(256, read_only=True)
    _one_line(capsys, ["pretrain", "--out", str(point / "run"), *TOY], "read-only file system")


def test_part_maps_that_do_not_fit_fail_at_once_and_keep_the_old_pair(tmpfs) -> None:
    point = tmpfs(64)
    (point / "maps.npy").write_bytes(b"old array")
    (point / "maps.json").write_text("old manifest")
    # In a child: writing a page of a memory map the disk has no room for is a SIGBUS, not an error.
    code = (
        "import errno\nfrom semmae.data.partmap_writer import PartMapWriter\ntry:\n"
        f"    PartMapWriter.create({str(point / 'maps.npy')!r}, num_images=10000, grid=(8, 8), "
        "dataset='d', split='train', image_size=28, num_parts=4, fingerprint='f')\n"
        "except OSError as e:\n    raise SystemExit(0 if e.errno == errno.ENOSPC else 3)\nraise SystemExit(4)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, (done.returncode, done.stderr)
    assert sorted(p.name for p in point.iterdir()) == ["maps.json", "maps.npy"]
    assert (point / "maps.npy").read_bytes() == b"old array" and (
        point / "maps.json"
    ).read_text() == "old manifest"
