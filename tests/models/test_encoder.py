"""ViTEncoder and load_encoder: the same features from every checkpoint layout, and clear refusals."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from semmae.config import Config
from semmae.errors import CheckpointError, ConfigError
from semmae.models import MaskedAutoencoderViT, build_mae
from semmae.models.checkpoint import save_checkpoint
from semmae.models.encoder import IMAGENET_MEAN, ViTEncoder, check_encoder_fits, infer_arch, load_encoder
from semmae.models.vit_encoder import ENCODER_KEYS


def _rgb_mae() -> MaskedAutoencoderViT:
    """A small MAE whose heads follow the D / 64 rule (D = 128, 2 heads), as official ones do."""
    torch.manual_seed(0)
    return MaskedAutoencoderViT(
        img_size=16,
        patch_size=4,
        in_chans=3,
        embed_dim=128,
        depth=2,
        num_heads=2,
        decoder_embed_dim=32,
        decoder_depth=1,
        decoder_num_heads=1,
    ).eval()


def _images(c: int, s: int, n: int = 3) -> torch.Tensor:
    return torch.randn(n, c, s, s, generator=torch.Generator().manual_seed(1))


def _encoder_of(mae: MaskedAutoencoderViT) -> ViTEncoder:
    """The MAE's encoder weights loaded strictly into a ViTEncoder (so the names are the same)."""
    enc = ViTEncoder.from_arch(mae.arch)
    enc.load_state_dict({k: v for k, v in mae.state_dict().items() if k.startswith(ENCODER_KEYS)})
    return enc


def test_mae_encoder_keeps_names_and_features() -> None:
    mae = build_mae("mae_debug").eval()
    enc = _encoder_of(mae).eval()
    enc_keys = set(enc.state_dict())
    assert enc_keys == {k for k in mae.state_dict() if not k.startswith(("decoder", "mask_token"))}
    x = _images(1, 28)
    assert torch.equal(enc.forward_features(x), mae.forward_features(x))
    assert (enc.grid, enc.num_patches, enc.depth, enc.num_heads) == ((7, 7), 49, 2, 2)


def test_our_checkpoint_round_trip_is_exact(tmp_path) -> None:
    mae = build_mae("mae_debug").eval()
    cfg = Config()
    cfg.data.mean, cfg.data.std = [0.25], [0.5]
    path = save_checkpoint(
        tmp_path / "run" / "checkpoints" / "last.pt",
        {
            "kind": "mae",
            "model": mae.state_dict(),
            "arch": mae.arch,
            "config": cfg.to_dict(),
            "step": 7,
            "optimizer": {},
        },
    )
    enc, meta = load_encoder(str(path))
    x = _images(1, 28)
    assert torch.equal(enc.forward_features(x), mae.forward_features(x))
    assert meta["kind"] == "mae" and meta["mean"] == [0.25] and meta["std"] == [0.5]
    assert meta["data"]["name"] == "fashion_mnist" and meta["source"] == str(path)
    assert not enc.training


def test_official_layout_pth_infers_the_architecture(tmp_path) -> None:
    mae = _rgb_mae()
    path = tmp_path / "mae_pretrain.pth"
    torch.save({"model": mae.state_dict(), "epoch": 799, "args": {"lr": 1.0}}, path)
    enc, meta = load_encoder(str(path))
    assert enc.arch == dict(
        img_size=16, patch_size=4, in_chans=3, embed_dim=128, depth=2, num_heads=2, mlp_ratio=4.0
    )
    x = _images(3, 16)
    assert torch.equal(enc.forward_features(x), mae.forward_features(x))
    assert meta["kind"] == "official_mae" and meta["mean"] == IMAGENET_MEAN and meta["data"] is None


