"""data.decode=device: the workers send JPEG bytes, the batch is decoded and cropped on the device.

The boxes are exactly the CPU path's; the pixels close to them; files a GPU decoder cannot take
as they are come cropped from the worker, equal to the CPU path's. On CUDA the same runs on nvJPEG.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from semmae import config as config_lib
from semmae.data import build_dataset
from semmae.data.device_decode import DECODED, ENCODED, decode_crops, read_encoded
from semmae.data.transforms import crop_uniforms
from semmae.errors import ConfigError
from semmae.models.checkpoint import load_checkpoint
from semmae.train.pretrain import run_pretrain

pytestmark = pytest.mark.usefixtures("single_thread")
SCALE, RATIO = (0.2, 1.0), (0.75, 1.3333)
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _photo(seed: int, size: tuple[int, int] = (120, 90), mode: str = "RGB") -> Image.Image:
    """Smooth colour ramps with noise: a JPEG of it has structure a crop can miss."""
    rng = np.random.default_rng(seed)
    w, h = size
    ramp = np.add.outer(np.linspace(0, 160, h), np.linspace(0, 90, w))[..., None] + rng.normal(
        0, 12, (h, w, 3)
    )
    image = Image.fromarray(np.clip(ramp + rng.integers(0, 60, 3), 0, 255).astype(np.uint8))
    return image.convert(mode)


def _folder(root: Path, n: int = 12) -> Path:
    for split in ("train", "test"):
        (root / split / "a").mkdir(parents=True, exist_ok=True)
        for i in range(n):
            _photo(i).save(root / split / "a" / f"{i:02d}.jpg", quality=90)
    return root


def _source(root: Path, in_chans: int = 3, size: int = 32):  # noqa: ANN202
    cfg = config_lib.load(None, ["data.name=image_folder", f"data.root={root}", f"data.image_size={size}",
                                 f"data.in_chans={in_chans}", "data.mean=[0.5]", "data.std=[0.25]"])  # fmt: skip
    return build_dataset(cfg.data, "train").source


def _both_paths(source, indices: list[int], device: str, size: int = 32):  # noqa: ANN001, ANN202
    draws = crop_uniforms(max(indices) + 1, torch.Generator().manual_seed(3), True)
    cpu = [source.read_crop(i, draws[i].tolist(), SCALE, RATIO) for i in indices]
    enc = [read_encoded(source, i, draws[i].tolist(), scale=SCALE, ratio=RATIO) for i in indices]
    metas = torch.stack([m for _, m in enc])
    crops, boxes = decode_crops([p for p, _ in enc], metas, size, source.in_chans, torch.device(device))
    return torch.stack([c for c, _ in cpu]), torch.stack([b for _, b in cpu]), crops.cpu(), boxes, metas


@pytest.mark.parametrize("device", DEVICES)
def test_jpegs_decoded_on_the_device_match_the_cpu_crops(tmp_path: Path, device: str) -> None:
    source = _source(_folder(tmp_path))
    ref, ref_boxes, crops, boxes, metas = _both_paths(source, list(range(len(source))), device)
    assert bool((metas[:, 0] == ENCODED).all())  # every file travelled as bytes
    assert torch.equal(boxes, ref_boxes)  # the same crops: part maps follow them unchanged
    diff = (crops.float() - ref.float()).abs()
    assert crops.shape == ref.shape and diff.mean() < 1.5 and diff.max() <= 40, (diff.mean(), diff.max())
    flipped = metas[:, 7] == 1
    assert 0 < int(flipped.sum()) < len(flipped)  # both kinds were checked


@pytest.mark.parametrize("device", DEVICES)
def test_grey_jpegs_for_one_channel(tmp_path: Path, device: str) -> None:
    for split in ("train", "test"):
        (tmp_path / split / "a").mkdir(parents=True)
        for i in range(6):
            _photo(i, mode="L").save(tmp_path / split / "a" / f"{i}.jpg", quality=90)
    source = _source(tmp_path, in_chans=1)
    ref, ref_boxes, crops, boxes, metas = _both_paths(source, list(range(len(source))), device)
    assert bool((metas[:, 0] == ENCODED).all()) and torch.equal(boxes, ref_boxes)
    assert crops.shape[1] == 1 and (crops.float() - ref.float()).abs().mean() < 1.5


def test_files_the_device_cannot_decode_come_cropped_from_the_worker(tmp_path: Path) -> None:
    folder = _folder(tmp_path, n=2)
    train = folder / "train" / "a"
    _photo(20).save(train / "png.png")
    _photo(21).convert("CMYK").save(train / "cmyk.jpg", quality=90)
    _photo(22).save(train / "progressive.jpg", quality=90, progressive=True)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: the CPU path applies it
    _photo(23).save(train / "rotated.jpg", quality=90, exif=exif)
    source = _source(folder)
    special = [i for i, f in enumerate(source.files) if not f.endswith(("00.jpg", "01.jpg"))]
    assert len(special) == 4
    ref, ref_boxes, crops, boxes, metas = _both_paths(source, special, "cpu")
    assert bool((metas[:, 0] == DECODED).all())
    assert torch.equal(crops, ref) and torch.equal(boxes, ref_boxes)  # the CPU path's, exactly


def test_pretraining_decodes_on_the_device_and_resumes_exactly(tmp_path: Path, monkeypatch) -> None:
    from semmae.engine import batches

    calls: list[int] = []
    real = batches.decode_crops
    monkeypatch.setattr(batches, "decode_crops", lambda *a: calls.append(len(a[0])) or real(*a))
    folder = _folder(tmp_path / "imgs", n=16)
    overrides = [
        "data.name=image_folder", f"data.root={folder}", "data.image_size=28", "data.in_chans=3",
        "data.mean=[0.5]", "data.std=[0.25]", "data.decode=device", "data.num_workers=1",
        "model.name=mae_debug", "train.device=cpu", "train.batch_size=4", "train.max_steps=4",
        "train.progress_bar=false", "train.knn_every_epochs=-1", "train.image_every_epochs=0",
    ]  # fmt: skip
    cfg = config_lib.load(None, overrides)
    whole = run_pretrain(cfg, tmp_path / "a")
    assert whole["complete"] and whole["final_loss"] is not None
    run_pretrain(cfg, tmp_path / "b", stop_at_step=2)
    run_pretrain(cfg, tmp_path / "b", resume=True)
    a = load_checkpoint(tmp_path / "a" / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert calls and set(calls) == {4}  # every micro-batch went through the device decoder


def test_decoding_on_the_device_is_for_image_folders() -> None:
    with pytest.raises(ConfigError, match="data.decode=device"):
        config_lib.load(None, ["data.decode=device"])  # Fashion-MNIST is held in memory


@pytest.mark.parametrize("device", DEVICES)
def test_a_jpeg_cut_after_its_header_is_black_or_refused(tmp_path: Path, device: str) -> None:
    from semmae.data.device_decode import iterate_encoded
    from semmae.errors import DataError

    folder = _folder(tmp_path, n=4)
    cut = folder / "train" / "a" / "01.jpg"
    cut.write_bytes(cut.read_bytes()[:1200])  # the header reads, the data stops
    source = _source(folder)
    draws = crop_uniforms(len(source), torch.Generator().manual_seed(0), True)
    plan = [(torch.arange(len(source)), draws)]
    ds = build_dataset(config_lib.load(None, ["data.name=image_folder", f"data.root={folder}", "data.image_size=32",
                                              "data.in_chans=3", "data.mean=[0.5]", "data.std=[0.25]"]).data, "train")  # fmt: skip
    [(payloads, metas, indices)] = list(iterate_encoded(ds, plan, scale=SCALE, ratio=RATIO))
    assert [len(p) for p in payloads] == [source.base.joinpath(f).stat().st_size for f in source.files]
    crops, boxes = decode_crops(payloads, metas, 32, 3, torch.device(device))
    bad = source.files.index("a/01.jpg")
    assert int(crops[bad].max()) == 0 and torch.equal(boxes[bad], torch.tensor([0.0, 0.0, 1.0, 1.0]))
    assert all(int(crops[i].max()) > 0 for i in range(len(payloads)) if i != bad)
    with pytest.raises(DataError, match="could not be decoded"):
        decode_crops(payloads, metas, 32, 3, torch.device(device), on_corrupt="error")
