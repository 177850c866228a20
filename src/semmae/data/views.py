"""Per-file image views of a streamed image folder: decode at full resolution, then one view.

Three views of a decoded image, all resampled once, bicubic, straight from the full-resolution
pixels (PIL's bicubic filter widens its support when shrinking, so it is antialiased):

* :func:`train_crop` - MAE's ``RandomResizedCrop(S, scale, ratio, BICUBIC)`` (+ flip), with the
  box drawn in the image's own pixel coordinates from pre-drawn uniforms (see
  :func:`semmae.data.transforms.crop_uniforms`);
* :func:`eval_view` - ``Resize(floor(S / crop_pct), BICUBIC)`` of the short side, then
  ``CenterCrop(S)`` (timm/MAE's evaluation transform; crop_pct 0.875 gives 256 -> 224);
* :func:`whole_view` - the whole image resized to S x S ignoring its aspect ratio: the view stage 1
  labels, so a part map covers the whole image in normalised coordinates.

Decoding uses PIL (libjpeg-turbo inside Pillow's wheels): it is the decoder torchvision's
``ImageFolder`` uses, so crops match MAE's pipeline pixel for pixel, it reads every format the
folder accepts, and it applies EXIF orientation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image, ImageOps
from torchvision.transforms import InterpolationMode

from semmae.data.transforms import box_from_draws
from semmae.errors import DataError

_ORIENTATION = 0x0112  # EXIF orientation tag
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")


def _to_eight_bits(im: Image.Image, path: Path) -> Image.Image:
    """16-bit grey images scaled to 8 bits (v / 257, rounded); PIL's own convert would clip at 255."""
    if im.mode in _SIXTEEN_BIT or im.mode == "I":
        arr = np.asarray(im).astype(np.int64)
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise DataError(f"image {path} holds 32-bit integer pixels; convert it to an 8- or 16-bit image")
        return Image.fromarray(np.rint(arr / 257.0).astype(np.uint8), "L")
    if im.mode == "F":
        raise DataError(f"image {path} holds floating-point pixels; convert it to an 8- or 16-bit image")
    return im


def decode_image(path: Path, in_chans: int) -> Image.Image:
    """Decode one file at full resolution: EXIF orientation applied, 16-bit scaled, ``L`` or ``RGB``.

    Raises:
        OSError, ValueError, ...: PIL's errors for unreadable files; DataError for pixel types
            that have no faithful 8-bit form.
    """
    with Image.open(path) as raw:
        # exif_transpose copies even an upright image; only rotated files need it.
        im = ImageOps.exif_transpose(raw) if raw.getexif().get(_ORIENTATION, 1) != 1 else raw
        im = _to_eight_bits(im, path)
        mode = "L" if in_chans == 1 else "RGB"
        if im.mode == mode:
            im.load()
            return im
        return im.convert(mode)


def eval_view(im: Image.Image, size: int, crop_pct: float) -> Image.Image:
    """Short side to ``floor(size / crop_pct)`` (bicubic), then the centre ``size x size``.

    torchvision's ``Resize(int)`` and ``CenterCrop``, the evaluation transform of MAE.
    """
    resized = TF.resize(im, [math.floor(size / crop_pct)], interpolation=InterpolationMode.BICUBIC)
    return TF.center_crop(resized, [size, size])


def whole_view(im: Image.Image, size: int) -> Image.Image:
    """The whole image resized to ``size x size`` (bicubic), aspect ratio ignored."""
    if im.size == (size, size):
        return im
    return im.resize((size, size), Image.Resampling.BICUBIC)


def train_crop(
    im: Image.Image,
    uniforms: Sequence[float],
    size: int,
    scale: Sequence[float],
    ratio: Sequence[float],
) -> tuple[Image.Image, torch.Tensor]:
    """Random resized crop (+ flip) of a full-resolution image, as MAE's training transform.

    Args:
        im: the decoded image (W x H).
        uniforms: the 23 draws of one image (a row of :func:`semmae.data.transforms.crop_uniforms`).
        size: output side S.
        scale, ratio: RandomResizedCrop area and aspect ranges.

    Returns:
        ``(crop, box)``: the S x S crop (flipped when the draw says so) and its box
        ``(top, left, h, w)`` as fractions of the image's height and width (float32 (4,)).
    """
    width, height = im.size
    draws = [float(v) for v in uniforms]
    top, left, h, w = box_from_draws(draws, height, width, scale, ratio)
    crop = im.crop((int(left), int(top), int(left + w), int(top + h)))
    crop = crop.resize((size, size), Image.Resampling.BICUBIC)
    if draws[-1] > 0.5:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    box = torch.tensor([top / height, left / width, h / height, w / width], dtype=torch.float32)
    return crop, box