def test_encoder_only_official_checkpoint_loads(tmp_path) -> None:
    mae = _rgb_mae()
    enc_state = {k: v for k, v in mae.state_dict().items() if not k.startswith(("decoder", "mask_token"))}
    torch.save({"model": enc_state}, tmp_path / "enc.pth")
    enc, _ = load_encoder(str(tmp_path / "enc.pth"))
    x = _images(3, 16)
    assert torch.equal(enc.forward_features(x), mae.forward_features(x))


@pytest.mark.parametrize("suffix", [".safetensors", ".pth", ".bin"])
def test_timm_state_dict_file_loads(tmp_path, suffix) -> None:
    torch.manual_seed(0)
    vit = VisionTransformer(
        img_size=16,
        patch_size=4,
        in_chans=3,
        embed_dim=64,
        depth=2,
        num_heads=1,
        num_classes=5,
        mlp_ratio=2.0,
    ).eval()
    path = tmp_path / f"vit{suffix}"
    state = vit.state_dict()
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)
    enc, meta = load_encoder(str(path))
    assert enc.arch["mlp_ratio"] == 2.0 and enc.num_heads == 1 and meta["kind"] == "timm"
    x = _images(3, 16)
    torch.testing.assert_close(enc.forward_features(x), vit.forward_features(x), atol=1e-6, rtol=0)


def test_timm_name_gives_the_head_count(tmp_path) -> None:
    torch.manual_seed(0)
    vit = VisionTransformer(
        img_size=32, patch_size=16, embed_dim=192, depth=1, num_heads=3, num_classes=0
    ).eval()
    save_file(vit.state_dict(), str(tmp_path / "tiny.safetensors"))
    enc, _ = load_encoder(f"timm:vit_tiny_patch16_224@{tmp_path / 'tiny.safetensors'}")
    assert enc.num_heads == 3
    x = _images(3, 32)
    torch.testing.assert_close(enc.forward_features(x), vit.forward_features(x), atol=1e-6, rtol=0)
    with pytest.raises(CheckpointError, match="not a ViT"):
        load_encoder(f"timm:no_such_model@{tmp_path / 'tiny.safetensors'}")


def test_avg_pool_classifier_uses_fc_norm_as_final_norm(tmp_path) -> None:
    vit = VisionTransformer(
        img_size=16, patch_size=4, embed_dim=64, depth=1, num_heads=1, global_pool="avg", num_classes=3
    )
    with torch.no_grad():
        vit.fc_norm.weight.fill_(2.0)
    torch.save(vit.state_dict(), tmp_path / "ft.pth")
    enc, _ = load_encoder(str(tmp_path / "ft.pth"))
    assert torch.equal(enc.norm.weight, vit.fc_norm.weight)


def test_prefixed_state_dict_loads(tmp_path) -> None:
    mae = build_mae("mae_debug").eval()
    state = {f"module.{k}": v for k, v in mae.state_dict().items()}
    torch.save({"kind": "mae", "model": state, "arch": mae.arch}, tmp_path / "ddp.pt")
    enc, _ = load_encoder(str(tmp_path / "ddp.pt"))
    x = _images(1, 28)
    assert torch.equal(enc.forward_features(x), mae.forward_features(x))


