"""Writing part-map files (the format is :mod:`semmae.data.partmaps`): all or nothing.

Both files of a part-map output are written under temporary names beside it
(:func:`semmae.atomic.atomic_path`) and moved into place only once the whole array and its manifest
are on disk. Until then the old pair (or nothing) stays at ``NAME.npy`` / ``NAME.json``: an error,
a full disk or Ctrl-C at any point leaves exactly what was there before. Moving the pair in, the
manifest leaves first and arrives last, so at no moment does a manifest stand beside an array it
does not describe. Temporary files a killed export left are removed by the next export of the same
name; an old pair it had set aside (a kill between the renames of the swap) is put back first
(:func:`recover_set_aside_pair`).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict
from pathlib import Path
from types import TracebackType

import numpy as np
import torch

from semmae import runtime
from semmae.atomic import atomic_path, remove_stale_temps_of
from semmae.data.partmaps import FORMAT_VERSION, PartMapManifest, manifest_path, npy_path
from semmae.errors import DataError


def _make_manifest(
    num_images: int, grid: tuple[int, int], *, dataset: str, split: str, image_size: int, num_parts: int,
    fingerprint: str, learner_hash: str | None, source: str,
) -> PartMapManifest:  # fmt: skip
    """A new manifest: maps written by this semmae always cover the whole image."""
    if not 1 <= num_parts <= 256:
        raise DataError(f"part maps are stored as uint8, so num_parts must be in [1, 256], got {num_parts}")
    return PartMapManifest(
        format_version=FORMAT_VERSION, dataset=dataset, split=split, num_images=int(num_images),
        image_size=int(image_size), grid=(int(grid[0]), int(grid[1])), num_parts=int(num_parts),
        fingerprint=fingerprint, learner_hash=learner_hash,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), source=source,
    )  # fmt: skip


def _as_uint8_labels(labels: np.ndarray | torch.Tensor, num_parts: int) -> np.ndarray:
    """(N, h, w) labels as a uint8 ndarray after checking their rank and range."""
    arr = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if arr.ndim != 3:
        raise DataError(f"part labels must have 3 dimensions (N, h, w), got shape {arr.shape}")
    if arr.dtype.kind not in "iu":
        raise DataError(f"part labels must be integers, got dtype {arr.dtype}")
    if arr.size and (arr.min() < 0 or arr.max() >= num_parts):
        raise DataError(f"part labels must lie in [0, {num_parts - 1}], got [{arr.min()}, {arr.max()}]")
    return arr.astype(np.uint8, copy=False)


SET_ASIDE = ".old"  # the suffix of an old file moved aside for the swap: never a stale temp file


def _set_aside_copies(final: Path) -> list[Path]:
    """The copies of ``final`` that :func:`_old_pair_set_aside` moved aside and a kill left behind."""
    name = re.compile(rf"\.{re.escape(final.name)}\.[a-z0-9_]{{8}}{re.escape(SET_ASIDE)}")
    if not final.parent.is_dir():
        return []
    return sorted(
        e for e in final.parent.iterdir() if name.fullmatch(e.name) and e.is_file() and not e.is_symlink()
    )


def recover_set_aside_pair(p: Path) -> None:
    """Put back the old pair at ``p`` that a swap killed between its renames left set aside.

    The new manifest moves in last: with both files at their final paths the swap had finished and
    the set-aside copies are stale; otherwise it had not, and each set-aside file replaces what
    stands at its final path (the new array, where it had moved in). An empty copy beside its
    final file is a name reserved for a move that never happened. One process writes ``p`` at a
    time.
    """
    arrays, manifests = _set_aside_copies(p), _set_aside_copies(manifest_path(p))
    finished = os.path.lexists(p) and os.path.lexists(manifest_path(p))
    for final, copies in ((p, arrays), (manifest_path(p), manifests)):  # the array returns first
        moved = [c for c in copies if c.stat().st_size > 0 or not os.path.lexists(final)]
        back = moved[-1] if moved and not finished else None
        for copy in copies:
            if copy == back:
                os.replace(copy, final)
            else:
                copy.unlink()


@contextmanager
def _old_pair_set_aside(p: Path) -> Iterator[None]:
    """Move the pair at ``p`` (either file may be missing) to hidden names for the block.

    If the block succeeds the old files are deleted; if it fails, whatever it put at the final
    paths is removed and the old files go back. The manifest leaves first and returns last.
    """
    aside: list[tuple[Path, Path]] = []  # (final, hidden name), each reserved before its move
    moved = False
    try:
        for final in (manifest_path(p), p):
            if os.path.lexists(final):
                # Not a temp name: what a kill leaves here is put back (recover_set_aside_pair).
                fd, hidden = tempfile.mkstemp(prefix=f".{final.name}.", suffix=SET_ASIDE, dir=final.parent)
                os.close(fd)
                aside.append((final, Path(hidden)))
                os.replace(final, hidden)
        moved = True
        yield
    except BaseException:
        for final in (manifest_path(p), p) if moved else ():  # what is at the final paths now is new
            if os.path.lexists(final):
                final.unlink()
        for final, hidden in reversed(aside):
            if os.path.lexists(final):  # its move never happened: only the reserved name goes
                hidden.unlink(missing_ok=True)
            else:
                os.replace(hidden, final)
        raise
    for _, hidden in aside:
        hidden.unlink(missing_ok=True)


class _PendingPair:
    """Temporary ``.npy`` and manifest files beside ``p``; :meth:`commit` moves both into place.

    Leaving the ``with`` block any other way (an error, Ctrl-C) deletes them and keeps what was
    at ``p``.
    """

    def __init__(self, p: Path) -> None:
        self.path = p
        p.parent.mkdir(parents=True, exist_ok=True)
        recover_set_aside_pair(p)
        for final in (p, manifest_path(p)):  # left by a killed export of the same file
            remove_stale_temps_of(final)
        with ExitStack() as stack:
            # atomic_path renames on a clean exit; the stack exits last-in first: the array moves first.
            self.manifest_tmp = stack.enter_context(atomic_path(manifest_path(p)))
            self.npy_tmp = stack.enter_context(atomic_path(p))
            self._stack = stack.pop_all()

    def __enter__(self) -> _PendingPair:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            exc_type, exc = RuntimeError, RuntimeError("part-map file left unfinished")
        self._stack.__exit__(exc_type, exc, tb)  # an exception makes atomic_path delete, not rename

    def commit(self, manifest: PartMapManifest) -> None:
        """Write the manifest, then move the array and the manifest over the old pair."""
        try:
            self.manifest_tmp.write_text(json.dumps(asdict(manifest), indent=2) + "\n")  # grid: a list
            fd = os.open(self.npy_tmp, os.O_RDONLY)  # the long flush, while the old pair is in place
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            with _old_pair_set_aside(self.path):
                self._stack.close()
        except BaseException as e:
            self.__exit__(type(e), e, e.__traceback__)
            raise


def write_part_maps(
    path: str | os.PathLike[str], labels: np.ndarray | torch.Tensor, *, dataset: str, split: str,
    image_size: int, num_parts: int, fingerprint: str, learner_hash: str | None = None,
    source: str = "learner",
) -> PartMapManifest:  # fmt: skip
    """Write a whole part-map file; on any failure the old pair (or nothing) stays at ``path``.

    Not collective: one process writes the file.

    Args:
        path: ``NAME.npy`` (``.npy`` appended when missing); the manifest goes to ``NAME.json``.
        labels: (N, h, w) integer labels in {0..K-1}.
        dataset, split, image_size, fingerprint: what the maps belong to (see the manifest).
        num_parts: K (<= 256).
        learner_hash: hash of the part-learner checkpoint, if any.
        source: what made the maps.

    Returns:
        The manifest written.
    """
    p = npy_path(path)
    arr = np.ascontiguousarray(_as_uint8_labels(labels, num_parts))
    manifest = _make_manifest(
        arr.shape[0], (arr.shape[1], arr.shape[2]), dataset=dataset, split=split, image_size=image_size,
        num_parts=num_parts, fingerprint=fingerprint, learner_hash=learner_hash, source=source,
    )  # fmt: skip
    with _PendingPair(p) as pending:
        with open(pending.npy_tmp, "wb") as f:
            np.save(f, arr, allow_pickle=False)
        pending.commit(manifest)
    return manifest


def _reserve_space(path: Path) -> None:
    """Allocate every block of the (sparse) memory-mapped file now.

    A full disk is then an OSError here, before any labelling, instead of a SIGBUS when a page
    of the mapping is first written.
    """
    if hasattr(os, "posix_fallocate"):
        with open(path, "r+b") as f:
            os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)


class PartMapWriter:
    """Fill one memory-mapped part-map file in batches, from one or many ranks.

    Rank 0 allocates the array under a temporary name and tells the others, which open it; every
    rank writes the rows it owns; :meth:`close` flushes, waits for every rank and lets rank 0 move
    the array and its manifest into place. Use it as a context manager: leaving the block without
    :meth:`close` (an error, Ctrl-C) deletes the temporary files and keeps what was at ``path``.
    Build it with :meth:`create`.
    """

    def __init__(
        self, path: Path, array: np.memmap, manifest: PartMapManifest, pending: _PendingPair | None
    ) -> None:
        self.path = path
        self.array = array
        self.manifest = manifest
        self._pending = pending  # rank 0 only
        self._closed = False

    @classmethod
    def create(
        cls, path: str | os.PathLike[str], *, num_images: int, grid: tuple[int, int], dataset: str,
        split: str, image_size: int, num_parts: int, fingerprint: str, learner_hash: str | None = None,
        source: str = "learner",
    ) -> PartMapWriter:  # fmt: skip
        """Allocate (rank 0) or open (other ranks) the temporary (N, h, w) uint8 array for ``path``.

        Collective under torch.distributed: every rank must call it.
        """
        p = npy_path(path)
        manifest = _make_manifest(
            num_images, grid, dataset=dataset, split=split, image_size=image_size, num_parts=num_parts,
            fingerprint=fingerprint, learner_hash=learner_hash, source=source,
        )  # fmt: skip
        shape = (manifest.num_images, *manifest.grid)
        pending, tmp = None, None
        if runtime.is_main():
            pending = _PendingPair(p)
            try:
                array = np.lib.format.open_memmap(pending.npy_tmp, mode="w+", dtype=np.uint8, shape=shape)
                array.flush()
                _reserve_space(pending.npy_tmp)
            except BaseException as e:
                pending.__exit__(type(e), e, e.__traceback__)
                raise
            tmp = str(pending.npy_tmp)
        tmp = runtime.broadcast_object(tmp)  # the other ranks open the file rank 0 made
        if not runtime.is_main():
            array = np.lib.format.open_memmap(tmp, mode="r+")
        return cls(p, array, manifest, pending)

    def __enter__(self) -> PartMapWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self._closed:
            self._closed = True
            if self._pending is not None:
                self._pending.__exit__(exc_type, exc, tb)

    def write(self, indices: torch.Tensor, labels: torch.Tensor) -> None:
        """Store ``labels`` (B, h, w) as the maps of images ``indices`` (B,)."""
        if self._closed:
            raise RuntimeError("PartMapWriter is closed")
        idx = indices.detach().cpu().numpy().astype(np.int64, copy=False).reshape(-1)
        arr = _as_uint8_labels(labels, self.manifest.num_parts)
        if arr.shape != (idx.shape[0], *self.manifest.grid):
            raise ValueError(f"labels {arr.shape} do not fit {len(idx)} maps of grid {self.manifest.grid}")
        if idx.size and (idx.min() < 0 or idx.max() >= self.manifest.num_images):
            raise IndexError(f"image indices must lie in [0, {self.manifest.num_images - 1}]")
        self.array[idx] = arr

    def close(self) -> PartMapManifest:
        """Flush; once every rank has flushed, rank 0 moves the array and its manifest into place.

        Collective.
        """
        if not self._closed:
            self.array.flush()
            self._closed = True
            runtime.barrier()
            if self._pending is not None:
                self._pending.commit(self.manifest)
            runtime.barrier()
        return self.manifest
