"""Graceful stop on SIGTERM/SIGINT: finish the current step, checkpoint, exit cleanly."""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType


class StopRequest:
    """Context manager that turns SIGTERM/SIGINT into a flag the training loop polls.

    A second signal of the same kind force-quits: Ctrl-C raises ``KeyboardInterrupt``, SIGTERM
    takes its default action (the process ends at once).
    Only installed in the main thread; elsewhere it is an inert flag.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.signum = signum
        # A second ^C raises KeyboardInterrupt (the handler before this one); a second SIGTERM kills
        # at once, as the default action does, even a process stuck in a C call.
        keep = signum == signal.SIGINT
        signal.signal(signum, self._old.get(signum, signal.SIG_DFL) if keep else signal.SIG_DFL)

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)  # type: ignore[arg-type]
        self._old.clear()
