"""Part-map files: the only link between stage 1 (part learning) and stage 2 (SemMAE pretraining).

A part-map file is a pair:

* ``NAME.npy``: a uint8 array (N, h, w), the part label of every patch of every image of one split,
  in the dataset's image order; memory-mappable, so ImageNet-sized maps are not read into memory;
* ``NAME.json``: its manifest, the fields of :class:`PartMapManifest`.

A map describes the WHOLE image in normalised coordinates (``view: "whole"``): stage 1 labels
each image resized to ``image_size`` x ``image_size`` with its aspect ratio ignored (sets stored at
their training size are that view already). Any crop box of the full-resolution image then picks
out its own region of the map (``semmae.data.transforms.crop_part_maps``). Version-1 files carry no
``view``; for image folders they labelled a centre crop (``"center"``) and are refused for training.

Writing is :mod:`semmae.data.partmap_writer`: both files are written under temporary names and
moved into place only when both are complete, so ``NAME.npy`` / ``NAME.json`` are always a whole
old pair or a whole new one (or, for an instant while they are swapped, an array without a
manifest, which is refused as unfinished). Loading checks the pair against itself and against the dataset it is used with, and refuses any
mismatch with a one-line :class:`~semmae.errors.DataError`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from semmae.errors import DataError
from semmae.file_kinds import manifest_path, npy_path  # the pair's names, torch-free

FORMAT_VERSION = 2
VIEWS = ("whole", "center")  # what the maps cover: the whole image, or (v1 folders) a centre crop
_CHECK_CHUNK = 1 << 22  # labels checked per chunk (bytes), so validating never loads the whole map


@dataclass(frozen=True)
class PartMapManifest:
    """The JSON side of a part-map file.

    Attributes:
        format_version: file format version (:data:`FORMAT_VERSION`).
        dataset: dataset name the maps were made for.
        split: dataset split (``train``/``test``).
        num_images: N, rows of the array.
        image_size: side of the images the maps were computed at.
        grid: (h, w) patch grid of every map.
        num_parts: K; every label is < K.
        fingerprint: the dataset's :meth:`fingerprint` (image order and content).
        learner_hash: hash of the part-learner checkpoint (None for oracle maps).
        created: ISO-8601 creation time (UTC).
        source: what made the maps: ``learner``, ``oracle``, ...
        view: what each map covers: ``whole`` (the whole image, aspect ignored) or ``center``
            (a centre crop: version-1 exports of image folders).
    """

    format_version: int
    dataset: str
    split: str
    num_images: int
    image_size: int
    grid: tuple[int, int]
    num_parts: int
    fingerprint: str
    learner_hash: str | None
    created: str
    source: str
    view: str = "whole"

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str) -> PartMapManifest:
        """Parse a manifest dict; ``where`` names the file in error messages."""
        version = d.get("format_version")
        if version not in (1, FORMAT_VERSION):
            raise DataError(
                f"part-map manifest {where} has format_version {version!r} but this semmae reads "
                f"version {FORMAT_VERSION}; re-export the part maps with this semmae"
            )
        if version == 1:  # no view yet: image folders were labelled on a centre crop, the rest whole
            d = {**d, "view": "center" if d.get("dataset") == "image_folder" else "whole"}
        types: dict[str, type | tuple[type, ...]] = {
            "dataset": str, "split": str, "num_images": int, "image_size": int, "grid": list,
            "num_parts": int, "fingerprint": str, "learner_hash": (str, type(None)), "created": str,
            "source": str, "view": str,
        }  # fmt: skip
        for key, typ in types.items():
            ok = key in d and isinstance(d[key], typ) and not isinstance(d[key], bool)
            if not ok or (key == "view" and d[key] not in VIEWS):
                raise DataError(
                    f"part-map manifest {where} has a missing or invalid field {key!r} "
                    f"(got {d.get(key)!r}); re-export the part maps"
                )
        grid = d["grid"]
        if len(grid) != 2 or not all(isinstance(g, int) and g > 0 for g in grid):
            raise DataError(f"part-map manifest {where} has an invalid grid {grid!r}; re-export part maps")
        if not 1 <= d["num_parts"] <= 256:  # uint8 labels; a huge K would size tensors by it
            raise DataError(
                f"part-map manifest {where} has num_parts {d['num_parts']}, outside [1, 256] (labels are "
                "uint8); re-export the part maps"
            )
        fields = {k: d[k] for k in types if k != "grid"}
        return cls(format_version=FORMAT_VERSION, **fields, grid=(grid[0], grid[1]))


@dataclass
class PartMaps:
    """A loaded, validated part-map file.

    Attributes:
        labels: (N, h, w) uint8, memory-mapped read-only.
        manifest: its manifest.
        path: the ``.npy`` file.
    """

    labels: np.ndarray
    manifest: PartMapManifest
    path: Path

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """Maps of images ``indices`` (B,) as a (B, h, w) uint8 CPU tensor."""
        idx = indices.detach().cpu().numpy().astype(np.int64, copy=False).reshape(-1)
        return torch.from_numpy(np.ascontiguousarray(self.labels[idx]))


def _read_manifest(p: Path) -> PartMapManifest:
    mp = manifest_path(p)
    if not mp.is_file():
        raise DataError(
            f"part-map file {p.name} has no manifest {mp.name} (an unfinished or foreign export); "
            "re-export the part maps"
        )
    try:
        d = json.loads(mp.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"part-map manifest {mp.name} cannot be parsed ({e}); re-export part maps") from None
    if not isinstance(d, dict):
        raise DataError(f"part-map manifest {mp.name} is not a JSON object; re-export the part maps")
    return PartMapManifest.from_dict(d, mp.name)


def _open_array(p: Path) -> np.ndarray:
    try:
        return np.load(p, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"part-map file {p.name} is truncated or corrupt ({reason}); re-export it") from None


def _check_array(p: Path, arr: np.ndarray, m: PartMapManifest) -> None:
    if arr.dtype != np.uint8:
        raise DataError(f"part-map file {p.name} holds dtype {arr.dtype}, not uint8; re-export the part maps")
    expected = (m.num_images, *m.grid)
    if tuple(arr.shape) != expected:
        raise DataError(
            f"part-map file {p.name} has shape {tuple(arr.shape)} but its manifest says {expected} "
            "(num_images, *grid); re-export the part maps"
        )
    flat = arr.reshape(-1)
    for start in range(0, flat.shape[0], _CHECK_CHUNK):
        top = int(flat[start : start + _CHECK_CHUNK].max())
        if top >= m.num_parts:
            raise DataError(
                f"part-map file {p.name} holds label {top} but its manifest says num_parts {m.num_parts}; "
                "re-export the part maps"
            )


def _check_dataset(p: Path, m: PartMapManifest, dataset: Any) -> None:
    """Every manifest field that identifies the images must match the dataset's."""
    ds_size, ds_fp = len(dataset), dataset.fingerprint()
    checks = [
        (m.dataset == dataset.name, f"dataset {m.dataset!r} but the dataset is {dataset.name!r}",
         "for this dataset"),
        (m.split == dataset.split, f"split {m.split!r} but the dataset is split {dataset.split!r}",
         "for this split"),
        (m.num_images == ds_size, f"num_images {m.num_images} but the dataset has {ds_size} images",
         "for the whole split (the same data.limit, or data.toy_size for a synthetic set)"),
        (m.image_size == dataset.image_size,
         f"image_size {m.image_size} but the dataset's image_size is {dataset.image_size}",
         "at this image size"),
        (m.fingerprint == ds_fp, f"fingerprint {m.fingerprint!r} but the dataset's fingerprint is {ds_fp!r} "
         "(other images or another order)", "for these images"),
    ]  # fmt: skip
    for ok, what, fix in checks:
        if not ok:
            raise DataError(f"part-map file {p.name} was made for {what}; export part maps {fix}")
    if m.view != "whole":
        raise DataError(
            f"part-map file {p.name} labels a {m.view} crop of each image, but training crops the whole "
            "full-resolution image; re-export the part maps with this semmae"
        )


