"""The dataset dispatcher: ``build_dataset(cfg.data, split)`` picks the loader named by ``data.name``.

Loaders sit below this module and import only :mod:`semmae.data.imageset` (the set type and its
conversion) and :mod:`semmae.data.cache` (cache folder, network probe), never the dispatcher.
"""

from __future__ import annotations

import logging

import torch

from semmae.config import DataConfig
from semmae.data import fashion_mnist, folder, relations, synthetic, torchvision_sets
from semmae.data.imageset import ImageSet
from semmae.errors import DataError

log = logging.getLogger(__name__)

SPLITS = ("train", "test")
LOADERS = {
    "fashion_mnist": fashion_mnist.load_fashion_mnist,
    "toy_parts": synthetic.load_toy_parts,
    "toy_relations": relations.load_toy_relations,
    "image_folder": folder.load_image_folder,
    "cifar10": torchvision_sets.load_torchvision_set,
    "cifar100": torchvision_sets.load_torchvision_set,
    "stl10": torchvision_sets.load_torchvision_set,
}


def build_dataset(cfg: DataConfig, split: str) -> ImageSet:
    """Build one split of the dataset named by ``cfg.name``.

    Args:
        cfg: the data section of the config (name, root, limit, image_size, in_chans, ...).
        split: ``train`` or ``test``.

    Returns:
        An :class:`ImageSet` with images (N, cfg.in_chans, cfg.image_size, cfg.image_size) uint8,
        holding at most ``cfg.limit`` images (the first ones).

    Raises:
        DataError: the dataset cannot be found or read; the message says how to fix it.
    """
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    if cfg.name not in LOADERS:
        raise DataError(f"unknown dataset data.name={cfg.name!r}; use one of {', '.join(LOADERS)}")
    ds = LOADERS[cfg.name](cfg, split)
    log.info(
        "dataset %s/%s: %d images of %dx%dx%d%s",
        ds.name,
        ds.split,
        len(ds),
        ds.in_chans,
        ds.image_size,
        ds.image_size,
        " (streamed)" if ds.streamed else "",
    )
    return ds


def split_labels(cfg: DataConfig, split: str) -> tuple[list[str], torch.Tensor]:
    """The class names and (N,) int64 targets (-1: unlabelled) of one split, as cheaply as they come.

    An image folder's come from its listing (no file is read: a whole ImageNet costs seconds);
    the in-memory sets are built.

    Raises:
        DataError: as :func:`build_dataset`.
    """
    if cfg.name == "image_folder":
        return folder.folder_labels(cfg, split)
    ds = build_dataset(cfg, split)
    return list(ds.classes), torch.as_tensor(ds.targets)
