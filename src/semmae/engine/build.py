"""Build the pieces of a pretraining run from a :class:`Config` (the only place that reads it)."""

from __future__ import annotations

from typing import Any

from semmae import runtime
from semmae.config import Config
from semmae.errors import ConfigError
from semmae.masking import MaskingStrategy
from semmae.masking import build as build_masking_strategy
from semmae.models import MaskedAutoencoderViT, build_mae


def model_kwargs(cfg: Config) -> dict[str, Any]:
    """MAE constructor overrides from ``cfg.model`` plus the data's image size and channels."""
    m = cfg.model
    fields = (
        "patch_size", "embed_dim", "depth", "num_heads", "decoder_embed_dim",
        "decoder_depth", "decoder_num_heads", "mlp_ratio",
    )  # fmt: skip
    kwargs: dict[str, Any] = {f: getattr(m, f) for f in fields if getattr(m, f) is not None}
    kwargs.update(img_size=cfg.data.image_size, in_chans=cfg.data.in_chans, norm_pix_loss=m.norm_pix_loss)
    return kwargs


def build_model(cfg: Config) -> MaskedAutoencoderViT:
    """The MAE of ``cfg.model`` sized for ``cfg.data``, compiled when ``cfg.train.compile``.

    Raises:
        ConfigError: unknown preset, or a patch size that does not divide the image size.
    """
    kwargs = model_kwargs(cfg)
    try:
        model = build_mae(cfg.model.name, **kwargs)
    except ValueError as exc:
        raise ConfigError(
            f"model {cfg.model.name!r} does not fit data.image_size={cfg.data.image_size}: {exc}"
        ) from None
    return runtime.maybe_compile(model, cfg.train.compile)  # compiled lazily, on the first step


def build_masking(cfg: Config, grid: tuple[int, int]) -> MaskingStrategy:
    """The masking strategy of ``cfg.masking`` for a patch grid."""
    mc = cfg.masking
    if mc.name == "random":
        return build_masking_strategy("random", ratio=mc.ratio)
    if mc.name == "block":
        return build_masking_strategy("block", ratio=mc.ratio, min_block=mc.min_block, grid=grid)
    # The range check of the labels is a host sync per step on an accelerator; there the labels
    # come from part-map files whose values were checked when they were written.
    check = runtime.resolve_device(cfg.train.device).type == "cpu"
    return build_masking_strategy(
        "semantic", ratio=mc.ratio, schedule=mc.schedule, gamma=mc.gamma, check_labels=check
    )