def test_non_vit_checkpoints_are_refused(tmp_path) -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4, 2))
    torch.save(net.state_dict(), tmp_path / "cnn.pth")
    with pytest.raises(CheckpointError, match=r"holds no ViT encoder \(found keys 0.weight"):
        load_encoder(str(tmp_path / "cnn.pth"))
    torch.save(
        {"kind": "parts", "model": {"tokens.weight": torch.zeros(2)}, "arch": {}}, tmp_path / "parts.pt"
    )
    with pytest.raises(CheckpointError, match="holds no ViT encoder"):
        load_encoder(str(tmp_path / "parts.pt"))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="is not a weights file"):
        load_encoder(str(tmp_path / "junk.pt"))
    with pytest.raises(CheckpointError, match="not found"):
        load_encoder(str(tmp_path / "missing.pt"))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_with_the_tensor_named(tmp_path, bad) -> None:
    mae = _rgb_mae()
    save_checkpoint(tmp_path / "good.pt", {"kind": "mae", "model": mae.state_dict(), "arch": mae.arch})
    load_encoder(str(tmp_path / "good.pt"))  # the same file, finite, loads
    with torch.no_grad():
        mae.blocks[1].mlp.fc2.weight[3, 5] = bad
    save_checkpoint(tmp_path / "diverged.pt", {"kind": "mae", "model": mae.state_dict(), "arch": mae.arch})
    with pytest.raises(CheckpointError, match=r"NaN or infinite weights \(blocks\.1\.mlp\.fc2\.weight\)"):
        load_encoder(str(tmp_path / "diverged.pt"))


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.bool])
def test_integer_or_bool_weights_are_refused(tmp_path, dtype) -> None:
    state = {k: v.to(dtype) for k, v in _encoder_of(_rgb_mae()).state_dict().items()}
    save_file(state, str(tmp_path / "w.safetensors"))
    with pytest.raises(CheckpointError, match=f"holds {dtype} weights"):
        load_encoder(str(tmp_path / "w.safetensors"))


def test_an_arch_record_that_is_not_a_mapping_is_refused(tmp_path) -> None:
    mae = _rgb_mae()
    torch.save({"kind": "mae", "model": mae.state_dict(), "arch": "vit_base"}, tmp_path / "a.pt")
    with pytest.raises(CheckpointError, match="records 'arch' as a str, not a mapping"):
        load_encoder(str(tmp_path / "a.pt"))


def test_unsupported_vit_variants_are_refused(tmp_path) -> None:
    vit = VisionTransformer(img_size=16, patch_size=4, embed_dim=64, depth=1, num_heads=1, init_values=1e-5)
    torch.save(vit.state_dict(), tmp_path / "ls.pth")
    with pytest.raises(CheckpointError, match="does not support"):
        load_encoder(str(tmp_path / "ls.pth"))
    vit = VisionTransformer(
        img_size=16, patch_size=4, embed_dim=64, depth=1, num_heads=1, no_embed_class=True
    )
    torch.save(vit.state_dict(), tmp_path / "noembed.pth")
    with pytest.raises(CheckpointError, match="class token"):
        load_encoder(str(tmp_path / "noembed.pth"))


def test_a_part_checkpoint_follows_only_the_backbone_it_was_trained_on(tmp_path, monkeypatch) -> None:
    from semmae.models.checkpoint import backbone_hash

    monkeypatch.chdir(tmp_path)  # the backbone is named as the user gave it: relative to this folder
    mae = _rgb_mae()
    save_checkpoint(tmp_path / "mae.pt", {"kind": "mae", "model": mae.state_dict(), "arch": mae.arch})
    record = {"spec": "mae.pt", "hash": backbone_hash("mae.pt"), "global_token": "cls"}
    parts = {"kind": "parts", "model": {"head.w": torch.ones(2)}, "config": {"parts": {"backbone": "mae.pt"}},
             "backbone": record}  # fmt: skip
    torch.save(parts, tmp_path / "parts.pt")
    enc, _ = load_encoder(str(tmp_path / "parts.pt"))
    x = _images(3, 16)
    assert torch.equal(enc.forward_features(x), _encoder_of(mae).forward_features(x))
    other = build_mae("mae_debug")
    save_checkpoint(tmp_path / "mae.pt", {"kind": "mae", "model": other.state_dict(), "arch": other.arch})
    with pytest.raises(CheckpointError, match="is not the file the part learner was trained on"):
        load_encoder(str(tmp_path / "parts.pt"))
    monkeypatch.chdir(tmp_path.parent)
    with pytest.raises(CheckpointError, match="relative to the folder it was trained from"):
        load_encoder(str(tmp_path / "parts.pt"))


