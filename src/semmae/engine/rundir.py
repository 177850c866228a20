"""Run directories (DESIGN.md §4): refuse to clobber, save the resolved config."""

from __future__ import annotations

import shutil
from pathlib import Path

from semmae import config as config_lib
from semmae.errors import RunDirError
from semmae.runtime import barrier, is_main


def prepare_run_dir(out: str | Path, cfg: config_lib.Config | None, *, resume: bool, overwrite: bool) -> Path:
    """Create or reuse ``out`` as a run directory.

    A non-empty directory is refused unless ``resume`` (continue the run in it) or ``overwrite``
    (delete it first). The resolved config is written to ``config.yaml`` (kept on resume).

    Args:
        out: the run directory.
        cfg: resolved config to save, or None.
        resume: continue a run already in ``out``.
        overwrite: wipe ``out`` first.

    Returns:
        The directory as a Path.

    Raises:
        RunDirError: non-empty without resume/overwrite, or both flags given, or not a directory.
    """
    path = Path(out)
    if resume and overwrite:
        raise RunDirError("use either --resume or --overwrite, not both")
    if path.exists() and not path.is_dir():
        raise RunDirError(f"output path {str(path)!r} exists and is not a directory")
    non_empty = path.is_dir() and any(path.iterdir())
    if non_empty and not (resume or overwrite):
        raise RunDirError(
            f"output directory {str(path)!r} is not empty; pass --resume to continue it or "
            "--overwrite to replace it"
        )
    if is_main():
        if non_empty and overwrite:
            shutil.rmtree(path)
        path.mkdir(parents=True, exist_ok=True)
        if cfg is not None and not (resume and (path / "config.yaml").exists()):
            config_lib.dump(cfg, path / "config.yaml")
    barrier()
    return path
