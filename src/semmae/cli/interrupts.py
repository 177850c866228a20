"""Ctrl-C at start-up: never inside an import, where a library could swallow it.

Starting a command imports PyTorch and friends for about a second. A ``KeyboardInterrupt`` raised
in the middle of an import can be caught by a library's broad ``except`` clause: the module is
left half-initialised (a later ``AttributeError: module 'numpy' has no attribute ...``) or the
Ctrl-C is lost and the run goes on. While :func:`interrupts_outside_imports` is active, SIGINT
raises ``KeyboardInterrupt`` as usual unless an import is running; then it is raised as soon as
the import has finished; a second Ctrl-C while one waits is raised at once (a hung import can
still be interrupted). The training loop installs its own handler (a graceful stop) on top.
"""

from __future__ import annotations

import _thread
import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

RETRY_S = 0.02  # how soon a deferred Ctrl-C is tried again
_IMPORT_MACHINERY = ("<frozen importlib._bootstrap>", "<frozen importlib._bootstrap_external>")


def importing(frame: FrameType | None) -> bool:
    """Whether ``frame`` or one of its callers belongs to Python's import machinery."""
    while frame is not None:
        if frame.f_code.co_filename in _IMPORT_MACHINERY:
            return True
        frame = frame.f_back
    return False


class _Deferred:
    """The state of one deferred Ctrl-C: whether one waits, and the timer that retries it."""

    pending = False
    retrying = False
    timer: threading.Timer | None = None


def _retry() -> None:
    _Deferred.retrying = True
    _thread.interrupt_main()  # runs _handle in the main thread, as a real SIGINT would


def _handle(signum: int, frame: FrameType | None) -> None:
    retry, _Deferred.retrying = _Deferred.retrying, False
    if importing(frame) and not (_Deferred.pending and not retry):
        _Deferred.pending = True  # try again shortly, once the import has finished
        _Deferred.timer = threading.Timer(RETRY_S, _retry)
        _Deferred.timer.daemon = True
        _Deferred.timer.start()
        return
    _Deferred.pending = False  # outside an import, or pressed a second time while one waited
    raise KeyboardInterrupt


@contextlib.contextmanager
def interrupts_outside_imports() -> Iterator[None]:
    """SIGINT raises ``KeyboardInterrupt`` only outside imports, within the ``with`` block.

    Inert outside the main thread (only it can install signal handlers).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGINT, _handle)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
        if _Deferred.timer is not None:  # a retry must not reach the handler put back
            _Deferred.timer.cancel()
        _Deferred.pending = _Deferred.retrying = False
