"""Full-resolution image folders: MAE's crop and eval views, exact rebuilds, crops that follow maps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TVF
from PIL import Image

from semmae.config import DataConfig
from semmae.data import build_dataset
from semmae.data.folder import FileSource, whole_image_view
from semmae.data.transforms import box_from_draws, boxes_from_uniforms, crop_uniforms
from semmae.engine.batches import PretrainBatches

pytestmark = pytest.mark.usefixtures("single_thread")


def _smooth_rgb(width: int, height: int, seed: int) -> np.ndarray:
    """Varied but smooth content (so bicubic rounding, not aliasing, decides pixel differences)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BILINEAR))


def _folder(root: Path, images: dict[str, np.ndarray]) -> Path:
    for name, arr in images.items():
        path = root / "train" / "a" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(path)
    (root / "test" / "a").mkdir(parents=True, exist_ok=True)
    Image.fromarray(next(iter(images.values()))).save(root / "test" / "a" / "0.png")
    return root


def _cfg(root: Path, **kw) -> DataConfig:
    base = dict(name="image_folder", root=str(root), image_size=64, in_chans=3, mean=[0.5], std=[0.5])
    return DataConfig(**{**base, **kw})


def test_scale_one_crop_keeps_the_whole_image_with_its_border(tmp_path: Path) -> None:
    arr = np.full((336, 448, 3), 128, dtype=np.uint8)
    arr[:8], arr[-8:], arr[:, :8], arr[:, -8:] = 255, 255, 255, 255  # white frame, 8 px
    ds = build_dataset(
        _cfg(_folder(tmp_path, {"x.png": arr}), image_size=224, crop_scale=[1.0, 1.0]), "train"
    )
    draws = crop_uniforms(1, torch.Generator().manual_seed(0), hflip=True)[0]
    crop, box = ds.source.read_crop(0, draws, (1.0, 1.0), (0.75, 1.3333))
    assert box.tolist() == [0.0, 0.0, 1.0, 1.0]
    frame = torch.cat([crop[:, 0], crop[:, -1], crop[:, :, 0], crop[:, :, -1]], 1)
    assert int(frame.min()) >= 240  # every side of the frame survives (a centre crop loses two)
    assert abs(int(crop[:, 112, 112].float().mean()) - 128) <= 1


def test_train_crop_equals_torchvision_resized_crop_from_full_resolution(tmp_path: Path) -> None:
    arr = _smooth_rgb(500, 375, seed=1)
    ds = build_dataset(_cfg(_folder(tmp_path, {"x.png": arr})), "train")
    draws = crop_uniforms(16, torch.Generator().manual_seed(3), hflip=True)
    pil = Image.fromarray(arr)
    for row in draws:
        crop, box = ds.source.read_crop(0, row, (0.2, 1.0), (0.75, 1.3333))
        top, left, h, w = (box * torch.tensor([375, 500, 375, 500])).round().int().tolist()
        ref = TVF.resized_crop(pil, top, left, h, w, [64, 64], T.InterpolationMode.BICUBIC)
        if row[-1] > 0.5:
            ref = TVF.hflip(ref)
        assert torch.equal(crop, torch.from_numpy(np.asarray(ref).copy()).permute(2, 0, 1))
    sizes = [
        float(b[2] * b[3]) for b in (ds.source.read_crop(0, r, (0.2, 1.0), (0.75, 1.3333))[1] for r in draws)
    ]
    assert min(sizes) >= 0.19 and max(sizes) <= 1.0  # boxes are in the full image's coordinates


def test_worker_boxes_agree_with_the_batched_boxes() -> None:
    draws = crop_uniforms(2000, torch.Generator().manual_seed(9), hflip=True)
    for height, width, scale in ((375, 500, (0.2, 1.0)), (28, 28, (0.08, 1.0)), (500, 375, (1.0, 1.0))):
        batched = boxes_from_uniforms(draws, height, width, scale, (0.75, 1.3333))
        single = torch.tensor(
            [box_from_draws(row, height, width, scale, (0.75, 1.3333)) for row in draws.tolist()]
        )
        same = (batched == single).all(1).float().mean()
        assert float(same) >= 0.995, (height, width, float(same))  # float32 vs float64 rounding only
        assert bool((single[:, 2:] > 0).all() and (single[:, 0] + single[:, 2] <= height).all())


