"""Stage 1 on an image folder labels the whole of each full-resolution image (manifest view=whole)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from semmae import config as config_lib
from semmae.data import build_dataset
from semmae.data.folder import whole_image_view
from semmae.data.partmaps import load_part_maps
from semmae.data.transforms import center_batch, normalize
from semmae.parts.export import export_part_maps, load_part_learner
from semmae.train.parts import run_parts_train

pytestmark = pytest.mark.usefixtures("single_thread")


def test_export_labels_the_whole_image_view(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for split, count in (("train", 16), ("val", 4)):
        for i in range(count):
            w, h = (56, 28) if i % 2 else (28, 56)  # aspect 2: a centre crop would lose half of it
            arr = rng.integers(0, 255, (h, w), dtype=np.uint8)
            path = tmp_path / "f" / split / "a" / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(path)
    cfg = config_lib.load(None, [
        "data.name=image_folder", f"data.root={tmp_path / 'f'}", "data.image_size=28", "data.in_chans=1",
        "parts.backbone=random:mae_debug", "parts.num_parts=3", "parts.batch_size=8", "parts.mlp_hidden=16",
        "parts.decoder_channels=8", "parts.decoder_min_channels=8", "parts.style_dim=8", "parts.epochs=1",
        "parts.eval_limit=4", "parts.num_vis=2", "parts.eval_kmeans=false", "train.device=cpu",
        "train.progress_bar=false",
    ])  # fmt: skip
    run_parts_train(cfg, tmp_path / "run")
    maps_path = tmp_path / "maps.npy"
    export_part_maps(tmp_path / "run", "train", maps_path, batch_size=8, device="cpu", progress=False)
    assert json.loads(maps_path.with_suffix(".json").read_text())["view"] == "whole"
    ds = build_dataset(cfg.data, "train")
    maps = load_part_maps(maps_path, dataset=ds)  # pairs with the streamed set it labels
    learner, backbone, ckpt, _ = load_part_learner(tmp_path / "run", torch.device("cpu"))
    whole = whole_image_view(ds).load(torch.arange(16))
    assert not torch.equal(whole, ds.load(torch.arange(16)))  # the whole view is not the eval crop
    with torch.no_grad():
        x = normalize(center_batch(whole, out_size=28)[0], ckpt["norm"]["mean"], ckpt["norm"]["std"])
        expected = learner(*backbone(x)).maps_raw.argmax(1)
    assert np.array_equal(np.asarray(maps.labels), expected.numpy())
