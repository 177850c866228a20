"""Atomic checkpoint files that load without running code (DESIGN.md §7.11); the schema of a
training checkpoint is :mod:`semmae.engine.state`'s. Writes go to a temporary file in the same
directory (:func:`semmae.atomic.atomic_path`), moved into place, so a crash never leaves a torn file.
"""

from __future__ import annotations

import argparse
import hashlib
import pickle
import random
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from semmae.atomic import atomic_path, remove_stale_temps_of
from semmae.encoder_spec import check_weights_file
from semmae.errors import CheckpointError


def rng_state() -> dict[str, Any]:
    """Global RNG states of Python, NumPy and torch (CPU, and this process's CUDA device).

    NumPy's state holds an ndarray, which a ``weights_only`` load refuses; it is stored as
    ``[name, keys tensor, pos, has_gauss, cached_gaussian]``. Of CUDA, only the current device's
    generator (``cuda_device``): the one this process draws from. Touching every visible GPU would
    open a context on each (under torchrun, every rank on every GPU), and a resume that sees
    fewer GPUs could not restore them.
    """
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda_device"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore states saved by :func:`rng_state`."""
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if not torch.cuda.is_available():
        return
    cuda = state.get("cuda_device")
    if cuda is None and state.get("cuda"):  # older checkpoints: every visible device's, in order
        current = torch.cuda.current_device()
        cuda = state["cuda"][current] if current < len(state["cuda"]) else None
    if cuda is not None:
        torch.cuda.set_rng_state(cuda)


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically (:func:`atomic_path`); removes temp files of
    ``path`` that a killed writer left behind (one writer per run directory)."""
    path = Path(path)
    remove_stale_temps_of(path)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`, or any torch file of tensors and plain data.

    Loading never executes code from the file (DESIGN.md §7 rule 13): ``torch.load`` runs with
    ``weights_only=True``, which rebuilds only tensors, numbers, strings and containers (and
    ``argparse.Namespace``, allow-listed for official MAE checkpoints). A file
    that needs anything else (a pickled class, a function call) is refused.

    Raises:
        CheckpointError: missing, unreadable, needing unsafe unpickling, or not a dict.
    """
    path = Path(path)
    check_weights_file(path)  # a missing, empty or non-torch file gets its own one-line reason
    try:
        # argparse.Namespace: official MAE training checkpoints keep their ``args`` in one; it is a
        # plain attribute bag whose rebuild calls nothing but ``object.__new__`` and a dict update.
        # The warning about a pickle protocol other than 2 comes before our own verdict on the file.
        with torch.serialization.safe_globals([argparse.Namespace]), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "GLOBAL" in str(exc):  # the file asks to import and call something
            raise CheckpointError(_unsafe_message(path, exc)) from None
        protocol = _pickle_protocol(path)
        if protocol is not None and protocol > 2:  # torch.save(..., pickle_protocol=4): FRAME opcodes
            raise CheckpointError(
                f"checkpoint {str(path)!r} was saved with pickle protocol {protocol}, which safe loading "
                "cannot read. If you trust the file, save it again with the default protocol: "
                "python -c \"import torch; torch.save(torch.load('IN', weights_only=False), 'OUT.pth')\""
            ) from None
        raise CheckpointError(
            f"checkpoint {str(path)!r} could not be read (not a torch checkpoint)"
        ) from None
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file to the user
        first = (str(exc).strip().splitlines() or [""])[0]
        raise CheckpointError(
            f"checkpoint {str(path)!r} could not be read ({type(exc).__name__}: {first})"
        ) from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {str(path)!r} does not hold a dict of state")
    return obj


def file_hash(path: str | Path) -> str:
    """First 16 hex digits of the sha256 of a file."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):  # hashlib.file_digest needs Python 3.11
            h.update(chunk)
    return h.hexdigest()[:16]


def backbone_hash(spec: str) -> str:
    """:func:`file_hash` of the backbone file, or the same digest of the spec if it is not a file."""
    if Path(spec).is_file():
        return file_hash(spec)
    return hashlib.sha256(spec.encode()).hexdigest()[:16]


def _pickle_protocol(path: Path) -> int | None:
    """The pickle protocol of a torch zip checkpoint's ``data.pkl`` (its PROTO opcode), or None."""
    try:
        with zipfile.ZipFile(path) as archive:
            name = next((n for n in archive.namelist() if n.endswith("/data.pkl")), None)
            head = archive.open(name).read(2) if name else b""
    except (OSError, zipfile.BadZipFile):
        return None
    return head[1] if len(head) == 2 and head[0] == 0x80 else None


def _unsafe_message(path: Path, exc: Exception) -> str:
    """One line: which object the file would make us run, and how a user who trusts it converts it."""
    what = re.search(r"GLOBAL ([\w.]+)", str(exc))
    needs = f" (it needs {what.group(1)!r})" if what else ""
    return (
        f"checkpoint {str(path)!r} holds Python objects that loading would have to execute{needs}; "
        "semmae loads only tensors and plain data. If you trust the file, convert it once: "
        "python -c \"import torch; sd = torch.load('IN', weights_only=False); "
        "torch.save({'model': sd.get('model', sd)}, 'OUT.pth')\""
    )


def load_state_strict(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load ``state`` strictly, with a one-line error for any mismatch.

    Raises:
        CheckpointError: unexpected or missing keys, or shape mismatches.
    """
    try:
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        first = str(exc).strip().splitlines()[-1].strip()
        raise CheckpointError(f"state dict does not fit {type(module).__name__}: {first}") from None
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"state dict does not fit {type(module).__name__}: missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}"
        )
