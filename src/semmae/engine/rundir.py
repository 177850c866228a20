"""Run directories (DESIGN.md §4): a marker, a lock, no clobbering, the resolved config.

Every run directory the toolkit creates holds a small ``.semmae-run`` marker and, while a process
uses it, the lock file of :mod:`semmae.engine.lock`. ``--overwrite`` deletes only what the toolkit
writes into run directories (as :mod:`semmae.engine.runfiles` recognises it) and refuses, before deleting anything, a directory holding anything else or one
that holds an input of the same command.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from semmae import __version__
from semmae import config as config_lib
from semmae.atomic import atomic_path
from semmae.config_checks import read_recipe
from semmae.encoder_spec import parse_encoder_spec
from semmae.engine.lock import LOCK_NAME, acquire_run_lock, release_run_lock
from semmae.engine.runfiles import (
    MARKER,
    TEMP_PATTERN,
    TRASH_PATTERN,
    TRASH_PREFIX,
    early_log,
    first_foreign_entry,
    is_temp,
    is_toolkit_dir,
    is_trash,
    only_a_failed_start,
    refuse_occupied_out,
)
from semmae.engine.state import LAST, changed_config_keys
from semmae.errors import RunDirError, SemmaeError
from semmae.runtime import broadcast_object, is_main

log = logging.getLogger(__name__)

# What a command reads, as (what, path) pairs: ("--checkpoint", "runs/mae/checkpoints/last.pt").
Inputs = Sequence[tuple[str, "str | os.PathLike[str] | None"]]


def _drop_early_logs(path: Path) -> None:
    """Remove the logs of a start that never reached a checkpoint, so a new start begins clean."""
    logs = [e for e in path.iterdir() if early_log(e)]
    if logs:
        log.info(
            "%s never reached a checkpoint; removing its logs (%s)", path, ", ".join(e.name for e in logs)
        )
    for entry in logs:
        if entry.is_dir():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def has_checkpoint(path: str | Path) -> bool:
    """Whether the run directory ``path`` holds ``checkpoints/last.pt``, i.e. a run ``--resume`` can
    continue (trainers given ``resume=True`` start from scratch, as :func:`prepare_run_dir` logs, when not)."""
    return (Path(path) / LAST).is_file()


def config_inputs(cfg: config_lib.Config | None) -> dict[str, str | None]:
    """Files and folders ``cfg`` makes a command read, by config key."""
    if cfg is None:
        return {}
    return {
        "data.root": cfg.data.root,
        "masking.parts": cfg.masking.parts,
        "parts.backbone": cfg.parts.backbone,
    }


def _input_path(spec: str | os.PathLike[str]) -> Path | None:
    path = parse_encoder_spec(os.fspath(spec)).path  # a random: encoder reads no file
    return path.expanduser().resolve() if path is not None else None


def check_out_holds_no_inputs(out: str | Path, inputs: Inputs) -> None:
    """Refuse an output path that is, or contains, something the same command reads.

    Args:
        out: the output directory or file.
        inputs: ``(what, path)`` pairs: what the command reads, named by its option or config key.

    Raises:
        RunDirError: ``out`` equals or contains one of ``inputs``.
    """
    target = Path(out).expanduser().resolve()
    for what, spec in inputs:
        path = _input_path(spec) if spec else None
        if path is not None and (path == target or target in path.parents):
            raise RunDirError(
                f"--out {str(out)!r} holds {what} {os.fspath(spec)!r}, which this command reads; "
                "--overwrite would delete it: choose another --out"
            )


def remove_stale_temps(path: Path) -> None:
    """Delete temp files left by atomic writes of a killed process (``.last.pt.*.tmp``, ...)."""
    for folder in (path, path / "checkpoints"):
        if folder.is_dir():
            for tmp in filter(is_temp, folder.glob(TEMP_PATTERN)):
                log.info("removing %s, left by an interrupted write", tmp)
                tmp.unlink()


def _clear(path: Path, inputs: Inputs) -> None:
    """Delete the toolkit's entries in ``path`` for ``--overwrite``, refusing first if anything is not."""
    check_out_holds_no_inputs(path, inputs)
    entries = [e for e in path.iterdir() if e.name != LOCK_NAME]
    if not entries:
        return
    foreign = first_foreign_entry(path) if is_toolkit_dir(path) else next(iter(sorted(entries)))
    if foreign is not None:
        raise RunDirError(
            f"refusing to --overwrite {str(path)!r}: it holds {str(foreign)!r}, which semmae did not write; "
            "move it away or choose another --out"
        )
    for lock in path.rglob(LOCK_NAME):  # a stage directory another process is using
        if lock.parent != path:
            acquire_run_lock(lock.parent)
    _remove_all_or_none(path, sorted(entries))