def test_eval_view_matches_resize_256_center_crop_224(tmp_path: Path) -> None:
    arr = _smooth_rgb(512, 384, seed=2)
    ds = build_dataset(_cfg(_folder(tmp_path, {"x.png": arr}), image_size=224), "train")
    assert ds.source.crop_pct == 0.875
    ref = T.Compose(
        [T.Resize(256, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(224), T.ToTensor()]
    )
    expected = ref(Image.fromarray(arr))
    got = ds.load([0])[0].float() / 255
    assert got.shape == (3, 224, 224)
    assert float((got - expected).abs().max()) <= 1 / 255 + 1e-6
    whole = whole_image_view(ds).load([0])[0]  # stage 1's view: everything, aspect ignored
    assert whole.shape == (3, 224, 224) and whole_image_view(ds).fingerprint() == ds.fingerprint()
    squeezed = np.asarray(Image.fromarray(arr).resize((224, 224), Image.Resampling.BICUBIC))
    assert torch.equal(whole, torch.from_numpy(squeezed.copy()).permute(2, 0, 1))


def _batches(ds, **kw) -> PretrainBatches:
    data = _cfg(Path(ds.source.base), **kw.pop("data", {}))
    return PretrainBatches(ds, data, batch_size=4, seed=5, rank=0, world=1, device=torch.device("cpu"), **kw)


def test_streamed_batches_rebuild_exactly_whatever_the_workers(tmp_path: Path) -> None:
    images = {f"{i:02d}.jpg": _smooth_rgb(120 if i % 2 else 90, 90 if i % 2 else 120, i) for i in range(12)}
    ds = build_dataset(_cfg(_folder(tmp_path, images)), "train")
    assert isinstance(ds.source, FileSource) and ds.streamed
    full = list(_batches(ds).epoch(1))
    assert [b.index for b in full] == [0, 1, 2]
    assert full[0].images.shape == (4, 3, 64, 64)
    later = list(
        PretrainBatches(ds, _cfg(tmp_path, num_workers=2), 4, 5, 0, 1, torch.device("cpu")).epoch(1, start=1)
    )
    assert [b.index for b in later] == [1, 2]
    for a, b in zip(full[1:], later, strict=True):
        assert torch.equal(a.images, b.images)
        assert torch.equal(torch.rand(3, generator=a.generator), torch.rand(3, generator=b.generator))
    other_epoch = next(iter(_batches(ds).epoch(2)))
    assert not torch.equal(other_epoch.images, full[0].images)


class _Maps:
    """Whole-image part maps on a 14 x 14 grid: part 0 on the left half, part 1 on the right."""

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        grid = torch.zeros(len(indices), 14, 14, dtype=torch.uint8)
        grid[:, :, 7:] = 1
        return grid


def test_part_labels_follow_full_resolution_crops_and_flips(tmp_path: Path) -> None:
    images = {}
    for i, (w, h) in enumerate([(500, 375), (375, 500), (448, 336), (333, 333)] * 2):
        arr = np.zeros((h, w, 3), dtype=np.uint8)
        arr[:, w // 2 :] = 255  # left half dark (part 0), right half bright (part 1)
        images[f"{i}.png"] = arr
    ds = build_dataset(_cfg(_folder(tmp_path, images)), "train")
    agree = total = 0
    for seed in range(6):
        batches = PretrainBatches(
            ds, _cfg(tmp_path, crop_scale=[0.08, 1.0]), 4, seed, 0, 1, torch.device("cpu"),
            part_maps=_Maps(), grid=(8, 8), num_parts=2,
        )  # fmt: skip
        for mb in batches.epoch(0):
            bright = mb.images.mean(1) > 0  # normalised with mean 0.5: bright pixels are > 0
            per_patch = bright.unfold(1, 8, 8).unfold(2, 8, 8).float().mean((-1, -2)).flatten(1) > 0.5
            agree += int((per_patch.long() == mb.part_labels).sum())
            total += mb.part_labels.numel()
    assert total == 6 * 2 * 4 * 64 and agree / total >= 0.95, agree / total