def load_part_maps(path: str | os.PathLike[str], *, dataset: Any = None) -> PartMaps:
    """Memory-map a part-map file and validate it (and its pairing with ``dataset``).

    Args:
        path: ``NAME.npy`` (``.npy`` appended when missing), with ``NAME.json`` next to it.
        dataset: an ImageSet-like object (``name``, ``split``, ``len()``, ``image_size``,
            ``fingerprint()``); when given, the file must have been made for exactly it.

    Returns:
        :class:`PartMaps` with a read-only memory-mapped (N, h, w) uint8 array.

    Raises:
        DataError: missing file or manifest, unknown format version, corrupt or truncated array,
            wrong dtype or shape, labels >= num_parts, or any mismatch with ``dataset``; the message
            names the field with the file's and the dataset's values.
    """
    p = npy_path(path)
    if not p.is_file() and Path(path).is_file():
        raise DataError(f"{path} is not a part-map file; give the .npy that 'semmae parts export' wrote")
    if not p.is_file():
        raise DataError(f"part-map file {p} does not exist; export part maps for this dataset first")
    manifest = _read_manifest(p)
    arr = _open_array(p)
    _check_array(p, arr, manifest)
    if dataset is not None:
        _check_dataset(p, manifest, dataset)
    return PartMaps(labels=arr, manifest=manifest, path=p)