def _remove_all_or_none(path: Path, entries: list[Path]) -> None:
    """Delete ``entries`` of ``path``: all, or (where the file system refuses one) none.

    Each is first renamed into a hidden folder of ``path``; a refused rename puts back those
    already moved, so a run the file system will not let us replace stays whole. The folder is
    deleted once everything is in it (a stale one, left by a killed process, at the next start).
    """
    try:
        trash = Path(tempfile.mkdtemp(prefix=TRASH_PREFIX, suffix=".tmp", dir=path))
    except OSError as exc:
        raise RunDirError(
            f"cannot --overwrite {str(path)!r}: {exc.strerror or exc}; nothing was deleted"
        ) from exc
    moved: list[Path] = []
    try:
        for entry in entries:
            os.rename(entry, trash / entry.name)
            moved.append(entry)
    except OSError as exc:
        for back in reversed(moved):
            os.rename(trash / back.name, back)
        trash.rmdir()
        raise RunDirError(
            f"cannot --overwrite {str(path)!r}: {str(entry)!r} cannot be removed ({exc.strerror or exc}); "
            "nothing was deleted"
        ) from exc
    shutil.rmtree(trash, ignore_errors=True)  # all moved: the run is replaced even if some stay
    if trash.exists():  # a file held open on NFS, say; the next start tries again
        log.warning("could not delete all of %s; the next start removes it", trash)


def _remove_stale_trash(path: Path) -> None:
    """Finish the ``--overwrite`` of a process killed between moving a run's files and deleting them."""
    for trash in filter(is_trash, path.glob(TRASH_PATTERN)):
        if first_foreign_entry(trash) is None:
            log.info("removing %s, left by an interrupted --overwrite", trash)
            shutil.rmtree(trash)


def _check_same_computation(path: Path, cfg: config_lib.Config, same_length: bool) -> None:
    """Refuse to resume ``path`` with a config that changes what its run computes.

    The run's own ``config.yaml`` is the reference: a pipeline or study whose finished stages are
    kept would otherwise train its remaining stages with other settings, and say nothing. With
    ``same_length`` (pipelines, studies) the training length may not change either: the stages
    already trained set it for the others.
    """
    try:
        saved = read_recipe(path / "config.yaml")
    except SemmaeError:
        return  # no readable record (a run from before config.yaml): the checkpoints still check
    if not isinstance(saved, dict):
        return
    changed = changed_config_keys(saved, cfg.to_dict())
    if same_length:
        ran = saved.get("train") or {}
        changed += [
            f"train.{k}" for k in ("epochs", "max_steps") if k in ran and ran[k] != getattr(cfg.train, k)
        ]
    if changed:
        shown = ", ".join(changed[:4]) + (f" and {len(changed) - 4} more" if len(changed) > 4 else "")
        raise RunDirError(
            f"{str(path)!r} was started with other values of {shown}; resume with its own config "
            f"(--config {path / 'config.yaml'}) or start a new --out"
        )


