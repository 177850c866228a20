"""Datasets as uint8 tensors (Fashion-MNIST, toy parts, image folders, CIFAR, STL-10) and batching.

``build_dataset(cfg.data, "train")`` gives an :class:`ImageSet`; ``iterate_batches`` walks it;
``semmae.data.transforms`` augments whole batches (with part maps) on any device.
"""

from __future__ import annotations

from semmae.data.datasets import build_dataset
from semmae.data.imageset import ImageSet, iterate_batches

__all__ = ["ImageSet", "build_dataset", "iterate_batches"]
