"""Pretraining crops decoded on the training device: JPEG bytes from the workers, nvJPEG on a GPU.

``data.decode=device``. A CPU decodes a photograph of ImageNet's size (500 x 375, ~110 KiB) and
crops it in about 4-5 ms, so a loader on 16 cores delivers roughly 3,000 img/s: less than a
ViT-B/16 MAE step takes on an H100/H200-class GPU. Here the DataLoader workers only read each
file and its header; :func:`decode_crops` decodes the batch's JPEGs at once with
``torchvision.io.decode_jpeg(device=...)`` (nvJPEG on CUDA) and crops, resizes and flips each on
the device.

The crop boxes are the same as the CPU path's (:func:`semmae.data.views.train_crop`: the same
draws, the same box rule), so part maps follow them unchanged. The pixels are close to, not
identical with, the CPU path's: another IDCT, and torch's antialiased bicubic (a = -0.75) where
PIL's has a = -0.5. Files a GPU decoder cannot take as they are (not a JPEG, CMYK, an EXIF
rotation, progressive) are cropped in the worker exactly as on the CPU path and travel decoded.

torchvision 0.29 marks its image decoders deprecated in favour of TorchCodec (a
``DeprecationWarning``); they are what the supported torchvision versions (0.20-0.29) share.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg

from semmae import runtime
from semmae.data.imageset import ImageSet, per_image_batches
from semmae.data.transforms import box_from_draws
from semmae.errors import DataError

log = logging.getLogger(__name__)
ENCODED, DECODED = 1.0, 0.0  # meta[0]: what a payload holds
_ORIENTATION = 0x0112  # EXIF orientation tag
_DEVICE_MODES = ("L", "RGB")  # JPEG colour modes decode_jpeg returns as they are


def _device_decodable(im: Image.Image) -> bool:
    """A baseline JPEG in grey or YCbCr without an EXIF rotation."""
    return (
        im.format == "JPEG"
        and im.mode in _DEVICE_MODES
        and not im.info.get("progressive")
        and im.getexif().get(_ORIENTATION, 1) == 1
    )


def read_encoded(
    source: object, index: int, uniforms: Sequence[float], *, scale: tuple[float, float],
    ratio: tuple[float, float],
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """One image's payload for :func:`decode_crops` (runs in a DataLoader worker).

    Args:
        source: the set's :class:`semmae.data.folder.FileSource`.
        index: image index.
        uniforms: its 23 crop and flip draws.
        scale, ratio: RandomResizedCrop ranges.

    Returns:
        ``(payload uint8 (n,), meta float32 (8,))``: the file's bytes with ``meta = (ENCODED, top,
        left, h, w, H, W, flip)`` in pixels, or a crop made here, flattened, with
        ``meta = (DECODED, top / H, left / W, h / H, w / W, 1, 1, 0)`` (its box already as fractions).
    """
    path = Path(source.base) / source.files[index]  # type: ignore[attr-defined]
    try:
        with Image.open(path) as im:
            width, height = im.size
            encoded = _device_decodable(im) and source.in_chans in (1, 3)  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - the CPU path reports the file as it does for every reader
        encoded = False
    if not encoded:
        crop, box = source.read_crop(index, uniforms, scale, ratio)  # type: ignore[attr-defined]
        meta = torch.tensor([DECODED, *box.tolist(), 1.0, 1.0, 0.0], dtype=torch.float32)
        return crop.reshape(-1), meta
    draws = [float(v) for v in uniforms]
    top, left, h, w = box_from_draws(draws, height, width, scale, ratio)
    payload = torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)
    flip = 1.0 if draws[-1] > 0.5 else 0.0
    meta = torch.tensor([ENCODED, top, left, h, w, height, width, flip], dtype=torch.float32)
    return payload, meta


def _packed(batch: list[tuple[torch.Tensor, torch.Tensor, int]]) -> tuple[torch.Tensor, ...]:
    """Collate payloads of different lengths into one buffer and their end offsets.

    One tensor per batch crosses from a worker (one shared-memory segment), not one per image.
    """
    payloads, metas, indices = zip(*batch, strict=True)
    ends = torch.tensor([p.numel() for p in payloads], dtype=torch.int64).cumsum(0)
    return torch.cat(payloads), ends, torch.stack(metas), torch.tensor(indices, dtype=torch.int64)


def iterate_encoded(
    ds: ImageSet,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    scale: Sequence[float],
    ratio: Sequence[float],
    num_workers: int = 0,
) -> Iterator[tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]]:
    """:func:`semmae.data.streaming.iterate_crops`'s batches, with JPEGs left encoded.

    Yields:
        ``(payloads, metas (B, 8), indices (B,))`` for :func:`decode_crops`.
    """
    if ds.source is None or not hasattr(ds.source, "read_crop"):
        raise ValueError("data.decode=device needs a streamed image folder")
    ranges = {"scale": (float(scale[0]), float(scale[1])), "ratio": (float(ratio[0]), float(ratio[1]))}
    read = partial(read_encoded, ds.source, **ranges)
    for buffer, ends, metas, indices in per_image_batches(
        read, batches, num_workers=num_workers, collate_fn=_packed
    ):
        starts = [0, *ends[:-1].tolist()]
        yield [buffer[a:b] for a, b in zip(starts, ends.tolist(), strict=True)], metas, indices


def _decode_each(
    payloads: list[torch.Tensor], jpegs: list[int], mode: object, device: torch.device, on_corrupt: str
) -> list[torch.Tensor | None]:
    """``decode_jpeg`` of the batch at once; if that fails, image by image (None: undecodable).

    A JPEG whose header reads but whose data is cut or corrupt fails the whole batched call.
    """
    if not jpegs:
        return []
    try:
        return list(decode_jpeg([payloads[i] for i in jpegs], mode=mode, device=device))
    except RuntimeError:
        pass
    images: list[torch.Tensor | None] = []
    for i in jpegs:
        try:
            images.append(decode_jpeg(payloads[i], mode=mode, device=device))
        except RuntimeError as exc:
            if on_corrupt == "error":
                raise DataError(
                    f"a JPEG of this batch could not be decoded ({exc}); under data.on_corrupt=warn a "
                    "black image stands in for it"
                ) from None
            log.warning("undecodable JPEG in the batch (%s): a black image stands in for it", exc)
            images.append(None)
    return images


def decode_crops(
    payloads: list[torch.Tensor],
    metas: torch.Tensor,
    size: int,
    in_chans: int,
    device: torch.device,
    on_corrupt: str = "warn",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode, crop, resize (bicubic, antialiased) and flip a batch on ``device``.

    Args:
        payloads: per image, JPEG bytes or a flattened uint8 (C, S, S) crop (see :func:`read_encoded`).
        metas: (B, 8) float32, as :func:`read_encoded` returns them.
        size: S.
        in_chans: C (1 or 3).
        device: where to decode (nvJPEG on CUDA; libjpeg-turbo on the CPU).
        on_corrupt: a JPEG that fails to decode: ``warn`` (a black image) or ``error`` (DataError).

    Returns:
        ``(crops uint8 (B, C, S, S) on device, boxes float32 (B, 4))``: boxes ``(top, left, h, w)``
        as fractions of each image's height and width, as the CPU path gives them.
    """
    mode = ImageReadMode.GRAY if in_chans == 1 else ImageReadMode.RGB
    out = torch.empty(len(payloads), in_chans, size, size, dtype=torch.uint8, device=device)
    # (top, left, h, w) over (H, W, H, W); a worker's crop carries fractions already, over (1, 1).
    boxes = metas[:, 1:5] / metas[:, [5, 6, 5, 6]]
    rows = metas.tolist()
    jpegs = [i for i, row in enumerate(rows) if row[0] == ENCODED]
    for i, image in zip(jpegs, _decode_each(payloads, jpegs, mode, device, on_corrupt), strict=True):
        if image is None:  # broken past its header: black and whole, as the CPU path's on_corrupt=warn
            out[i] = 0
            boxes[i] = torch.tensor([0.0, 0.0, 1.0, 1.0])
            continue
        _, top, left, h, w, _, _, flip = (int(v) for v in rows[i])
        crop = image[:, top : top + h, left : left + w].unsqueeze(0).float()  # sizes differ per image
        crop = F.interpolate(crop, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
        crop = crop.round_().clamp_(0, 255).to(torch.uint8)[0]
        out[i] = crop.flip(-1) if flip else crop
    for i, row in enumerate(rows):
        if row[0] == DECODED:
            out[i] = runtime.to_device(payloads[i].view(in_chans, size, size), device)
    return out, boxes
