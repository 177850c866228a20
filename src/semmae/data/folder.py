"""Image folders: ``root/<class>/<image>`` trees (classes = sorted subfolders) or flat folders.

Splits: when ``root/train`` and ``root/test`` (or ``root/val``) exist they are the splits;
otherwise every file goes to ``test`` when a stable hash of its path relative to ``root`` falls in
the lowest 10%, else to ``train`` (so adding files never moves the others). Images are read with
PIL (EXIF orientation applied), converted and resized once. A split whose uint8 tensor would take
at most :data:`MEMORY_LIMIT_BYTES` is held in memory; a larger one is streamed (files are read in
DataLoader workers while iterating). Unreadable files are skipped with a warning
(``data.on_corrupt=warn``) or stop the build (``error``); streamed sets check every file's header
up front, and a file that still fails later yields a black image (warn) or an error.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from semmae.config import DataConfig
from semmae.data.datasets import ImageSet, fit_images
from semmae.errors import DataError

log = logging.getLogger(__name__)

EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
MEMORY_LIMIT_BYTES = 2 * 1024**3
TEST_PERMILLE = 100  # share of files (per mille) the path hash sends to "test"
_ACCEPTED = f"accepted extensions: {' '.join(e[1:] for e in EXTENSIONS)}"


def read_image(path: Path, image_size: int, in_chans: int) -> torch.Tensor:
    """One image file as uint8 (C, S, S); raises OSError/ValueError etc. when unreadable."""
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im).convert("L" if in_chans == 1 else "RGB")
        arr = np.array(im, dtype=np.uint8)
    t = torch.from_numpy(arr)
    t = t.unsqueeze(0) if t.dim() == 2 else t.permute(2, 0, 1)
    return fit_images(t.contiguous(), image_size, in_chans)


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in EXTENSIONS and not path.name.startswith(".") and path.is_file()


def _images_under(folder: Path) -> list[Path]:
    """Image files anywhere below ``folder`` (hidden files and folders skipped), sorted by path."""
    found = [
        p
        for p in folder.rglob("*")
        if _is_image(p) and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    ]
    return sorted(found, key=lambda p: p.as_posix())


def scan_folder(folder: Path) -> tuple[list[Path], list[int], list[str]]:
    """Files, targets and classes of one folder.

    Subfolders holding images make a class tree (target = index of the sorted subfolder name);
    otherwise the images directly in ``folder`` form an unlabelled set (targets -1, no classes).
    """
    subdirs = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    per_class = {d.name: _images_under(d) for d in subdirs}
    classes = [c for c in sorted(per_class) if per_class[c]]
    if classes:
        files = [f for c in classes for f in per_class[c]]
        targets = [i for i, c in enumerate(classes) for _ in per_class[c]]
        return files, targets, classes
    files = sorted((p for p in folder.iterdir() if _is_image(p)), key=lambda p: p.as_posix())
    return files, [-1] * len(files), []


def in_test_split(relative_path: str) -> bool:
    """The stable hash split: True for about TEST_PERMILLE/1000 of all relative paths."""
    digest = hashlib.sha1(relative_path.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % 1000 < TEST_PERMILLE


def _split_files(root: Path, split: str) -> tuple[Path, list[Path], list[int], list[str]]:
    """(base folder, files, targets, classes) of one split, before the limit."""
    held_out = next((root / n for n in ("test", "val") if (root / n).is_dir()), None)
    if (root / "train").is_dir() and held_out is not None:
        base = root / "train" if split == "train" else held_out
        files, targets, classes = scan_folder(base)
        return base, files, targets, classes
    files, targets, classes = scan_folder(root)
    keep = [in_test_split(f.relative_to(root).as_posix()) == (split == "test") for f in files]
    files = [f for f, k in zip(files, keep, strict=True) if k]
    targets = [t for t, k in zip(targets, keep, strict=True) if k]
    return root, files, targets, classes


@dataclass
class FileSource:
    """Reads a streamed folder split (picklable, for DataLoader workers).

    Attributes:
        base: folder the relative paths start from.
        files: relative POSIX paths, in set order.
        sizes: file sizes in bytes (part of the fingerprint).
        image_size: S.
        in_chans: C.
        on_corrupt: ``warn`` (black image + warning) or ``error`` for a file that fails to decode.
    """

    base: Path
    files: list[str]
    sizes: list[int]
    image_size: int
    in_chans: int
    on_corrupt: str = "warn"

    def __len__(self) -> int:
        return len(self.files)

    def read(self, index: int) -> torch.Tensor:
        path = self.base / self.files[index]
        try:
            return read_image(path, self.image_size, self.in_chans)
        except Exception as exc:  # noqa: BLE001 - PIL raises many types for bad files
            if self.on_corrupt == "error":
                raise DataError(
                    f"unreadable image {path} ({exc}); data.on_corrupt=warn skips such files"
                ) from None
            log.warning("unreadable image %s (%s): using a black image", path, exc)
            return torch.zeros(self.in_chans, self.image_size, self.image_size, dtype=torch.uint8)

    def digest_items(self) -> Iterator[bytes]:
        for name, size in zip(self.files, self.sizes, strict=True):
            yield f"{name}\t{size}\n".encode()


def _corrupt(path: Path, exc: Exception, on_corrupt: str) -> None:
    if on_corrupt == "error":
        raise DataError(f"unreadable image {path} ({exc}); data.on_corrupt=warn skips such files")
    log.warning("skipping unreadable image %s (%s)", path, exc)


class _Reader(Dataset):
    def __init__(self, files: list[Path], image_size: int, in_chans: int) -> None:
        self.files, self.image_size, self.in_chans = files, image_size, in_chans

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, Exception | None]:
        try:
            return i, read_image(self.files[i], self.image_size, self.in_chans), None
        except Exception as exc:  # noqa: BLE001 - reported by the caller
            return i, None, exc


def _load_in_memory(files: list[Path], cfg: DataConfig, desc: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(images uint8 (N, C, S, S), ok bool (N,)) read with ``cfg.num_workers`` workers."""
    size, chans = cfg.image_size, cfg.in_chans
    images = torch.zeros(len(files), chans, size, size, dtype=torch.uint8)
    ok = torch.zeros(len(files), dtype=torch.bool)
    loader = DataLoader(
        _Reader(files, size, chans), batch_size=64, num_workers=cfg.num_workers, collate_fn=list
    )
    with tqdm(total=len(files), desc=desc, unit="img", disable=None) as bar:
        for batch in loader:
            for i, img, exc in batch:
                if img is None:
                    _corrupt(files[i], exc, cfg.on_corrupt)
                else:
                    images[i], ok[i] = img, True
            bar.update(len(batch))
    return images, ok


