"""The fine-tuning classifier: a timm ``VisionTransformer`` started from a :class:`ViTEncoder`, and
its layer-wise lr decay groups (BEiT / MAE fine-tuning).

Layer decay: a parameter's depth id is 0 for the CLS token, positions and patch embedding, i + 1
for block i and depth + 1 for the rest (fc_norm, head); its lr is scaled by
``layer_decay ** (depth + 1 - id)``. No weight decay on biases, norms (every 1-D parameter), the
CLS token or the positions.
"""

from __future__ import annotations

import fnmatch
from typing import Any, get_args

from timm.layers import trunc_normal_
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from semmae.errors import ConfigError
from semmae.models.encoder import ViTEncoder
from semmae.models.export import encoder_to_timm_state_dict, timm_vit_kwargs
from semmae.names import GlobalPool

POOLS = get_args(GlobalPool)

# The one no-weight-decay rule beside "every 1-D parameter" (fnmatch patterns on parameter names):
# tokens and position embeddings, as in MAE; shared by pretraining and fine-tuning groups.
NO_WEIGHT_DECAY = ("*cls_token", "*mask_token", "*pos_embed", "*dist_token")


def build_classifier(
    encoder: ViTEncoder, num_classes: int, *, global_pool: str = "avg", drop_path_rate: float = 0.1
) -> VisionTransformer:
    """A ViT classifier with the encoder's weights, as MAE fine-tunes it.

    With ``global_pool="avg"`` timm drops the final token norm and normalises the pooled patch
    tokens with a fresh ``fc_norm`` instead (MAE's global-pool recipe: the pretrained ``norm`` is
    not used); with ``"token"`` the CLS token after ``norm`` feeds the head. The head starts near
    zero (trunc-normal, std 2e-5, zero bias), so the first logits are ~uniform. Position
    embeddings become trainable, as in MAE's fine-tuning.

    Args:
        encoder: the pretrained encoder (weights copied, not shared).
        num_classes: outputs of the head.
        global_pool: ``avg`` (mean of the patch tokens) or ``token`` (CLS).
        drop_path_rate: stochastic depth, rising linearly to this over the blocks.

    Returns:
        The classifier on the encoder's device, in train mode; ``model(x)`` gives (B, num_classes).

    Raises:
        ConfigError: an unknown ``global_pool`` or fewer than one class.
    """
    if global_pool not in POOLS:
        raise ConfigError(f"global pool {global_pool!r} must be one of {', '.join(POOLS)}")
    if num_classes < 1:
        raise ConfigError(f"a classifier needs at least one class, got {num_classes}")
    kwargs = {**timm_vit_kwargs(encoder), "num_classes": num_classes, "global_pool": global_pool}
    model = VisionTransformer(**kwargs, drop_path_rate=drop_path_rate)
    state = encoder_to_timm_state_dict(encoder)
    if global_pool == "avg":
        state = {k: v for k, v in state.items() if not k.startswith("norm.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    expected_missing = {"head.weight", "head.bias"} | (
        {"fc_norm.weight", "fc_norm.bias"} if global_pool == "avg" else set()
    )
    if set(missing) != expected_missing or unexpected:
        raise RuntimeError(f"classifier weights do not match: missing {missing}, unexpected {unexpected}")
    trunc_normal_(model.head.weight, std=2e-5)
    nn.init.zeros_(model.head.bias)
    if global_pool == "avg":
        nn.init.ones_(model.fc_norm.weight)
        nn.init.zeros_(model.fc_norm.bias)
    return model.to(next(encoder.parameters()).device)


def decays(name: str, param: nn.Parameter) -> bool:
    """MAE's weight-decay rule, exactly timm's ``param_groups_weight_decay`` with
    ``no_weight_decay_list=NO_WEIGHT_DECAY``: no decay on 1-D parameters, biases and the names in
    :data:`NO_WEIGHT_DECAY`."""
    if param.ndim <= 1 or name.endswith(".bias"):
        return False
    return not any(fnmatch.fnmatch(name, pattern) for pattern in NO_WEIGHT_DECAY)


def layer_id(name: str, depth: int) -> int:
    """Depth id of a classifier parameter: embeddings 0, block i -> i + 1, the rest depth + 1.

    Not timm's ``group_matcher`` ids: those put the final ``norm`` with the last block, where
    MAE's (BEiT's) recipe gives it depth + 1 like the head.
    """
    if name.startswith(("cls_token", "pos_embed", "patch_embed")):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return depth + 1


def layer_decay_groups(
    model: nn.Module, *, depth: int, layer_decay: float, weight_decay: float
) -> list[dict[str, Any]]:
    """Param groups with ``lr_scale = layer_decay ** (depth + 1 - id)`` and :func:`decays`.

    Returns:
        One group per (depth id, decayed?) pair that has parameters, sorted by id, non-decayed
        first; each has ``params``, ``lr_scale``, ``weight_decay`` and ``layer_id``.
    """
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        lid, decay = layer_id(name, depth), decays(name, p)
        group = groups.setdefault(
            (lid, decay),
            {
                "params": [],
                "lr_scale": layer_decay ** (depth + 1 - lid),
                "weight_decay": weight_decay if decay else 0.0,
                "layer_id": lid,
            },
        )
        group["params"].append(p)
    return [groups[k] for k in sorted(groups)]
