"""Ctrl-C at start-up: never inside an import, where a library could swallow it.

Starting a command imports PyTorch and friends for about a second. A ``KeyboardInterrupt`` raised
in the middle of an import can be caught by a library's broad ``except`` clause: the module is
left half-initialised (a later ``AttributeError: module 'numpy' has no attribute ...``) or the
Ctrl-C is lost and the run goes on. While :func:`interrupts_outside_imports` is active, SIGINT
raises ``KeyboardInterrupt`` as usual unless an import is running; then it is raised as soon as
the import has finished. The training loop installs its own handler (a graceful stop) on top.
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


def _handle(signum: int, frame: FrameType | None) -> None:
    if importing(frame):  # try again shortly: interrupt_main() calls this handler in the main thread
        timer = threading.Timer(RETRY_S, _thread.interrupt_main)
        timer.daemon = True
        timer.start()
        return
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