def _header_ok(path: Path) -> Exception | None:
    try:
        with Image.open(path):  # reads the header only
            return None
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for bad files
        return exc


def _verify_headers(files: list[Path], on_corrupt: str) -> list[bool]:
    with ThreadPoolExecutor(max_workers=8) as pool:
        checks = pool.map(_header_ok, files)
        results = list(tqdm(checks, total=len(files), desc="checking images", disable=None))
    for path, exc in zip(files, results, strict=True):
        if exc is not None:
            _corrupt(path, exc, on_corrupt)
    return [exc is None for exc in results]


def load_image_folder(cfg: DataConfig, split: str) -> ImageSet:
    """One split of an image folder (see the module docstring).

    Raises:
        DataError: no root, missing root, no images, or an unreadable file with on_corrupt=error.
    """
    if not cfg.root:
        raise DataError(
            f"data.name=image_folder needs data.root=DIR (images or class subfolders; {_ACCEPTED})"
        )
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise DataError(f"image folder {root} not found; set data.root=DIR ({_ACCEPTED})")
    base, files, targets, classes = _split_files(root, split)
    if not files:
        raise DataError(
            f"no images for split {split!r} in {root} ({_ACCEPTED}); add images or create train/ and test/"
        )
    if cfg.limit is not None:
        files, targets = files[: cfg.limit], targets[: cfg.limit]
    per_image = cfg.in_chans * cfg.image_size**2
    if len(files) * per_image <= MEMORY_LIMIT_BYTES:
        images, ok = _load_in_memory(files, cfg, desc=f"loading {split} images")
        keep = ok
    else:
        images = None
        keep = torch.tensor(_verify_headers(files, cfg.on_corrupt), dtype=torch.bool)
    skipped = int((~keep).sum())
    if skipped:
        log.warning("skipped %d unreadable image(s) in %s", skipped, base)
    if not bool(keep.any()):
        raise DataError(f"no readable images for split {split!r} in {root}; check the files ({_ACCEPTED})")
    target_t = torch.tensor(targets, dtype=torch.int64)[keep]
    if images is not None:
        return ImageSet("image_folder", split, classes, target_t, images[keep], num_skipped=skipped)
    kept = [f for f, k in zip(files, keep.tolist(), strict=True) if k]
    source = FileSource(
        base=base,
        files=[f.relative_to(base).as_posix() for f in kept],
        sizes=[f.stat().st_size for f in kept],
        image_size=cfg.image_size,
        in_chans=cfg.in_chans,
        on_corrupt=cfg.on_corrupt,
    )
    return ImageSet("image_folder", split, classes, target_t, None, source=source, num_skipped=skipped)
