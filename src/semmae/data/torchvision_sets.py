"""CIFAR-10, CIFAR-100 and STL-10 in torchvision's on-disk layout.

Files are read from ``data.root`` (default ``$SEMMAE_CACHE/<name>``) in torchvision's on-disk
layout (``cifar-10-batches-py/``, ``cifar-100-python/``, ``stl10_binary/``). A download is tried
only when the files are missing and the host answers within 3 s; otherwise the error says where to
put them. Local files are not checked against torchvision's MD5 sums (STL-10's would need the
2.6 GB unlabelled file even for the labelled splits); they are parsed and their shapes checked
instead. STL-10 uses its labelled ``train`` (5k) and ``test`` (8k) splits only. CIFAR's pickles
are read by an unpickler that can rebuild arrays and nothing else, so a tampered file runs no code;
STL-10's binary files are read by torchvision.
"""

from __future__ import annotations

import logging
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torchvision.datasets import CIFAR10, CIFAR100, STL10

from semmae.config import DataConfig
from semmae.data.cache import cache_dir, network_available
from semmae.data.imageset import ImageSet, fit_images
from semmae.errors import DataError

log = logging.getLogger(__name__)


class _ArraysOnly(pickle.Unpickler):
    """Unpickles CIFAR's python batches (dicts, lists, strings, numpy arrays) and nothing else.

    CIFAR ships as pickles, and a pickle may name any callable to run while it loads (DESIGN.md §7
    rule 13). This one resolves only what rebuilding a numpy array needs and refuses every other
    name, so a tampered file cannot run code.
    """

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str) -> object:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise DataError(f"it asks to import {module}.{name}, which a CIFAR batch never needs; not loading it")


def _unpickle(path: Path) -> dict:
    """A CIFAR pickle (Python 2 strings read as latin-1) through :class:`_ArraysOnly`."""
    with path.open("rb") as f:
        return _ArraysOnly(f, encoding="latin1").load()


def _read_cifar(stock: type, root: Path, split: str) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """CIFAR-10/100 in torchvision's layout, without MD5 checks; RuntimeError when files are missing."""
    folder = root / stock.base_folder
    names = [n for n, _ in (stock.train_list if split == "train" else stock.test_list)]
    meta = folder / stock.meta["filename"]
    if not meta.is_file() or not all((folder / n).is_file() for n in names):
        raise RuntimeError(f"{folder} is incomplete")
    batches = [_unpickle(folder / n) for n in names]
    rows = np.concatenate([np.asarray(b["data"], dtype=np.uint8) for b in batches])
    labels = np.concatenate([np.asarray(b["labels"] if "labels" in b else b["fine_labels"]) for b in batches])
    images = torch.from_numpy(np.ascontiguousarray(rows.reshape(-1, 3, 32, 32)))  # rows are R, G, B planes
    return images, torch.from_numpy(labels.astype(np.int64)), list(_unpickle(meta)[stock.meta["key"]])


class _LocalSTL10(STL10):
    """STL-10 with only the chosen labelled split's files required."""

    def _check_integrity(self) -> bool:
        names = ("train_X.bin", "train_y.bin") if self.split == "train" else ("test_X.bin", "test_y.bin")
        return all((Path(self.root) / self.base_folder / n).is_file() for n in names)


@dataclass(frozen=True)
class _Spec:
    title: str
    stock: type  # the torchvision class: its base_folder, url and file lists are used
    default_classes: tuple[str, ...] = ()


_SPECS = {
    "cifar10": _Spec("CIFAR-10", CIFAR10),
    "cifar100": _Spec("CIFAR-100", CIFAR100),
    "stl10": _Spec(
        "STL-10", STL10, ("airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck")
    ),
}


def _read(spec: _Spec, root: Path, split: str) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """(images uint8 (N, 3, H, W), targets int64 (N,), classes); RuntimeError when files are missing."""
    if spec.stock is STL10:  # plain binary files, read by torchvision
        tv = _LocalSTL10(root=str(root), split=split)
        images = torch.from_numpy(np.ascontiguousarray(tv.data))
        targets = torch.from_numpy(tv.labels.astype(np.int64))
        classes = list(getattr(tv, "classes", None) or spec.default_classes)
    else:
        images, targets, classes = _read_cifar(spec.stock, root, split)
    if images.dim() != 4 or images.shape[1] != 3 or len(images) != len(targets):
        raise ValueError(f"unexpected shapes: images {tuple(images.shape)}, targets {tuple(targets.shape)}")
    return images, targets, classes


def _download(spec: _Spec, root: Path, split: str) -> None:
    """Fetch the archive with torchvision (MD5-checked), or say where to put the files when offline."""
    url = spec.stock.url
    if not network_available(url.split("/")[2], 443 if url.startswith("https") else 80):
        raise DataError(
            f"{spec.title} not found in {root / spec.stock.base_folder} (offline): download {url} and "
            f"extract it into {root}, or pass data.root=DIR of an extracted copy"
        )
    log.info("downloading %s into %s", spec.title, root)
    which = {"split": split} if spec.stock is STL10 else {"train": split == "train"}
    try:
        spec.stock(root=str(root), download=True, **which)
    except Exception as exc:  # noqa: BLE001 - network and archive errors come in many types
        raise DataError(
            f"{spec.title} download into {root} failed ({exc}); place the files there by hand"
        ) from None


def load_torchvision_set(cfg: DataConfig, split: str) -> ImageSet:
    """One split of CIFAR-10/100 or STL-10 as uint8 (N, cfg.in_chans, cfg.image_size, cfg.image_size).

    Raises:
        DataError: files missing (and no network), download failed, or files unreadable.
    """
    spec = _SPECS[cfg.name]
    root = Path(cfg.root).expanduser() if cfg.root else cache_dir() / cfg.name
    folder = root / spec.stock.base_folder
    for attempt in range(2):
        try:
            images, targets, classes = _read(spec, root, split)
            break
        except RuntimeError:  # torchvision's "not found"
            if attempt:
                raise DataError(
                    f"{spec.title} files in {folder} are incomplete; re-extract {spec.stock.url}"
                ) from None
            _download(spec, root, split)
        except Exception as exc:  # noqa: BLE001 - corrupt pickles/binaries raise many types
            raise DataError(
                f"{spec.title} files in {folder} are unreadable ({exc}); replace them with a fresh copy"
            ) from None
    if cfg.limit is not None:
        images, targets = images[: cfg.limit].clone(), targets[: cfg.limit].clone()
    return ImageSet(
        name=cfg.name,
        split=split,
        classes=classes,
        targets=targets,
        images=fit_images(images, cfg.image_size, cfg.in_chans),
    )
