"""Part learner, decoder, blur, labels and the frozen backbone: shapes, partitions, gradients."""

from __future__ import annotations

import pytest
import torch

from semmae.config import PartLearnerArch, PartsConfig
from semmae.errors import CheckpointError, ConfigError
from semmae.models import build_mae
from semmae.models.checkpoint import load_checkpoint, load_state_strict
from semmae.parts.backbone import FrozenBackbone, check_backbone_fits, compute_feature_cache
from semmae.parts.decoder import StyleDecoder, num_upsamplings
from semmae.parts.labels import maps_to_labels
from semmae.parts.learner import PartBlur, PartLearner, gaussian_kernel3

pytestmark = pytest.mark.usefixtures("single_thread")  # tests/conftest.py


def _small_learner(backbone: FrozenBackbone, k: int = 4, **kw) -> PartLearner:
    args = dict(decoder_channels=32, style_dim=32, mlp_hidden=64, center_tokens=False)
    args.update(kw)
    return PartLearner(
        PartLearnerArch(num_parts=k, **args), embed_dim=backbone.embed_dim, grid=backbone.grid,
        img_size=backbone.img_size, in_chans=backbone.in_chans,
    )  # fmt: skip


@pytest.fixture
def backbone() -> FrozenBackbone:
    torch.manual_seed(0)
    return FrozenBackbone(build_mae("mae_debug"))


@pytest.mark.parametrize("straight_through", [True, False])
def test_forward_shapes_and_partitions(backbone: FrozenBackbone, straight_through: bool) -> None:
    torch.manual_seed(1)
    learner = _small_learner(backbone, k=5, straight_through=straight_through)
    f, g = backbone(torch.randn(3, 1, 28, 28))
    assert f.shape == (3, 49, 32) and g.shape == (3, 32)
    out = learner(f, g)
    assert out.maps_raw.shape == out.maps.shape == out.logits.shape == (3, 5, 7, 7)
    assert out.recon.shape == (3, 1, 28, 28)
    for maps in (out.maps_raw, out.maps):
        assert (maps >= 0).all()
        torch.testing.assert_close(maps.sum(dim=1), torch.ones(3, 7, 7))
    torch.testing.assert_close(out.maps_raw, out.logits.softmax(dim=1))
    if straight_through:  # the decoder sees the blurred one-hot argmax partition
        hard = torch.nn.functional.one_hot(out.maps_raw.argmax(1), 5).permute(0, 3, 1, 2).float()
        torch.testing.assert_close(out.maps, learner.blur(hard))
    else:  # the blur really smooths: the maps vary less in space than the raw ones
        assert out.maps.diff(dim=-1).abs().mean() < out.maps_raw.diff(dim=-1).abs().mean()


@pytest.mark.parametrize("padding", ["replicate", "reflect"])
def test_blur_keeps_a_partition(padding: str) -> None:
    torch.manual_seed(2)
    maps = torch.randn(2, 6, 5, 7).softmax(dim=1)
    blurred = PartBlur(1.0, padding)(maps)
    torch.testing.assert_close(blurred.sum(dim=1), torch.ones(2, 5, 7))
    const = torch.full((1, 3, 4, 4), 0.25)
    torch.testing.assert_close(PartBlur(1.0, padding)(const), const)  # a constant map is a fixed point


def test_blur_kernel_and_off_switch() -> None:
    k = gaussian_kernel3(1.0)
    assert k.shape == (3, 3) and abs(float(k.sum()) - 1.0) < 1e-6
    assert k[1, 1] > k[0, 1] > k[0, 0]
    maps = torch.rand(1, 3, 4, 4)
    assert PartBlur(0.0)(maps) is maps


def test_decoder_sizes_from_grids() -> None:
    assert num_upsamplings(7, 28) == 2
    assert num_upsamplings(14, 224) == 4
    assert num_upsamplings(8, 32) == 2
    assert num_upsamplings(7, 32) == 3  # 7 -> 56, then resized to 32
    assert num_upsamplings(28, 28) == 0
    for grid, size, chans in [((7, 7), 28, 1), ((14, 14), 224, 3), ((7, 7), 32, 3)]:
        dec = StyleDecoder(4, grid, size, chans, global_dim=16, style_dim=8, channels=16)
        out = dec(torch.rand(1, 4, *grid).softmax(1), torch.randn(1, 16))
        assert out.shape == (1, chans, size, size)