def _prepare_locked(
    path: Path,
    cfg: config_lib.Config | None,
    resume: bool,
    overwrite: bool,
    inputs: Inputs,
    same_length: bool,
) -> None:
    """The checks and writes of :func:`prepare_run_dir`, with ``path`` existing and locked."""
    _remove_stale_trash(path)
    fresh = only_a_failed_start(path)
    if overwrite:
        _clear(path, inputs)
    elif not fresh and not resume:
        refuse_occupied_out(path)
    elif resume and not fresh and not is_toolkit_dir(path):
        raise RunDirError(
            f"output directory {str(path)!r} holds no semmae run to resume (no {MARKER} marker, no checkpoint); "
            "choose another --out"
        )
    elif resume and fresh:
        log.info("nothing to resume in %s (no checkpoint yet): starting from scratch", path)
    if resume and not fresh and cfg is not None:
        _check_same_computation(path, cfg, same_length)
    if fresh and not overwrite:
        _drop_early_logs(path)
    remove_stale_temps(path)
    if not (path / MARKER).is_file():
        stamp = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        with atomic_path(path / MARKER) as tmp:
            tmp.write_text(json.dumps({"semmae": __version__, "created": stamp}) + "\n")
    if cfg is not None and not (resume and not fresh and (path / "config.yaml").exists()):
        with atomic_path(path / "config.yaml") as tmp:
            config_lib.dump(cfg, tmp)


def _undo_start(path: Path, exc: BaseException, *, took: bool, lock_existed: bool, created: bool) -> None:
    """After a refused or failed start: leave ``path`` as it was (no lock file, no new directory)."""
    if took:
        release_run_lock(path, remove=not lock_existed)
    elif not lock_existed and not isinstance(exc, RunDirError):  # a lock file we could not write
        with contextlib.suppress(OSError):
            (path / LOCK_NAME).unlink()
    if created:
        with contextlib.suppress(OSError):
            for name in (MARKER, "config.yaml"):
                (path / name).unlink(missing_ok=True)
            path.rmdir()


def prepare_run_dir(
    out: str | Path,
    cfg: config_lib.Config | None,
    *,
    resume: bool,
    overwrite: bool,
    inputs: Mapping[str, str | os.PathLike[str] | None] | Iterable[str | os.PathLike[str]] = (),
    same_length: bool = False,
) -> Path:
    """Create or reuse ``out`` as a run directory, locked by this process until it exits.

    An empty directory, or one left by a start that failed before its first checkpoint (see
    :func:`_only_a_failed_start`), is used as is; any other is refused unless ``resume`` (continue
    the run in it) or ``overwrite`` (delete the toolkit's files in it; refused when it holds any
    other file or any of ``inputs``). The resolved config is written atomically to ``config.yaml``
    (kept on resume). Only the main rank touches the file system.

    Args:
        out: the run directory.
        cfg: resolved config to save, or None; the files it names are inputs too.
        resume: continue a run already in ``out``.
        overwrite: replace the run in ``out``.
        inputs: further files or folders the caller reads (by name, or a plain list).
        same_length: on resume, ``train.epochs`` and ``max_steps`` must not change either (a pipeline or
            study: its finished stages were trained that long).

    Returns:
        The directory as a Path.

    Raises:
        RunDirError: not empty without resume/overwrite, both flags, not a directory, in use by
            another process, or ``overwrite`` refused.
        OSError: the file system refuses a write (read-only, full).
    """
    path = Path(out)
    if resume and overwrite:
        raise RunDirError("use either --resume or --overwrite, not both")
    if path.exists() and not path.is_dir():
        raise RunDirError(
            f"output path {str(path)!r} exists and is not a directory; a run needs a folder: choose another --out"
        )
    failure: BaseException | None = None
    if is_main():
        named = list(inputs.items()) if isinstance(inputs, Mapping) else [("an input", p) for p in inputs]
        named += [(k, v) for k, v in config_inputs(cfg).items() if v]
        created = not path.exists()
        took = lock_existed = False
        try:
            path.mkdir(parents=True, exist_ok=True)
            lock_existed = (path / LOCK_NAME).exists()
            took = acquire_run_lock(path)
            _prepare_locked(path, cfg, resume, overwrite, named, same_length)
        except BaseException as exc:
            _undo_start(path, exc, took=took, lock_existed=lock_existed, created=created)
            failure = exc
    # Every rank learns the main one's outcome (this is also the barrier), so a refusal stops each
    # with the same message instead of leaving the others waiting for a rank that has stopped.
    refused = broadcast_object(None if failure is None else str(failure))
    if failure is not None:
        raise failure
    if refused is not None:
        raise RunDirError(str(refused))
    return path
