"""Fashion-MNIST (Xiao et al., 2017): 60k/10k grey 28x28 images of 10 clothing classes.

Where the files come from, first match wins:

1. ``data.root`` (explicit), else the environment variable ``SEMMAE_FASHION_MNIST``;
2. the Debian package ``dataset-fashion-mnist`` at ``/usr/share/datasets/fashion-mnist/``;
3. a copy downloaded earlier into ``$SEMMAE_CACHE/fashion_mnist/download``;
4. a torchvision download, only when the download host answers within 3 s.

A folder may hold the four idx files gzipped (``train-images-idx3-ubyte.gz``, ...) or raw, directly
or in torchvision's ``FashionMNIST/raw/`` layout. torchvision's reader wants raw files under
``ROOT/FashionMNIST/raw/``, so gzipped (or differently laid out) files are decompressed (linked)
once into the cache, atomically, and read from there. An explicit location that holds no data is
an error rather than a silent fall-through, so a typo never trains on other data.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import shutil
from pathlib import Path

import torch
import torchvision

from semmae.atomic import atomic_path
from semmae.config import DataConfig
from semmae.data.cache import cache_dir, network_available
from semmae.data.imageset import ImageSet, fit_images
from semmae.errors import DataError

log = logging.getLogger(__name__)

ENV_VAR = "SEMMAE_FASHION_MNIST"
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
DOWNLOAD_HOST = ("fashion-mnist.s3-website.eu-central-1.amazonaws.com", 80)
FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_HOW_TO_GET = (
    "install it with `apt-get install dataset-fashion-mnist`, set SEMMAE_FASHION_MNIST=DIR, "
    "or pass data.root=DIR"
)


def find_files(directory: Path) -> dict[str, Path] | None:
    """The four idx files (raw or ``.gz``) in ``directory`` or its ``FashionMNIST/raw``/``raw``.

    A raw file is preferred to its ``.gz``, unless it is empty (an interrupted unpacking).

    Raises:
        DataError: a file that has no non-empty raw or ``.gz`` form.
    """
    for sub in (directory, directory / "FashionMNIST" / "raw", directory / "raw"):
        found: dict[str, Path] = {}
        for name in FILES:
            present = [c for c in (sub / name, sub / f"{name}.gz") if c.is_file()]
            usable = [c for c in present if c.stat().st_size > 0]
            if present:
                found[name] = (usable or present)[0]
        if len(found) == len(FILES):
            empty = next((f for f in found.values() if f.stat().st_size == 0), None)
            if empty is not None:  # before any cache copy is made of it, which would then be blamed
                raise DataError(f"Fashion-MNIST file {empty} is empty; replace it, or {_HOW_TO_GET}")
            return found
    return None


def _atomic_write(dest: Path, src: Path) -> None:
    """Decompress (``.gz``) or link/copy ``src`` to ``dest`` atomically."""
    try:
        with atomic_path(dest) as tmp:
            if src.suffix == ".gz":
                with open(tmp, "wb") as out, gzip.open(src, "rb") as inp:
                    shutil.copyfileobj(inp, out, length=1 << 20)
            else:
                tmp.unlink()
                try:
                    tmp.symlink_to(src.resolve())
                except OSError:  # filesystems without symlinks
                    shutil.copyfile(src, tmp)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"cannot unpack Fashion-MNIST file {src} into {dest.parent}: {exc}") from None


def torchvision_root(found: dict[str, Path]) -> Path:
    """A root that torchvision's ``FashionMNIST`` reads: the files' own, or a cache copy.

    The cache folder is keyed by the source files' paths, sizes and modification times, so an
    updated source gets a fresh copy and an unchanged one is unpacked only once.
    """
    parents = {p.parent for p in found.values()}
    if all(p.suffix != ".gz" for p in found.values()) and len(parents) == 1:
        (raw,) = parents
        if raw.name == "raw" and raw.parent.name == "FashionMNIST":
            return raw.parent.parent
    key = hashlib.sha256()
    for name in FILES:
        st = found[name].stat()
        key.update(f"{found[name].resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    root = cache_dir() / "fashion_mnist" / key.hexdigest()[:12]
    raw = root / "FashionMNIST" / "raw"
    try:
        raw.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create the cache folder {raw} ({exc}); set SEMMAE_CACHE=DIR") from None
    for name in FILES:
        if not (raw / name).is_file():
            log.info("unpacking %s into %s", found[name], raw)
            _atomic_write(raw / name, found[name])
    return root


def _download(root: Path) -> bool:
    """Download with torchvision into ``root`` when the host answers; False when offline."""
    if not network_available(*DOWNLOAD_HOST):
        return False
    log.info("downloading Fashion-MNIST into %s", root)
    try:
        torchvision.datasets.FashionMNIST(root=str(root), train=True, download=True)
    except Exception as exc:  # noqa: BLE001 - any download failure means: not available
        raise DataError(f"Fashion-MNIST download into {root} failed ({exc}); {_HOW_TO_GET}") from None
    return True


def resolve_root(root: str | None) -> Path:
    """The torchvision root to read Fashion-MNIST from (see the module docstring for the order).

    Raises:
        DataError: nothing found and no download possible; the message says how to get it.
    """
    explicit = root or os.environ.get(ENV_VAR) or None
    searched = [DEBIAN_DIR, cache_dir() / "fashion_mnist" / "download"]
    if explicit:  # the only place looked in, so a typo never falls through to other data
        searched = [Path(explicit).expanduser()]
    for where in searched:
        found = find_files(where)
        if found:
            return torchvision_root(found)
    target = searched[-1]  # the explicit location, else the download cache; never a file's path
    if (target.is_dir() or not target.exists()) and _download(target):
        return target
    looked = ", ".join(str(p) for p in searched)
    raise DataError(f"Fashion-MNIST not found: {_HOW_TO_GET} (looked in {looked}; no download possible)")


def load_fashion_mnist(cfg: DataConfig, split: str) -> ImageSet:
    """One Fashion-MNIST split as uint8 (N, cfg.in_chans, cfg.image_size, cfg.image_size).

    Raises:
        DataError: files missing or unreadable.
    """
    root = resolve_root(cfg.root)
    try:
        tv = torchvision.datasets.FashionMNIST(root=str(root), train=split == "train", download=False)
    except (RuntimeError, AssertionError, ValueError, OSError) as exc:
        raise DataError(
            f"Fashion-MNIST files under {root} are unreadable ({exc}): a truncated file? Replace it (or, "
            f"under the cache folder, delete it to unpack it again), or {_HOW_TO_GET}"
        ) from None
    data, targets = tv.data, tv.targets.to(torch.int64)
    if cfg.limit is not None:
        data, targets = data[: cfg.limit].clone(), targets[: cfg.limit]  # clone: drop the rest
    images = fit_images(data.unsqueeze(1).contiguous(), cfg.image_size, cfg.in_chans)
    return ImageSet(
        name="fashion_mnist", split=split, classes=list(tv.classes), targets=targets.clone(), images=images
    )