def test_decoder_widths_halve_to_the_floor() -> None:
    dec = StyleDecoder(4, (14, 14), 224, 3, global_dim=16, channels=128, min_channels=16)
    widths = [b.conv.out_channels for b in dec.blocks]
    assert widths == [128, 64, 32, 16, 16]


def test_layout_comes_only_from_the_maps() -> None:
    """Spatially constant maps give a spatially constant image, whatever the global token."""
    torch.manual_seed(3)
    dec = StyleDecoder(3, (7, 7), 28, 3, global_dim=16, style_dim=8, channels=16)
    with torch.no_grad():
        for p in dec.parameters():  # non-trivial AdaIN modulation
            p.add_(0.1 * torch.randn_like(p))
        maps = torch.tensor([0.2, 0.5, 0.3]).view(1, 3, 1, 1).expand(2, 3, 7, 7)
        out = dec(maps, torch.randn(2, 16))
    spread = out.amax(dim=(-2, -1)) - out.amin(dim=(-2, -1))
    assert float(spread.max()) < 1e-4
    assert not torch.allclose(out[0], out[1])  # appearance follows g


@pytest.mark.parametrize("straight_through", [True, False])
def test_gradients_reach_every_learner_parameter_and_not_the_backbone(
    backbone: FrozenBackbone, straight_through: bool
) -> None:
    torch.manual_seed(4)
    learner = _small_learner(backbone, learn_tau=True, straight_through=straight_through)
    images = torch.randn(4, 1, 28, 28)
    f, g = backbone(images)
    out = learner(f, g)
    ((out.recon - images) ** 2).mean().backward()  # the reconstruction alone reaches every parameter
    for name, p in learner.named_parameters():
        assert p.grad is not None, name
        assert p.grad.abs().sum() > 0, name
    assert "log_tau" in dict(learner.named_parameters())
    for p in backbone.parameters():
        assert not p.requires_grad and p.grad is None


def test_centred_cosines_ignore_what_all_patches_of_an_image_share(backbone: FrozenBackbone) -> None:
    torch.manual_seed(5)
    f, g = backbone(torch.randn(2, 1, 28, 28))
    shift = 10 * torch.randn(2, 1, f.shape[-1])  # one vector per image, added to every patch
    centred = _small_learner(backbone, center_tokens=True)
    torch.testing.assert_close(
        centred.part_cosine(f + shift, g), centred.part_cosine(f, g), atol=1e-5, rtol=0
    )
    raw = _small_learner(backbone, center_tokens=False)
    assert not torch.allclose(raw.part_cosine(f + shift, g), raw.part_cosine(f, g), atol=1e-2)
    out = centred(f, g)
    torch.testing.assert_close(out.logits, centred.part_cosine(f, g) / centred.tau)


def test_fixed_tau_is_a_buffer(backbone: FrozenBackbone) -> None:
    learner = _small_learner(backbone, tau=0.2)
    assert "log_tau" not in dict(learner.named_parameters())
    assert abs(float(learner.tau) - 0.2) < 1e-6


def test_frozen_backbone_stays_in_eval_mode(backbone: FrozenBackbone) -> None:
    backbone.train()
    assert not backbone.training and not backbone.encoder.training
    x = torch.randn(2, 1, 28, 28)
    tokens = backbone.encoder.forward_features(x)
    f, g = FrozenBackbone(backbone.encoder, "mean")(x)
    torch.testing.assert_close(g, tokens[:, 1:].mean(dim=1))
    _, g_cls = backbone(x)
    torch.testing.assert_close(g_cls, tokens[:, 0])
    with pytest.raises(ConfigError):
        FrozenBackbone(backbone.encoder, "max")


def test_backbone_fit_checks(backbone: FrozenBackbone) -> None:
    check_backbone_fits(backbone, 28, 1, 4)
    for args in [(32, 1, 4), (28, 3, 4), (28, 1, 1), (28, 1, 50)]:
        with pytest.raises(ConfigError) as exc:
            check_backbone_fits(backbone, *args)
        assert "\n" not in str(exc.value)


