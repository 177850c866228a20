"""MAE model: honours the caller's mask, loss only on hidden patches, gradients, official names."""

from __future__ import annotations

import pytest
import torch

from semmae.masking import build
from semmae.models import MaskedAutoencoderViT, build_mae, preset
from semmae.registry import MODELS


def _mask(b: int, length: int, seed: int = 0):
    return build("random", ratio=0.75)(b, length, generator=torch.Generator().manual_seed(seed))


def test_forward_honours_the_supplied_mask() -> None:
    model = build_mae("mae_debug")
    x = torch.randn(3, 1, 28, 28)
    m = _mask(3, model.num_patches)
    out = model(x, m)
    assert torch.equal(out.mask, m.mask)
    out2 = model(x, m.ids_keep, m.ids_restore)
    assert torch.equal(out.pred, out2.pred)
    assert out.pred.shape == (3, 49, 16)


def test_loss_counts_hidden_patches_only() -> None:
    torch.manual_seed(0)
    model = build_mae("mae_debug", norm_pix_loss=False).eval()
    x = torch.randn(2, 1, 28, 28)
    m = _mask(2, model.num_patches)
    out = model(x, m)
    target = model.target(x)
    per_patch = (out.pred - target).pow(2).mean(-1)
    assert torch.allclose(out.loss, per_patch[m.mask].mean(), atol=1e-6)
    # changing a visible patch's target pixels leaves the loss formula's hidden part unchanged
    assert not torch.allclose(out.loss, per_patch.mean())


def test_norm_pix_target_is_standardised_per_patch() -> None:
    model = build_mae("mae_debug", norm_pix_loss=True)
    t = model.target(torch.rand(2, 1, 28, 28) * 5 + 3)
    assert torch.allclose(t.mean(-1), torch.zeros(2, 49), atol=1e-4)
    assert torch.allclose(t.var(-1), torch.ones(2, 49), atol=1e-2)


def test_every_trainable_parameter_gets_a_gradient() -> None:
    model = build_mae("mae_debug")
    out = model(torch.randn(2, 1, 28, 28), _mask(2, 49))
    out.loss.backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert not model.pos_embed.requires_grad and not model.decoder_pos_embed.requires_grad


def test_hidden_pixels_do_not_leak_into_the_encoder() -> None:
    model = build_mae("mae_debug").eval()
    x = torch.randn(1, 1, 28, 28)
    m = _mask(1, 49)
    latent = model.forward_features(x, m.ids_keep)
    x2 = x.clone()
    hidden = int(m.ids_mask[0, 0])
    r, c = divmod(hidden, 7)
    x2[..., r * 4 : (r + 1) * 4, c * 4 : (c + 1) * 4] += 10.0
    assert torch.equal(latent, model.forward_features(x2, m.ids_keep))


def test_official_mae_state_dict_names() -> None:
    names = set(build_mae("mae_debug").state_dict())
    for key in (
        "cls_token",
        "pos_embed",
        "mask_token",
        "decoder_pos_embed",
        "patch_embed.proj.weight",
        "blocks.0.attn.qkv.weight",
        "blocks.0.mlp.fc1.weight",
        "norm.weight",
        "decoder_embed.weight",
        "decoder_blocks.0.norm1.weight",
        "decoder_norm.weight",
        "decoder_pred.weight",
    ):
        assert key in names


def test_vit_base_matches_the_official_parameter_count() -> None:
    # The official mae_vit_base_patch16 (dec 512, 8 blocks) has 111,907,840 parameters incl. fixed pos embeds.
    with torch.device("meta"):
        model = build_mae("mae_vit_base_patch16")
    assert sum(p.numel() for p in model.parameters()) == 111_907_840


def test_presets_and_shapes() -> None:
    for name in MODELS.names():
        assert preset(name)["img_size"] % preset(name)["patch_size"] == 0
    model = MaskedAutoencoderViT(
        img_size=32,
        patch_size=8,
        in_chans=3,
        embed_dim=32,
        depth=1,
        num_heads=2,
        decoder_embed_dim=16,
        decoder_depth=1,
        decoder_num_heads=2,
    )
    out = model(torch.randn(2, 3, 32, 32), _mask(2, 16))
    assert out.pred.shape == (2, 16, 8 * 8 * 3)
    with pytest.raises(ValueError, match="expected images"):
        model(torch.randn(2, 1, 32, 32), _mask(2, 16))
    with pytest.raises(ValueError):
        MaskedAutoencoderViT(img_size=30, patch_size=8)


def test_vit_base_has_the_official_checkpoint_shapes() -> None:
    # Shapes of mae_pretrain_vit_base.pth's "model" dict (official MAE release, decoder 512 x 8).
    official = {
        "cls_token": (1, 1, 768), "pos_embed": (1, 197, 768), "patch_embed.proj.weight": (768, 3, 16, 16),
        "blocks.11.attn.qkv.weight": (2304, 768), "blocks.11.mlp.fc1.weight": (3072, 768), "norm.weight": (768,),
        "decoder_embed.weight": (512, 768), "mask_token": (1, 1, 512), "decoder_pos_embed": (1, 197, 512),
        "decoder_blocks.7.attn.qkv.weight": (1536, 512), "decoder_norm.weight": (512,),
        "decoder_pred.weight": (768, 512), "decoder_pred.bias": (768,),
    }  # fmt: skip
    with torch.device("meta"):
        sd = build_mae("mae_vit_base_patch16").state_dict()
    for key, shape in official.items():
        assert tuple(sd[key].shape) == shape, key
    assert not any(k.startswith(("blocks.12", "decoder_blocks.8")) for k in sd)
    assert len(sd) == 4 + 12 * 12 + 2 + 4 + 8 * 12 + 2 + 2  # tokens/embeds, blocks, norms, decoder
