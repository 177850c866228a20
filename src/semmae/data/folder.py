"""Image folders: ``root/<class>/<image>`` trees (classes = sorted subfolders) or flat folders.

Splits: when ``root/train`` and ``root/test`` (or ``root/val``) exist they are the splits;
otherwise every file goes to ``test`` when a stable hash of its path relative to ``root`` falls in
the lowest 10%, else to ``train`` (so adding files never moves the others). Both splits share one
class map: the sorted names of the train split's class folders that hold images (torchvision's
``ImageFolder`` numbering, where no class folder is empty; an empty one is no class here). A held-out split may lack classes (or hold empty class folders); a
held-out class folder with images that train has none of is refused, since it has no label.

Image folders are always streamed at full resolution: nothing is shrunk when a file is read.
Every read decodes the file (PIL, EXIF orientation applied, 16-bit images scaled to 8 bits) and
takes one view of the decoded pixels (:mod:`semmae.data.views`): pretraining's random resized crop
(``FileSource.read_crop``), the evaluation view (short side to ``image_size / crop_pct``, centre
crop; ``FileSource.read``) or the whole image squeezed to S x S (the view stage 1 labels). Every
file's header is checked when the split is built: unreadable files are skipped with a warning
(``data.on_corrupt=warn``) or stop the build (``error``); a file that still fails later yields a
black image (warn) or an error. A readable file whose pixels have no faithful 8-bit form (floating
point, or 32-bit integers past 16 bits) is refused under either setting: it is not broken, and a
black or clipped stand-in would train on wrong pixels silently.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import compress
from pathlib import Path

import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image
from tqdm.auto import tqdm

from semmae.config import DataConfig
from semmae.data.imageset import ImageSet
from semmae.data.views import decode_image, eval_view, train_crop, whole_view
from semmae.errors import DataError

log = logging.getLogger(__name__)

DEFAULT_CROP_PCT = 0.875  # data.crop_pct=None for image folders: timm/MAE's 256 -> 224
EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
TEST_PERMILLE = 100  # share of files (per mille) the path hash sends to "test"
_ACCEPTED = f"accepted extensions: {' '.join(e[1:] for e in EXTENSIONS)}"


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in EXTENSIONS and not path.name.startswith(".") and path.is_file()


def _iter_images(folder: Path) -> Iterator[Path]:
    """Image files anywhere below ``folder`` (hidden files and folders skipped), in no set order."""
    return (
        p
        for p in folder.rglob("*")
        if _is_image(p) and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def _images_under(folder: Path) -> list[Path]:
    """Image files anywhere below ``folder`` (hidden files and folders skipped), sorted by path."""
    return sorted(_iter_images(folder), key=lambda p: p.as_posix())


def _class_dirs(folder: Path) -> list[Path]:
    """The candidate class folders of ``folder``: its non-hidden subfolders, sorted by name."""
    return sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def _class_names(folder: Path) -> list[str]:
    """Sorted names of the subfolders of ``folder`` that hold at least one image (its classes).

    Stops at each folder's first image, so naming the classes of a large split stays cheap.
    """
    return [d.name for d in _class_dirs(folder) if next(_iter_images(d), None) is not None]


def _unknown_classes(folder: Path, unknown: list[str], train: Path | None) -> DataError:
    names = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
    return DataError(
        f"class folder(s) {names} in {folder} have no images in {train}, so they have no label "
        f"(classes are the train split's class folders); add their training images under {train} "
        f"or move them out of {folder}"
    )


def scan_folder(folder: Path, train: Path | None = None) -> tuple[list[Path], list[int], list[str]]:
    """Files, targets and classes of one folder.

    Subfolders holding images make a class tree; otherwise the images directly in ``folder`` form
    an unlabelled set (targets -1, no classes). Subfolders without images are no classes.

    Args:
        folder: the split's folder.
        train: the train split's folder, for a held-out split: its classes (:func:`_class_names`)
            label ``folder`` too, so one name has one index in both splits. None, or a train
            folder without classes, numbers ``folder``'s own classes (sorted names).

    Raises:
        DataError: a class folder with images in ``folder`` that ``train`` has no images of.
    """
    per_class = {d.name: imgs for d in _class_dirs(folder) if (imgs := _images_under(d))}
    if not per_class:
        files = sorted((p for p in folder.iterdir() if _is_image(p)), key=lambda p: p.as_posix())
        return files, [-1] * len(files), []
    classes = (_class_names(train) if train is not None else []) or sorted(per_class)
    index = {c: i for i, c in enumerate(classes)}
    unknown = [c for c in per_class if c not in index]
    if unknown:
        raise _unknown_classes(folder, unknown, train)
    files = [f for c in per_class for f in per_class[c]]  # by class name, then path
    targets = [index[c] for c in per_class for _ in per_class[c]]
    return files, targets, classes


def in_test_split(relative_path: str) -> bool:
    """The stable hash split: True for about TEST_PERMILLE/1000 of all relative paths."""
    digest = hashlib.sha1(relative_path.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % 1000 < TEST_PERMILLE


def _split_files(root: Path, split: str) -> tuple[Path, list[Path], list[int], list[str]]:
    """(base folder, files, targets, classes) of one split, before the limit."""
    held_out = next((root / n for n in ("test", "val") if (root / n).is_dir()), None)
    if (root / "train").is_dir() and held_out is not None:
        if split == "train":
            return root / "train", *scan_folder(root / "train")
        return held_out, *scan_folder(held_out, train=root / "train")  # labelled with train's classes
    files, targets, classes = scan_folder(root)
    keep = [in_test_split(f.relative_to(root).as_posix()) == (split == "test") for f in files]
    files, targets = list(compress(files, keep)), list(compress(targets, keep))
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
        crop_pct: the evaluation view's centre share (short side resized to S / crop_pct).
        view: what :meth:`read` returns: ``eval`` (resize + centre crop) or ``whole`` (the whole
            image resized to S x S, aspect ignored).
    """

    base: Path
    files: list[str]
    sizes: list[int]
    image_size: int
    in_chans: int
    on_corrupt: str = "warn"
    crop_pct: float = DEFAULT_CROP_PCT
    view: str = "eval"

    def __len__(self) -> int:
        return len(self.files)

    def decode(self, index: int) -> Image.Image:
        """The decoded full-resolution PIL image (black S x S for an unreadable file under ``warn``)."""
        im = self._decode(index)
        if im is None:
            return Image.new("L" if self.in_chans == 1 else "RGB", (self.image_size, self.image_size))
        return im

    def _decode(self, index: int) -> Image.Image | None:
        """The decoded full-resolution image, or None for an unreadable file under ``warn``."""
        path = self.base / self.files[index]
        try:
            return decode_image(path, self.in_chans)
        except DataError:  # a pixel type with no 8-bit form: the file is fine, a black image is not
            raise
        except Exception as exc:  # noqa: BLE001 - PIL raises many types for bad files
            _corrupt(path, exc, self.on_corrupt, "a black image stands in for it")
            return None

    def read(self, index: int) -> torch.Tensor:
        """Image ``index`` in this source's view, uint8 (C, S, S)."""
        im = self.decode(index)  # a black S x S stand-in stays black in either view
        if self.view == "whole":
            return TF.pil_to_tensor(whole_view(im, self.image_size))
        return TF.pil_to_tensor(eval_view(im, self.image_size, self.crop_pct))

    def read_crop(
        self, index: int, uniforms: Sequence[float], scale: tuple[float, float], ratio: tuple[float, float]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A random resized crop (+ flip) of image ``index`` at full resolution.

        Args:
            index: image index.
            uniforms: the 23 pre-drawn crop and flip draws (a row of ``transforms.crop_uniforms``).
            scale, ratio: RandomResizedCrop ranges.

        Returns:
            uint8 (C, S, S) crop and its float32 (4,) box ``(top, left, h, w)`` as fractions of
            the image's height and width (the whole image for an unreadable file).
        """
        im = self._decode(index)
        if im is None:
            black = torch.zeros(self.in_chans, self.image_size, self.image_size, dtype=torch.uint8)
            return black, torch.tensor([0.0, 0.0, 1.0, 1.0])
        crop, box = train_crop(im, uniforms, self.image_size, scale, ratio)
        return TF.pil_to_tensor(crop), box

    def digest_items(self) -> Iterator[bytes]:
        for name, size in zip(self.files, self.sizes, strict=True):
            yield f"{name}\t{size}\n".encode()


def whole_image_view(ds: ImageSet) -> ImageSet:
    """The same set whose reads return each whole image resized to S x S (aspect ratio ignored).

    In-memory sets are already stored whole at S x S and come back unchanged. The fingerprint is
    the set's own (the view does not change which images, or in which order).
    """
    if ds.source is None or not isinstance(ds.source, FileSource):
        return ds
    view = dataclasses.replace(ds, source=dataclasses.replace(ds.source, view="whole"))
    view._fingerprint = ds._fingerprint
    return view


def _corrupt(path: Path, exc: Exception, on_corrupt: str, instead: str) -> None:
    """Refuse an unreadable file (``on_corrupt=error``) or warn what is done ``instead``."""
    if on_corrupt == "error":
        raise DataError(f"unreadable image {path} ({exc}); under data.on_corrupt=warn {instead}") from None
    log.warning("unreadable image %s (%s): %s", path, exc, instead)


def _header_ok(path: Path) -> Exception | None:
    try:
        with Image.open(path) as im:  # reads the header only
            mode = im.mode
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for bad files
        return exc
    if mode == "F":
        return DataError(f"image {path} holds floating-point pixels; convert it to an 8- or 16-bit image")
    return None


def _verify_headers(files: list[Path], on_corrupt: str) -> list[bool]:
    with ThreadPoolExecutor(max_workers=8) as pool:
        checks = pool.map(_header_ok, files)
        results = list(tqdm(checks, total=len(files), desc="checking images", disable=None))
    refused = next((exc for exc in results if isinstance(exc, DataError)), None)
    if refused is not None:  # not a broken file but one the toolkit cannot read faithfully
        count = sum(isinstance(exc, DataError) for exc in results)
        raise DataError(f"{refused}" + (f" ({count - 1} more such file(s))" if count > 1 else ""))
    for path, exc in zip(files, results, strict=True):
        if exc is not None:
            _corrupt(path, exc, on_corrupt, "the file is skipped")
    return [exc is None for exc in results]


def _root(cfg: DataConfig) -> Path:
    """``data.root``, checked to be a folder (DataError saying how to fix it otherwise)."""
    if not cfg.root:
        raise DataError(
            f"data.name=image_folder needs data.root=DIR (images or class subfolders; {_ACCEPTED})"
        )
    root = Path(cfg.root).expanduser()
    if root.is_file():
        raise DataError(f"data.root {root} is a file; set data.root to the folder that holds the images")
    if not root.is_dir():
        raise DataError(f"image folder {root} not found; set data.root=DIR ({_ACCEPTED})")
    return root


def _listed(root: Path, split: str, limit: int | None) -> tuple[Path, list[Path], list[int], list[str]]:
    """:func:`_split_files` cut to ``limit``; DataError when the split has no images."""
    base, files, targets, classes = _split_files(root, split)
    if not files:
        raise DataError(
            f"no images for split {split!r} in {root} ({_ACCEPTED}); add images or create train/ and test/"
        )
    if limit is not None:
        files, targets = files[:limit], targets[:limit]
    return base, files, targets, classes


def folder_labels(cfg: DataConfig, split: str) -> tuple[list[str], torch.Tensor]:
    """The classes and (N,) int64 targets of one split from the folder listing alone, no file opened.

    What :func:`load_image_folder` labels, but for files it would skip as unreadable: the cheap
    answer to "does this split have labels" before a long run.
    """
    _, _, targets, classes = _listed(_root(cfg), split, cfg.limit)
    return classes, torch.tensor(targets, dtype=torch.int64)


def load_image_folder(cfg: DataConfig, split: str) -> ImageSet:
    """One split of an image folder (see the module docstring).

    Raises:
        DataError: no root, missing root, no images, or an unreadable file with on_corrupt=error.
    """
    root = _root(cfg)
    base, files, targets, classes = _listed(root, split, cfg.limit)
    keep = _verify_headers(files, cfg.on_corrupt)
    if not all(keep):
        log.warning("skipped %d unreadable image(s) in %s", keep.count(False), base)
    if not any(keep):
        raise DataError(f"no readable images for split {split!r} in {root}; check the files ({_ACCEPTED})")
    kept = list(compress(files, keep))
    source = FileSource(
        base=base,
        files=[f.relative_to(base).as_posix() for f in kept],
        sizes=[f.stat().st_size for f in kept],
        image_size=cfg.image_size,
        in_chans=cfg.in_chans,
        on_corrupt=cfg.on_corrupt,
        crop_pct=DEFAULT_CROP_PCT if cfg.crop_pct is None else cfg.crop_pct,
    )
    targets_t = torch.tensor(list(compress(targets, keep)), dtype=torch.int64)
    return ImageSet("image_folder", split, classes, targets_t, None, source=source)
