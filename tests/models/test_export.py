"""Exports compute our features: timm from the safetensors file, ONNX in onnxruntime; the classifier."""

from __future__ import annotations

import json
import os
import stat
import tempfile
from pathlib import Path

import pytest
import safetensors.torch
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from semmae.atomic import FILE_MODE
from semmae.errors import ConfigError, RunDirError
from semmae.models.encoder import load_encoder
from semmae.models.export import (
    encoder_to_timm_state_dict,
    export_onnx,
    export_timm,
    run_export,
    timm_vit_kwargs,
)
from semmae.models.vit import build_classifier


@pytest.fixture(scope="module")
def encoder():
    enc, _ = load_encoder("random:mae_debug")
    with torch.no_grad():  # non-trivial norms and tokens, so a dropped or misplaced one shows
        for name, p in enc.named_parameters():
            if "norm" in name or name in ("cls_token", "pos_embed"):
                p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))))
    return enc


def _images(n: int = 3) -> torch.Tensor:
    return torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(2))


def test_timm_export_matches_our_features(encoder, tmp_path) -> None:
    path = export_timm(encoder, tmp_path / "enc.safetensors", metadata={"mean": [0.3], "std": [0.2]})
    # the README's three lines
    import timm  # noqa: F401

    kwargs = json.loads(safe_open(str(path), "pt").metadata()["timm_kwargs"])
    model = timm.models.VisionTransformer(**kwargs)
    model.load_state_dict(load_file(str(path)))  # noqa: E702
    model.eval()
    x = _images()
    diff = (model.forward_features(x) - encoder.forward_features(x)).abs().max().item()
    assert diff <= 1e-5
    assert (
        kwargs["no_embed_class"] is False and kwargs["num_heads"] == 2 and kwargs == timm_vit_kwargs(encoder)
    )
    assert model.norm.eps == 1e-6
    again, meta = load_encoder(str(path))
    assert meta["mean"] == [0.3] and meta["std"] == [0.2] and meta["kind"] == "timm"
    assert torch.equal(again.forward_features(x), encoder.forward_features(x))


def test_an_export_removes_the_temp_files_of_a_killed_export_of_the_same_file(encoder, tmp_path) -> None:
    for name, export in (("enc.safetensors", export_timm), ("enc.onnx", export_onnx)):
        target = tmp_path / name
        fd, stale_name = tempfile.mkstemp(prefix=f".{name}.", suffix=target.suffix, dir=tmp_path)
        os.close(fd)  # what a SIGKILLed atomic write leaves
        stale = Path(stale_name)
        scratch = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".d", dir=tmp_path))
        (scratch / ".tmpAbC123").write_bytes(b"half a file")  # a killed save_file's, in its scratch folder
        mine = tmp_path / f".{name}.mine{target.suffix}"  # not a name atomic_path makes: kept
        mine.write_bytes(b"user")
        mine_dir = tmp_path / f".{name}.mine.d"  # nor scratch_dir_for: kept
        mine_dir.mkdir()
        export(encoder, target)
        assert not stale.exists() and not scratch.exists() and target.is_file()
        assert mine.read_bytes() == b"user" and mine_dir.is_dir()
        left = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(f".{name}"))
        assert left == sorted([mine.name, mine_dir.name])


def test_a_timm_export_keeps_safetensors_temp_file_in_a_scratch_folder(
    encoder, tmp_path, monkeypatch
) -> None:
    real, targets = safetensors.torch.save_file, []

    def save_file(tensors, filename, metadata=None):  # noqa: ANN001, ANN202
        targets.append(Path(filename))  # it writes a ".tmpXXXXXX" of its own beside this file
        real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", save_file)
    path = export_timm(encoder, tmp_path / "enc.safetensors")
    (folder,) = {t.parent for t in targets}
    assert folder.parent == tmp_path and folder.name.startswith(".enc.safetensors.") and folder.suffix == ".d"
    assert [p.name for p in tmp_path.iterdir()] == ["enc.safetensors"]  # the folder is gone
    assert stat.S_IMODE(path.stat().st_mode) == FILE_MODE  # as every file we write, not private
    written, expected = load_file(path), encoder_to_timm_state_dict(encoder)
    assert written.keys() == expected.keys() and all(torch.equal(written[k], expected[k]) for k in expected)


def test_onnx_export_matches_in_onnxruntime(encoder, tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime")
    path = export_onnx(encoder, tmp_path / "enc.onnx")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for n in (1, 5):  # the export traced batch 2: the batch axis must be dynamic
        x = _images(n)
        (out,) = sess.run(["tokens"], {"images": x.numpy()})
        assert out.shape == (n, 50, 32)
        assert (torch.from_numpy(out) - encoder.forward_features(x)).abs().max().item() <= 1e-4


def test_unknown_format_is_a_config_error(tmp_path) -> None:
    with pytest.raises(ConfigError, match="timm, onnx"):
        run_export("random:mae_debug", "torchscript", tmp_path / "x")


def test_run_export_refuses_to_overwrite(tmp_path) -> None:
    out = tmp_path / "enc.safetensors"
    res = run_export("random:mae_debug", "timm", out)
    assert res["max_abs_diff"] <= 1e-5 and out.stat().st_size == res["bytes"]
    with pytest.raises(RunDirError, match="--overwrite"):
        run_export("random:mae_debug", "timm", out)
    assert run_export("random:mae_debug", "timm", out, overwrite=True, verify=False)["max_abs_diff"] is None


@pytest.mark.parametrize("pool", ["token", "avg"])
def test_classifier_starts_from_the_encoder(encoder, pool) -> None:
    clf = build_classifier(encoder, 10, global_pool=pool, drop_path_rate=0.0).eval()
    x = _images()
    enc_state = encoder.state_dict()
    for k, v in clf.state_dict().items():
        if k.startswith(("blocks.", "patch_embed.", "cls_token", "pos_embed")):
            assert torch.equal(v, enc_state[k]), k
    if pool == "token":
        assert torch.equal(clf.forward_features(x), encoder.forward_features(x))
    else:  # MAE's global pool: no token norm, a fresh fc_norm on the pooled tokens
        assert isinstance(clf.norm, torch.nn.Identity) and torch.equal(clf.fc_norm.weight, torch.ones(32))
    assert clf.head.weight.std().item() < 1e-4 and torch.equal(clf.head.bias, torch.zeros(10))
    logits = clf(x)
    assert logits.shape == (3, 10) and logits.abs().max().item() < 0.01
    assert clf.pos_embed.requires_grad


def test_classifier_rejects_bad_arguments(encoder) -> None:
    with pytest.raises(ConfigError, match="avg, token"):
        build_classifier(encoder, 10, global_pool="map")
    with pytest.raises(ConfigError, match="at least one class"):
        build_classifier(encoder, 0)
