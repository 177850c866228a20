"""An advisory lock on a run directory, so two processes never write into the same one.

The lock is ``fcntl.flock`` on an open descriptor of ``RUN_DIR/.semmae.lock``: the kernel drops it
when the process dies, however it dies, so a lock file left by a killed process is simply taken
over. The file holds the holder's PID and host only for the refusal message. A process keeps the
lock until it exits; taking it again in the same process (a pipeline running its stages, tests
calling trainers in-process) is a no-op.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
from pathlib import Path

from semmae.errors import RunDirError

LOCK_NAME = ".semmae.lock"

# Resolved run directory -> open descriptor holding its lock (for the life of the process).
_HELD: dict[Path, int] = {}


def _holder(lock_path: Path) -> str:
    """'PID 123 on host h' from the lock file, or a vaguer phrase when it cannot be read."""
    try:
        info = json.loads(lock_path.read_text())
        return f"PID {int(info['pid'])} on host {info['host']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``fd`` (it may have been deleted or replaced)."""
    try:
        on_disk = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (on_disk.st_dev, on_disk.st_ino) == (held.st_dev, held.st_ino)


def acquire_run_lock(run_dir: str | Path) -> bool:
    """Lock the existing directory ``run_dir`` for this process.

    Args:
        run_dir: the run directory (must exist).

    Returns:
        True when this call took the lock, False when this process already held it.

    Raises:
        RunDirError: another live process holds the lock.
        OSError: the lock file cannot be created or written (read-only or full file system).
    """
    key = Path(run_dir).resolve()
    lock_path = key / LOCK_NAME
    fd = _HELD.get(key)
    if fd is not None:
        if _same_file(fd, lock_path):
            return False
        # The file was deleted under us (e.g. the directory was removed): lock the new one.
        os.close(_HELD.pop(key))
    for _ in range(5):
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunDirError(
                f"output directory {str(key)!r} is in use by {_holder(lock_path)}; wait for it or stop it"
            ) from None
        if _same_file(fd, lock_path):  # not unlinked by a process that released it a moment ago
            break
        os.close(fd)
    else:  # pragma: no cover - only under a storm of concurrent create/unlink
        raise RunDirError(f"could not lock output directory {str(key)!r}; try again")
    holder = json.dumps({"pid": os.getpid(), "host": socket.gethostname()}) + "\n"  # for refusal messages
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder.encode(), 0)
    except OSError:
        os.close(fd)
        raise
    _HELD[key] = fd
    return True


def _forget_in_child() -> None:
    """In a forked child (a DataLoader worker), close the copies of the lock descriptors.

    The lock belongs to the open file, which the parent's descriptor keeps locked; a child's copy
    would keep it locked after the parent dies (SIGKILL) until the orphaned workers notice, so an
    immediate ``--resume`` would be refused as "in use". Closing a copy releases nothing while
    the parent lives (``flock`` is released only when the last descriptor closes).
    """
    for fd in _HELD.values():
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()


os.register_at_fork(after_in_child=_forget_in_child)


def release_run_lock(run_dir: str | Path, *, remove: bool = False) -> None:
    """Drop this process's lock on ``run_dir`` (no-op if not held); ``remove`` also deletes the file.

    The file is deleted while still locked, so no other process can lock the old file after it.
    """
    key = Path(run_dir).resolve()
    fd = _HELD.pop(key, None)
    if fd is None:
        return
    if remove and _same_file(fd, key / LOCK_NAME):
        with contextlib.suppress(OSError):
            (key / LOCK_NAME).unlink()
    os.close(fd)


def holds_run_lock(run_dir: str | Path) -> bool:
    """Whether this process holds the lock of ``run_dir``."""
    key = Path(run_dir).resolve()
    fd = _HELD.get(key)
    return fd is not None and _same_file(fd, key / LOCK_NAME)


def may_be_held_elsewhere(run_dir: str | Path) -> bool:
    """Whether the lock file of ``run_dir`` names a live process other than this one, read only.

    A look that takes no lock (a probe could make a starting run see its directory in use). Another
    host, a PID since reused or an unreadable file count as held: the caller then leaves the verdict
    to :func:`acquire_run_lock`, which knows for sure.
    """
    lock_path = Path(run_dir) / LOCK_NAME
    if not lock_path.exists():
        return False
    try:
        info = json.loads(lock_path.read_text())
        pid, host = int(info["pid"]), info["host"]
    except (OSError, ValueError, KeyError, TypeError):
        return True
    if host != socket.gethostname():
        return True
    if pid == os.getpid():
        return False
    if not 0 < pid < 2**31:  # a damaged file: 0 and below would signal process groups
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):  # alive, another user's; a PID beyond the C type
        return True
    return True
