"""The GPU check's loader section: what pretraining's image-folder loader and JPEG decoding deliver."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from check_spec import Section, Spec, failure, usable_cores
from measure import sync

import semmae.data
from semmae import config as config_lib


def write_jpegs(root: Path, n: int, size: tuple[int, int]) -> list[Path]:
    """``n`` JPEGs of ``size`` (W, H) in two class folders, as a user's folder holds them.

    Toy-parts images, resized and overlaid with pixel noise at JPEG quality 90: smooth drawings
    alone compress to a few KiB and decode far faster than photographs. At ImageNet's typical
    500 x 375 the files come to roughly ImageNet's 110 KiB (``jpeg_kib_mean`` says how close).
    """
    import numpy as np
    from PIL import Image

    from semmae.data.synthetic import make_toy_parts

    images = make_toy_parts(min(n, 64), 64, 3, 0)[0].permute(0, 2, 3, 1).numpy()
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        path = root / f"class_{i % 2}" / f"img_{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        base = np.asarray(Image.fromarray(images[i % len(images)]).resize(size, Image.Resampling.BICUBIC))
        noisy = np.clip(base + rng.normal(0.0, 24.0, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(path, quality=90)
        paths.append(path)
    return paths


def device_decode_rate(
    spec: Spec, ds: Any, cfg: Any, device: torch.device, workers: int, budget: Section
) -> float | None:
    """img/s of ``data.decode=device``: workers read the files, each batch is decoded on ``device``."""
    from semmae.data.device_decode import decode_crops, iterate_encoded
    from semmae.data.transforms import crop_uniforms

    gen, order, b = torch.Generator().manual_seed(1), torch.randperm(len(ds)), spec.loader_batch
    plan = ((order[k : k + b], crop_uniforms(b, gen, True)) for k in range(0, len(ds) - b + 1, b))
    batches = iterate_encoded(
        ds, plan, scale=cfg.data.crop_scale, ratio=cfg.data.crop_ratio, num_workers=workers
    )
    t0, n = None, 0
    for payloads, metas, idx in batches:
        decode_crops(payloads, metas, spec.image_size, 3, device)
        if t0 is None:  # worker start-up and the decoder's first call excluded
            sync(device)
            t0 = time.perf_counter()
            continue
        n += len(idx)
        if budget.over:
            break
    sync(device)
    return round(n / (time.perf_counter() - t0), 1) if t0 is not None and n else None


def loader_section(spec: Spec, device: torch.device, budget: Section) -> dict[str, Any]:
    """Pretraining's image-folder loader img/s on the usable cores, and batch JPEG decoding on ``device``.

    The loader is the one ``semmae pretrain`` streams an image folder with: a random resized crop
    (+ flip) of each file at full resolution, in DataLoader workers, batches pinned for a GPU.
    """
    import torchvision.io

    from semmae.data import folder
    from semmae.data.streaming import iterate_crops
    from semmae.data.transforms import crop_uniforms

    workers = usable_cores()
    out: dict[str, Any] = {"images": spec.jpegs, "num_workers": workers}
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_jpegs(Path(tmp), spec.jpegs, spec.jpeg_size)
        out["jpeg_size"] = list(spec.jpeg_size)
        out["jpeg_kib_mean"] = round(sum(p.stat().st_size for p in paths) / len(paths) / 1024, 1)
        limit = getattr(folder, "MEMORY_LIMIT_BYTES", None)
        folder.MEMORY_LIMIT_BYTES = 0  # stream, as a set too big for memory is read
        try:
            cfg = config_lib.load(None, ["data.name=image_folder", f"data.root={tmp}", f"data.image_size={spec.image_size}",
                                         "data.in_chans=3", f"data.num_workers={workers}"])  # fmt: skip
            ds = semmae.data.build_dataset(cfg.data, "train")
            out["streamed"] = bool(ds.streamed)
            gen, order, b = torch.Generator().manual_seed(0), torch.randperm(len(ds)), spec.loader_batch
            plan = ((order[k : k + b], crop_uniforms(b, gen, True)) for k in range(0, len(ds) - b + 1, b))
            crops = iterate_crops(ds, plan, scale=cfg.data.crop_scale, ratio=cfg.data.crop_ratio,
                                  num_workers=workers, pin_memory=device.type == "cuda")  # fmt: skip
            t0, n = None, 0
            for images, _, _ in crops:
                if t0 is None:  # worker start-up excluded: a training run pays it once
                    t0 = time.perf_counter()
                    continue
                n += images.shape[0]
                if budget.over:
                    break
            out["loader_img_per_s"] = round(n / (time.perf_counter() - t0), 1)
            crops.close()  # its workers stop before the next loader's start
            try:
                out["device_decode_loader_img_per_s"] = device_decode_rate(
                    spec, ds, cfg, device, workers, budget
                )
            except Exception as exc:  # noqa: BLE001 - keep the CPU loader's figure
                out["device_decode_loader"] = failure(exc)
        finally:
            if limit is not None:
                folder.MEMORY_LIMIT_BYTES = limit
        data = [torchvision.io.read_file(str(p)) for p in paths[: spec.loader_batch]]
        decode_device = "cuda" if device.type == "cuda" else "cpu"
        torchvision.io.decode_jpeg(data, device=decode_device)  # warm-up (nvJPEG handles)
        times = []
        for _ in range(3):
            sync(device)
            t = time.perf_counter()
            torchvision.io.decode_jpeg(data, device=decode_device)
            sync(device)
            times.append(time.perf_counter() - t)
        out[f"decode_jpeg_{decode_device}_img_per_s"] = round(len(data) / sorted(times)[1], 1)
    return out
