"""Atomic file writes: a crash, a full disk or a kill never leaves a torn or half-written file.

Every file the toolkit writes into a run directory, a part-map folder or the data cache goes
through :func:`atomic_path` (checkpoints, exports, run markers, configs, part maps, unpacked
Fashion-MNIST). Bottom layer: no torch, no semmae imports.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: Path, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary file ``.NAME.<random><suffix>`` next to ``path`` to write; on success it is
    flushed to disk and renamed over ``path``, on failure removed, so ``path`` is either the old
    file or the whole new one. The temporary file exists (empty) when the block starts."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
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
