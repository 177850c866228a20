"""Images per second delivered by the pretraining loader of an image folder, against torchvision's.

Writes a folder of ImageNet-like JPEGs (500x375 and 375x500, quality 90, varied content: smooth
colour fields, shapes, texture and noise) in ``ROOT/train/<class>/`` and ``ROOT/val/<class>/``, then
times, in one run and alternating, two loaders that deliver normalised 224x224 float batches:

* **ours**: ``semmae.engine.batches.PretrainBatches`` on ``data.name=image_folder`` (decode at full
  resolution, MAE's bicubic random-resized crop (0.2, 1) and flip in the DataLoader workers from
  per-batch draws, normalise the uint8 batch in the main process);
* **torchvision**: ``ImageFolder`` with MAE's transform list (``RandomResizedCrop(224, scale=(0.2,
  1.0), interpolation=BICUBIC)``, ``RandomHorizontalFlip``, ``ToTensor``, ``Normalize``) and a
  ``DataLoader`` with the same workers and batch (shuffle, drop_last).

Both decode with PIL (``Image.open`` + ``convert("RGB")``; Pillow's wheels bundle libjpeg-turbo, and
the JSON says whether this build has it). We keep PIL rather than ``torchvision.io.decode_jpeg``:
it is the decoder MAE's pipeline uses (so crops match it pixel for pixel), it reads every format an
image folder may hold (PNG, WebP, TIFF, 16-bit), applies EXIF orientation, and its bicubic resize
of a crop is antialiased and fast on uint8, where a tensor decode would still need a float resize.

Each loader runs ``--rounds`` full passes over the train split, alternating, after one warm-up
batch per pass; the figure is the median images/s. Prints one JSON object.

Usage: ``python benchmarks/bench_data.py [--images 2000] [--batch 128] [--workers N] [--root DIR]
[--keep] [--smoke]``. ``--smoke`` writes 48 small images and runs one round (for tests).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import PIL
import torch
import torchvision
import torchvision.transforms as T
from PIL import Image, ImageDraw, features

from semmae.config import DataConfig
from semmae.data import build_dataset
from semmae.engine.batches import PretrainBatches

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
NUM_CLASSES = 10


def _picture(seed: int, width: int, height: int) -> Image.Image:
    """Varied content: a smooth colour field, a few shapes, fine texture and sensor-like noise."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (rng.integers(2, 8), rng.integers(2, 8), 3), dtype=np.uint8)
    im = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(im)
    for _ in range(rng.integers(3, 12)):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        x1, y1 = x0 + int(rng.integers(10, width // 2)), y0 + int(rng.integers(10, height // 2))
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=fill)
    arr = np.asarray(im).astype(np.int16)
    stripes = (np.sin(np.arange(width) / rng.uniform(1.5, 6.0)) * rng.uniform(0, 20)).astype(np.int16)
    arr = arr + stripes[None, :, None] + rng.normal(0, 6, arr.shape).astype(np.int16)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _write_one(job: tuple[Path, int, int, int]) -> None:
    path, seed, width, height = job
    path.parent.mkdir(parents=True, exist_ok=True)
    _picture(seed, width, height).save(path, quality=90)


def write_folder(root: Path, num_images: int, sizes: tuple[tuple[int, int], ...], workers: int) -> None:
    """``num_images`` JPEGs under ``root/train`` and a tenth as many under ``root/val``."""
    jobs = []
    for split, count, offset in (
        ("train", num_images, 0),
        ("val", max(NUM_CLASSES, num_images // 10), 10**6),
    ):
        for i in range(count):
            width, height = sizes[i % len(sizes)]
            path = root / split / f"class_{i % NUM_CLASSES:02d}" / f"img_{i:05d}.jpg"
            jobs.append((path, offset + i, width, height))
    with Pool(max(1, workers)) as pool:
        pool.map(_write_one, jobs, chunksize=16)


def _ours(root: Path, batch: int, workers: int) -> Iterable[torch.Tensor]:
    data = DataConfig(
        name="image_folder", root=str(root), image_size=224, in_chans=3, crop_scale=[0.2, 1.0],
        mean=MEAN, std=STD, num_workers=workers,
    )  # fmt: skip
    ds = build_dataset(data, "train")
    batches = PretrainBatches(ds, data, batch, seed=0, rank=0, world=1, device=torch.device("cpu"))
    return (mb.images for mb in batches.epoch(0))


def _torchvision(root: Path, batch: int, workers: int) -> Iterable[torch.Tensor]:
    transform = T.Compose([
        T.RandomResizedCrop(224, scale=(0.2, 1.0), interpolation=T.InterpolationMode.BICUBIC),
        T.RandomHorizontalFlip(),
        T.ToTensor(),
        T.Normalize(mean=MEAN, std=STD),
    ])  # fmt: skip
    ds = torchvision.datasets.ImageFolder(str(root / "train"), transform=transform)
    loader = torch.utils.data.DataLoader(
        ds, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True
    )
    return (images for images, _ in loader)


def _images_per_s(make: Callable[[], Iterable[torch.Tensor]]) -> tuple[float, int]:
    """Images/s after the first batch (worker start-up excluded), and the images timed."""
    it = iter(make())
    first = next(it)
    assert first.shape[1:] == (3, 224, 224) and first.dtype == torch.float32
    t0, count = time.perf_counter(), 0
    for images in it:
        count += images.shape[0]
    return count / max(time.perf_counter() - t0, 1e-9), count


def main(argv: list[str] | None = None) -> dict[str, object]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--root", type=Path, default=None, help="folder to (re)use; default: a temp folder")
    p.add_argument("--keep", action="store_true", help="keep the temp folder (its path is in the JSON)")
    p.add_argument("--smoke", action="store_true", help="48 small images, batch 8, one round")
    args = p.parse_args(argv)
    sizes: tuple[tuple[int, int], ...] = ((500, 375), (375, 500))
    if args.smoke:
        args.images, args.batch, args.rounds, sizes = 48, 8, 1, ((250, 188), (188, 250))
    torch.set_num_threads(1)  # the main process only normalises; the workers do the work
    tmp = None if args.root is not None else tempfile.TemporaryDirectory(prefix="semmae_bench_data_")
    root = args.root if args.root is not None else Path(tmp.name)
    try:
        if not (root / "train").is_dir():
            t0 = time.perf_counter()
            write_folder(root, args.images, sizes, args.workers)
            write_s = time.perf_counter() - t0
        else:
            write_s = 0.0
        runs: dict[str, list[float]] = {"ours": [], "torchvision": []}
        timed = 0
        for _ in range(args.rounds):
            for name, make in (("ours", _ours), ("torchvision", _torchvision)):
                rate, timed = _images_per_s(lambda make=make: make(root, args.batch, args.workers))
                runs[name].append(rate)
        ours, ref = statistics.median(runs["ours"]), statistics.median(runs["torchvision"])
        result = {
            "images": args.images, "image_sizes": [list(s) for s in sizes], "jpeg_quality": 90,
            "batch": args.batch, "workers": args.workers, "rounds": args.rounds, "timed_images_per_round": timed,
            "decoder": f"PIL {PIL.__version__} (libjpeg-turbo: {features.check_feature('libjpeg_turbo')})",
            "ours_img_per_s": round(ours, 1), "torchvision_img_per_s": round(ref, 1),
            "ratio": round(ours / ref, 3), "runs": {k: [round(v, 1) for v in vs] for k, vs in runs.items()},
            "write_s": round(write_s, 1), "root": str(root) if (args.keep or args.root) else None,
            "cpus": os.cpu_count(), "torch": torch.__version__, "torchvision": torchvision.__version__,
        }  # fmt: skip
    finally:
        if tmp is not None and not args.keep:
            tmp.cleanup()
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
