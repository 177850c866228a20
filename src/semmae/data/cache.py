"""Where downloaded or unpacked data is kept, and whether a download host can be reached."""

from __future__ import annotations

import os
import socket
import threading
from functools import cache
from pathlib import Path


def cache_dir() -> Path:
    """Where decompressed or downloaded data goes: ``$SEMMAE_CACHE`` or ``~/.cache/semmae``."""
    env = os.environ.get("SEMMAE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "semmae"


@cache
def _probe(host: str, port: int, timeout: float) -> bool:
    result = [False]

    def connect() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result[0] = True
        except OSError:
            pass

    # Name resolution ignores socket timeouts, so the probe runs in a thread we stop waiting for.
    worker = threading.Thread(target=connect, daemon=True)
    worker.start()
    worker.join(timeout + 0.5)
    return result[0]


def network_available(host: str, port: int = 443, timeout: float = 3.0) -> bool:
    """Whether ``host:port`` accepts a TCP connection within ``timeout`` seconds (never hangs).

    ``SEMMAE_OFFLINE=1`` answers False without trying. Results are cached per process.
    """
    if os.environ.get("SEMMAE_OFFLINE", "") not in ("", "0"):
        return False
    return _probe(host, port, timeout)