def test_feature_cache_matches_the_backbone(backbone: FrozenBackbone) -> None:
    images = torch.randn(10, 1, 28, 28)
    order = torch.tensor([3, 1, 4, 0, 9, 2, 6, 5, 8, 7])

    def batches():
        for s in range(0, 10, 4):
            idx = order[s : s + 4]
            yield images[idx], idx

    cache = compute_feature_cache(backbone, batches, device=torch.device("cpu"), dtype=torch.float32)
    f, g = cache.get(torch.tensor([7, 0]), torch.device("cpu"))
    f_ref, g_ref = backbone(images[[7, 0]])
    torch.testing.assert_close(f, f_ref)
    torch.testing.assert_close(g, g_ref)
    with pytest.raises(KeyError):
        cache.get(torch.tensor([10]), torch.device("cpu"))
    some = compute_feature_cache(
        backbone, lambda: iter([(images[[4, 1]], torch.tensor([4, 1]))]), device="cpu"
    )
    assert some.get(torch.tensor([1, 4]), "cpu")[0].shape == (2, 49, 32)
    with pytest.raises(KeyError):  # below the largest cached index, but not cached
        some.get(torch.tensor([1, 2]), torch.device("cpu"))


def test_maps_to_labels() -> None:
    torch.manual_seed(5)
    maps = torch.randn(2, 4, 3, 5).softmax(1)
    labels = maps_to_labels(maps)
    assert labels.dtype == torch.uint8 and labels.shape == (2, 3, 5)
    assert torch.equal(labels.long(), maps.argmax(1))
    # Left half part 0, right half part 1: x2 labels keep the boundary in the middle.
    half = torch.zeros(1, 2, 4, 8)
    half[:, 0, :, :4] = 1
    half[:, 1, :, 4:] = 1
    fine = maps_to_labels(half, scale=2)
    assert fine.shape == (1, 8, 16)
    assert (fine[..., :8] == 0).all() and (fine[..., 8:] == 1).all()


# A part-learner ``arch`` exactly as checkpoints have stored it: one flat dict of sizes and fields.
FLAT_ARCH = {
    "embed_dim": 32, "num_parts": 4, "grid": [7, 7], "img_size": 28, "in_chans": 1, "tau": 0.1,
    "learn_tau": False, "tau_min": 0.01, "mlp_hidden": 64, "center_tokens": True, "blur_sigma": 1.0,
    "blur_padding": "replicate", "straight_through": True, "style_dim": 32, "decoder_channels": 32,
    "decoder_min_channels": 16, "decoder_upsample": "nearest",
}  # fmt: skip


def test_the_config_built_arch_is_what_checkpoints_store(backbone: FrozenBackbone) -> None:
    parts = PartsConfig(mlp_hidden=64, style_dim=32, decoder_channels=32, lr=0.5)
    learner = PartLearner(parts.learner_arch(), embed_dim=32, grid=(7, 7), img_size=28, in_chans=1)
    assert learner.arch == FLAT_ARCH  # so runs written before PartLearnerArch still resume
    assert PartLearner(parts, embed_dim=32, grid=(7, 7), img_size=28, in_chans=1).arch == FLAT_ARCH


def test_flat_checkpoints_load_with_weights_only(tmp_path, backbone: FrozenBackbone) -> None:
    torch.manual_seed(0)
    trained = PartLearner.from_arch(FLAT_ARCH)
    path = tmp_path / "last.pt"
    torch.save({"kind": "parts", "arch": dict(FLAT_ARCH), "model": trained.state_dict()}, path)
    ckpt = load_checkpoint(path)  # weights_only=True: a plain dict of plain values
    again = PartLearner.from_arch(ckpt["arch"])
    load_state_strict(again, ckpt["model"])
    f, g = backbone(torch.randn(2, 1, 28, 28))
    torch.testing.assert_close(again.eval()(f, g).maps_raw, trained.eval()(f, g).maps_raw)
    assert again.center_tokens is True and again.arch == FLAT_ARCH


def test_checkpoints_from_before_centring_load_uncentred() -> None:
    old = {k: v for k, v in FLAT_ARCH.items() if k != "center_tokens"}
    learner = PartLearner.from_arch(old)
    assert learner.center_tokens is False  # those learners were trained on raw cosines
    for broken in ({**FLAT_ARCH, "heads": 2}, {k: v for k, v in FLAT_ARCH.items() if k != "grid"}):
        with pytest.raises(CheckpointError) as exc:
            PartLearner.from_arch(broken)
        assert "\n" not in str(exc.value)
