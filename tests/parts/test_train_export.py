"""Stage-1 run end to end on tiny toy-parts: run dir, resume, export round trip, CLI errors."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch

from semmae import config as config_lib
from semmae.cli.main import main
from semmae.errors import RunDirError

_HAS_DATA = all(
    importlib.util.find_spec(m) is not None
    for m in ("semmae.data", "semmae.data.transforms", "semmae.data.partmaps", "semmae.models.encoder")
)
needs_data = pytest.mark.skipif(
    not _HAS_DATA, reason="the data layer (semmae.data, transforms, partmaps) is not there yet"
)

# 28x28 grey toy-parts fit the random mae_debug backbone (patch 4 -> 7x7 grid, L = 49).
_OVERRIDES = [
    "data.name=toy_parts", "data.image_size=28", "data.in_chans=1", "data.toy_size=48",
    "data.mean=[0.27]", "data.std=[0.18]", "parts.backbone=random:mae_debug", "parts.num_parts=4",
    "parts.batch_size=16", "parts.mlp_hidden=32", "parts.decoder_channels=16", "parts.style_dim=16",
    "parts.epochs=2", "parts.eval_limit=24", "parts.num_vis=3", "train.log_every=2",
    "train.ckpt_every_steps=2", "train.progress_bar=false", "train.device=cpu",
]  # fmt: skip


pytestmark = pytest.mark.usefixtures("single_thread")  # tests/conftest.py


def _cfg(*extra: str) -> config_lib.Config:
    return config_lib.load(None, _OVERRIDES + list(extra))


@needs_data
def test_train_writes_a_complete_run(tmp_path) -> None:
    from semmae.engine.logging import read_metrics
    from semmae.models.checkpoint import load_checkpoint
    from semmae.train.parts import run_parts_train

    out = run_parts_train(_cfg(), tmp_path / "run")
    run = tmp_path / "run"
    assert out["steps"] == 6 and out["epochs"] == 2  # 48 images / 16 per step, 2 epochs
    assert (run / "config.yaml").is_file() and (run / "tb").is_dir()
    rows = [r for r in read_metrics(run / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in rows] == [2, 4, 6]
    for key in ("rec", "div", "overlap", "area", "area_entropy", "tau", "empty_parts", "lr", "img_per_s"):
        assert key in rows[-1], key
    assert sum(rows[-1]["area_hist"]) == pytest.approx(1.0, abs=1e-3)
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    assert ckpt["kind"] == "parts" and ckpt["step"] == 6 and ckpt["epoch"] == 2
    assert ckpt["backbone"]["spec"] == "random:mae_debug" and "state" in ckpt["backbone"]
    assert {"optimizer", "rng", "config", "arch", "norm"} <= set(ckpt)
    assert len(list((run / "images").glob("*.png"))) == 2  # one grid per epoch
    partseg = json.loads((run / "partseg.json").read_text())
    assert partseg["num_images"] == 24 and partseg["num_gt_parts"] == 4
    for who in ("learner", "kmeans"):
        m = partseg[who]
        assert 0.0 <= m["nmi"] <= 1.0 and 0.0 <= m["miou"] <= 1.0 and len(m["area_hist"]) == 4
    assert out["partseg"] == partseg
    with pytest.raises(RunDirError):
        run_parts_train(_cfg(), run)


@needs_data
def test_resume_repeats_an_uninterrupted_run(tmp_path, monkeypatch) -> None:
    from semmae.models.checkpoint import load_checkpoint
    from semmae.train import parts as train_mod

    cfg = _cfg("parts.eval_kmeans=false", "parts.cache_features=false")  # augmented path
    train_mod.run_parts_train(cfg, tmp_path / "full")
    real_step = train_mod.PartsTask.step
    calls = {"n": 0}

    def crashing_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # mid-epoch (3 steps per epoch), after the step-2 checkpoint
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(train_mod.PartsTask, "step", crashing_step)
    with pytest.raises(KeyboardInterrupt):
        train_mod.run_parts_train(cfg, tmp_path / "cut")
    monkeypatch.setattr(train_mod.PartsTask, "step", real_step)
    assert load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")["step"] == 2
    train_mod.run_parts_train(cfg, tmp_path / "cut", resume=True)
    full = load_checkpoint(tmp_path / "full" / "checkpoints" / "last.pt")["model"]
    cut = load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")["model"]
    for name in full:
        torch.testing.assert_close(cut[name], full[name], msg=name)


@needs_data
def test_export_round_trip(tmp_path) -> None:
    from semmae.data import build_dataset
    from semmae.data.partmaps import load_part_maps
    from semmae.data.transforms import center_batch, normalize
    from semmae.parts.export import export_part_maps, file_hash, load_part_learner
    from semmae.train.parts import run_parts_train

    cfg = _cfg("parts.epochs=1", "parts.eval_kmeans=false")
    run_parts_train(cfg, tmp_path / "run")
    path = tmp_path / "maps_test.npy"
    manifest = export_part_maps(tmp_path / "run", "test", path, batch_size=20, device="cpu", progress=False)
    ds = build_dataset(cfg.data, "test")
    maps = load_part_maps(path, dataset=ds)
    assert maps.labels.shape == (48, 7, 7) and manifest.num_parts == 4 and manifest.source == "learner"
    assert manifest.learner_hash == file_hash(tmp_path / "run" / "checkpoints" / "last.pt")
    learner, backbone, ckpt, _ = load_part_learner(tmp_path / "run", torch.device("cpu"))
    images01, _ = center_batch(ds.load(torch.arange(48)), out_size=28)
    with torch.no_grad():
        ref = learner(
            *backbone(normalize(images01, ckpt["norm"]["mean"], ckpt["norm"]["std"]))
        ).maps_raw.argmax(1)
    assert np.array_equal(np.asarray(maps.labels), ref.numpy())
    with pytest.raises(RunDirError):
        export_part_maps(tmp_path / "run", "test", path, device="cpu", progress=False)
    # The CLI draws the maps over their images.
    cfg_path = tmp_path / "cfg.yaml"
    config_lib.dump(cfg, cfg_path)
    png = tmp_path / "show.png"
    assert (
        main(["parts", "show", "--maps", str(path), "--config", str(cfg_path), "--n", "4", "--out", str(png)])
        == 0
    )
    assert png.stat().st_size > 0


@needs_data
def test_from_masks_cli(tmp_path) -> None:
    from semmae.data import build_dataset
    from semmae.data.oracle import part_maps_from_masks
    from semmae.data.partmaps import load_part_maps

    cfg = _cfg()
    cfg_path = tmp_path / "cfg.yaml"
    config_lib.dump(cfg, cfg_path)
    out = tmp_path / "oracle.npy"
    args = [
        "parts",
        "from-masks",
        "--config",
        str(cfg_path),
        "--split",
        "train",
        "--grid",
        "7",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    ds = build_dataset(cfg.data, "train")
    maps = load_part_maps(out, dataset=ds)
    assert maps.manifest.source == "oracle" and maps.manifest.num_parts == 4
    assert np.array_equal(np.asarray(maps.labels), part_maps_from_masks(ds, (7, 7)))
    assert main(args) == 2  # refuses to overwrite
    assert main(args + ["--overwrite"]) == 0


@needs_data
def test_from_masks_keeps_a_users_json_beside_the_output(tmp_path, capsys) -> None:
    cfg_path = tmp_path / "cfg.yaml"
    config_lib.dump(_cfg(), cfg_path)
    notes = tmp_path / "maps.json"
    notes.write_text('{"my": "notes"}')
    args = ["parts", "from-masks", "--config", str(cfg_path), "--split", "train", "--grid", "7"]
    assert main([*args, "--out", str(tmp_path / "maps.npy")]) == 2
    assert notes.read_text() == '{"my": "notes"}' and not (tmp_path / "maps.npy").exists()
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "maps.json" in err and "semmae did not write it" in err
    assert "--overwrite" not in err  # it would not help: the notes are not semmae's to replace
    assert main([*args, "--out", str(tmp_path / "other")]) == 0  # ".npy" is appended: both are named
    assert f"wrote {tmp_path / 'other.npy'} and {tmp_path / 'other.json'}" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("parts.num_parts=1", "num_parts"),  # K < 2
        ("parts.num_parts=50", "49 patches"),  # K > L
        ("data.image_size=32", "set data.image_size=28"),  # backbone / data mismatch
        ("data.in_chans=3", "set data.in_chans=1"),
        ("parts.blur_padding=zeros", "blur_padding"),
    ],
)
def test_cli_refuses_bad_settings_with_one_line(tmp_path, capsys, override: str, needle: str) -> None:
    out = tmp_path / "run"
    code = main(
        ["parts", "train", "--out", str(out), *_OVERRIDES, override, "data.mean=[0.5]", "data.std=[0.5]"]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("semmae: error:") and "\n" not in err and needle in err, err
    assert not out.exists()  # nothing written before the settings are checked
