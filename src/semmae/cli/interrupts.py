"""Ctrl-C at start-up: never inside an import, where a library could swallow it.

Starting a command imports PyTorch and friends for about a second. A ``KeyboardInterrupt`` raised
in the middle of an import can be caught by a library's broad ``except`` clause: the module is
left half-initialised (a later ``AttributeError: module 'numpy' has no attribute ...``) or the
Ctrl-C is lost and the run goes on. While :func:`interrupts_outside_imports` is active, SIGINT
raises ``KeyboardInterrupt`` as usual unless an import is running; then it is raised as soon as
the import has finished; a second Ctrl-C while one waits is raised at once (a hung import can
still be interrupted). SIGTERM is handled alike and raises :class:`~semmae.errors.Terminated`, a
``KeyboardInterrupt``: outside a training loop a command stops with a message and exit 143 and
runs the same clean-up as for Ctrl-C, instead of dying silently. The training loop installs its
own handler (a graceful stop at a step boundary) on top.
"""

from __future__ import annotations

import _thread
import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType

from semmae.errors import Terminated

RETRY_S = 0.02  # how soon a deferred Ctrl-C is tried again
SIGNALS = (signal.SIGINT, signal.SIGTERM)
_IMPORT_MACHINERY = ("<frozen importlib._bootstrap>", "<frozen importlib._bootstrap_external>")


def importing(frame: FrameType | None) -> bool:
    """Whether ``frame`` or one of its callers belongs to Python's import machinery."""
    while frame is not None:
        if frame.f_code.co_filename in _IMPORT_MACHINERY:
            return True
        frame = frame.f_back
    return False


class _Deferred:
    """The state of one deferred signal: the one that waits, and the timer that retries it."""

    pending: int | None = None
    retrying = False
    timer: threading.Timer | None = None


def _retry(signum: int) -> None:
    _Deferred.retrying = True
    _thread.interrupt_main(signum)  # runs _handle in the main thread, as the real signal would


def _handle(signum: int, frame: FrameType | None) -> None:
    retry, _Deferred.retrying = _Deferred.retrying, False
    if importing(frame) and not (_Deferred.pending is not None and not retry):
        _Deferred.pending = signum  # try again shortly, once the import has finished
        _Deferred.timer = threading.Timer(RETRY_S, _retry, args=(signum,))
        _Deferred.timer.daemon = True
        _Deferred.timer.start()
        return
    _Deferred.pending = None  # outside an import, or sent a second time while one waited
    if signum == signal.SIGTERM:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM kills at once, stuck or not
        raise Terminated
    raise KeyboardInterrupt


@contextlib.contextmanager
def interrupts_outside_imports() -> Iterator[None]:
    """SIGINT raises ``KeyboardInterrupt`` (SIGTERM :class:`~semmae.errors.Terminated`) only outside
    imports, within the ``with`` block.

    Inert outside the main thread (only it can install signal handlers).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {sig: signal.signal(sig, _handle) for sig in SIGNALS}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        if _Deferred.timer is not None:  # a retry must not reach the handler put back
            _Deferred.timer.cancel()
        _Deferred.pending, _Deferred.retrying = None, False


def interrupted(exc: KeyboardInterrupt, command: str | None = None) -> int:
    """The exit code of a command stopped by Ctrl-C or SIGTERM outside a training loop, after one
    line saying so (and, for a resumable run, the command that continues it)."""
    term = isinstance(exc, Terminated)
    line = "semmae: stopped by SIGTERM" if term else "semmae: interrupted"
    if command:
        line += f"; what was finished is kept. Continue with: {command} --resume"
    print(line, file=sys.stderr)
    return 143 if term else 130