def test_parts_checkpoint_with_a_prefixed_backbone_loads(tmp_path) -> None:
    mae = build_mae("mae_debug").eval()
    enc_state = {f"backbone.{k}": v for k, v in _encoder_of(mae).state_dict().items()}
    state = {**enc_state, "part_mlp.weight": torch.zeros(3, 3)}
    torch.save({"kind": "parts", "model": state, "arch": {"num_parts": 4}}, tmp_path / "parts.pt")
    enc, meta = load_encoder(str(tmp_path / "parts.pt"))
    assert meta["kind"] == "parts"
    # heads are not in a parts arch: D=32 < 64 gives one head, so compare on weights, not features
    assert all(torch.equal(v, mae.state_dict()[k]) for k, v in enc.state_dict().items())


def test_random_encoder_is_fixed_and_named_presets_only() -> None:
    a, meta = load_encoder("random:mae_debug")
    b, _ = load_encoder("random:mae_debug")
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    assert meta == {"source": "random:mae_debug", "kind": "random", "mean": [0.5], "std": [0.5], "data": None}
    assert torch.equal(a.forward_features(_images(1, 28)), b.forward_features(_images(1, 28)))
    with pytest.raises(ConfigError, match="mae_debug"):
        load_encoder("random:no_such_preset")


def test_check_encoder_fits() -> None:
    enc, _ = load_encoder("random:mae_debug")  # 28 px, patch 4, 1 channel
    check_encoder_fits(enc, 28, 1)
    with pytest.raises(ConfigError, match="set data.in_chans=1"):
        check_encoder_fits(enc, 28, 3)
    with pytest.raises(ConfigError, match="patch size 4 does not divide .* 30"):
        check_encoder_fits(enc, 30, 1)
    with pytest.raises(ConfigError, match="set data.image_size=28"):
        check_encoder_fits(enc, 32, 1)


def test_infer_arch_special_cases() -> None:
    state = {
        "patch_embed.proj.weight": torch.zeros(1280, 3, 14, 14),
        "pos_embed": torch.zeros(1, 257, 1280),
        "cls_token": torch.zeros(1, 1, 1280),
        "blocks.31.mlp.fc1.weight": torch.zeros(5120, 1280),
        "blocks.0.mlp.fc1.weight": torch.zeros(5120, 1280),
    }
    arch = infer_arch(state, "x")
    assert arch == dict(
        img_size=224, patch_size=14, in_chans=3, embed_dim=1280, depth=32, num_heads=16, mlp_ratio=4.0
    )


def _bare_vit_state(dim: int) -> dict[str, torch.Tensor]:
    return {
        "patch_embed.proj.weight": torch.zeros(dim, 1, 4, 4),
        "pos_embed": torch.zeros(1, 50, dim),
        "cls_token": torch.zeros(1, 1, dim),
        "blocks.0.mlp.fc1.weight": torch.zeros(4 * dim, dim),
    }


@pytest.mark.parametrize(
    ("dim", "heads", "warned"), [(768, 12, False), (192, 3, False), (128, 2, True), (32, 1, True)]
)
def test_a_guessed_head_count_is_said_where_it_may_be_wrong(
    caplog, dim: int, heads: int, warned: bool
) -> None:
    # Standard ViT widths have 64-wide heads; for any other width the guess may be wrong (a
    # small semmae preset with 4 heads of 32 would be read as 2 heads), so the user is told.
    with caplog.at_level("WARNING", logger="semmae.models.encoder"):
        assert infer_arch(_bare_vit_state(dim), "'w.pth'")["num_heads"] == heads
    said = [r.getMessage() for r in caplog.records if "records no head count" in r.getMessage()]
    assert bool(said) == warned and all(f"assuming {heads} (width {dim} / 64)" in m for m in said)
    caplog.clear()
    with caplog.at_level("WARNING", logger="semmae.models.encoder"):
        infer_arch(_bare_vit_state(dim), "'w.pth'", {"num_heads": 4 if dim != 768 else 12})
    assert not caplog.records  # a recorded head count is no guess
