"""Atomic file writes: a crash, a full disk or a kill never leaves a torn or half-written file.

Every file the toolkit writes into a run directory, a part-map folder, an export or the data cache
goes through :func:`atomic_path` (checkpoints, exports, run markers, configs, part maps, unpacked
Fashion-MNIST). Bottom layer: no torch, no semmae imports.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _file_mode() -> int:
    """The mode an ordinary ``open(path, "w")`` gives a new file: 0o666 less the process umask."""
    mask = os.umask(0o022)  # reading the umask means setting it; it is put back at once
    os.umask(mask)
    return 0o666 & ~mask


# Read once at import: mkstemp's files are private (0o600), the files it stands in for are not.
FILE_MODE = _file_mode()


@contextmanager
def atomic_path(path: Path, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary file ``.NAME.<8 random characters><suffix>`` next to ``path`` to write; on success
    it is flushed to disk and renamed over ``path``, on failure removed, so ``path`` is either the old
    file or the whole new one. The temporary file exists (empty, mode :data:`FILE_MODE`) when the
    block starts."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, FILE_MODE)
        yield Path(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


@contextmanager
def scratch_dir_for(path: Path) -> Iterator[Path]:
    """A private folder ``.NAME.<8 random characters>.d`` next to ``path``, removed on exit.

    For a library writer that makes temporary files of its own beside its target (safetensors'
    ``save_file``): aimed into this folder, what a killed writer leaves is one folder that
    :func:`remove_stale_temps_of` recognises, not a file named by someone else.
    """
    with tempfile.TemporaryDirectory(prefix=f".{path.name}.", suffix=".d", dir=path.parent) as d:
        yield Path(d)


def remove_stale_temps_of(path: Path, suffix: str = ".tmp") -> None:
    """Delete the temporary files (and folders) of ``path`` that a killed writer left behind.

    Only names :func:`atomic_path` and :func:`scratch_dir_for` make for ``path`` match (``.NAME.`` +
    mkstemp's 8 characters + ``suffix``, or + ``.d`` for a folder); call it only where one process
    writes ``path`` at a time.
    """
    stem = rf"\.{re.escape(path.name)}\.[a-z0-9_]{{8}}"
    own_file, own_dir = re.compile(stem + re.escape(suffix)), re.compile(stem + r"\.d")
    if path.parent.is_dir():
        for entry in path.parent.iterdir():
            if entry.is_symlink():
                continue
            if own_file.fullmatch(entry.name) and entry.is_file():
                entry.unlink()
            elif own_dir.fullmatch(entry.name) and entry.is_dir():
                shutil.rmtree(entry)
