"""Loading a checkpoint never runs code from it (DESIGN.md §7 rule 13)."""

from __future__ import annotations

import argparse
import os
import random
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from semmae.errors import CheckpointError
from semmae.models.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state


class _Payload:
    """Unpickling this object would create a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (os.mkdir, (str(self.marker),))


def test_a_pickled_call_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    torch.save({"model": {"w": torch.ones(2)}, "extra": _Payload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match=r"would have to execute \(it needs 'posix.mkdir'\)"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()


def test_official_mae_args_namespace_loads(tmp_path: Path) -> None:
    args = argparse.Namespace(model="mae_vit_base_patch16", norm_pix_loss=True, lr=None)
    torch.save({"model": {"w": torch.ones(2)}, "args": args, "epoch": 799}, tmp_path / "official.pth")
    obj = load_checkpoint(tmp_path / "official.pth")
    assert obj["args"].model == "mae_vit_base_patch16" and torch.equal(obj["model"]["w"], torch.ones(2))


def test_rng_states_round_trip_through_a_safe_load(tmp_path: Path) -> None:
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.randn()  # leaves a cached Gaussian in NumPy's state
    save_checkpoint(tmp_path / "s.pt", {"rng": rng_state()})
    expected = (random.random(), np.random.randn(), torch.rand(3))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    set_rng_state(load_checkpoint(tmp_path / "s.pt")["rng"])
    got = (random.random(), np.random.randn(), torch.rand(3))
    assert got[:2] == expected[:2] and torch.equal(got[2], expected[2])


def test_a_save_removes_the_temp_file_a_killed_writer_left(tmp_path: Path) -> None:
    # SIGKILL between mkstemp and os.replace leaves the temp file an atomic write made
    os.close(tempfile.mkstemp(prefix=".last.pt.", suffix=".tmp", dir=tmp_path)[0])
    (tmp_path / ".other.pt.abc123.tmp").write_bytes(b"")  # another file's: not ours to remove
    save_checkpoint(tmp_path / "last.pt", {"step": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.pt.abc123.tmp", "last.pt"]


def test_a_file_saved_with_pickle_protocol_4_is_refused_with_the_conversion(tmp_path: Path) -> None:
    import warnings

    torch.save({"model": {"w": torch.arange(3.0)}}, tmp_path / "p4.pt", pickle_protocol=4)
    with (
        warnings.catch_warnings(),
        pytest.raises(CheckpointError, match="saved with pickle protocol 4, which") as err,
    ):
        warnings.simplefilter("error")  # torch's own warning would come before our message
        load_checkpoint(tmp_path / "p4.pt")
    assert "torch.save(torch.load('IN', weights_only=False), 'OUT.pth')" in str(err.value)
    torch.save(torch.load(tmp_path / "p4.pt", weights_only=False), tmp_path / "p2.pt")  # what it says to run
    assert torch.equal(load_checkpoint(tmp_path / "p2.pt")["model"]["w"], torch.arange(3.0))
