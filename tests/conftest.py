"""Shared pytest fixtures."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True, scope="session")
def _hermetic_data_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Tests never download and never write to ~/.cache: offline mode and a per-session cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SEMMAE_OFFLINE", "1")
        mp.setenv("SEMMAE_CACHE", str(tmp_path_factory.mktemp("semmae_cache")))
        mp.delenv("SEMMAE_FASHION_MNIST", raising=False)
        yield


@pytest.fixture(scope="module")
def single_thread() -> Iterator[None]:
    """Run a module's small tensor ops on one thread.

    On a machine with more busy processes than cores, every parallel op waits at an OpenMP barrier
    for a descheduled thread; tiny ops then take 10-100x longer than on one thread.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
