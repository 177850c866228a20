"""Atomic file writes: a crash, a full disk or a kill never leaves a torn or half-written file.

Every file the toolkit writes into a run directory, a part-map folder, an export or the data cache
goes through :func:`atomic_path` (checkpoints, exports, run markers, configs, part maps, unpacked
Fashion-MNIST). Bottom layer: no torch, no semmae imports.
"""

from __future__ import annotations

import os
import re
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


def remove_stale_temps_of(path: Path, suffix: str = ".tmp") -> None:
    """Delete the temporary files of ``path`` that a killed :func:`atomic_path` writer left behind.

    Only names :func:`atomic_path` makes for ``path`` match (``.NAME.`` + mkstemp's 8 characters +
    ``suffix``); call it only where one process writes ``path`` at a time.
    """
    own = re.compile(rf"\.{re.escape(path.name)}\.[a-z0-9_]{{8}}{re.escape(suffix)}")
    if path.parent.is_dir():
        for entry in path.parent.iterdir():
            if own.fullmatch(entry.name) and entry.is_file() and not entry.is_symlink():
                entry.unlink()
