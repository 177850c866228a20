"""The MAE encoder on its own, and loading one from any checkpoint this toolkit understands.

:class:`ViTEncoder` holds exactly the encoder part of :class:`~semmae.models.mae.MaskedAutoencoderViT`
under the same parameter names (``patch_embed``, ``cls_token``, ``pos_embed``, ``blocks``, ``norm``),
which are also the names of a timm ``VisionTransformer``. :func:`load_encoder` builds one from:

* our checkpoints (``{"kind", "model", "arch", "config", ...}``) of kind ``mae``, ``finetune`` or
  ``parts`` (whichever holds encoder weights, under any key prefix);
* an official MAE checkpoint (``{"model": state_dict}``, no ``arch``);
* a timm ViT state dict (``.safetensors``, or a ``.pth``/``.bin`` torch file);
* ``timm:NAME@FILE`` (a timm ViT file whose head count is taken from the timm model ``NAME``);
* ``random:<mae preset>`` (random MAE initialisation with a fixed seed: the floor of every metric).

Without an ``arch`` the architecture is read off the tensor shapes: width and patch size from
``patch_embed.proj.weight`` (D, C, P, P), depth from the block indices, the grid from ``pos_embed``
(1, 1 + h*w, D), the MLP ratio from ``blocks.0.mlp.fc1``. Heads cannot be seen in shapes: they are
D / 64 (every standard ViT except ViT-H/14, which has 16), or 1 for widths below 64.

Normalisation in the returned metadata: the ``normalization`` a checkpoint records (fine-tunes,
our timm exports), else our checkpoint's ``config.data.mean/std``; otherwise ImageNet's mean/std
for 3-channel encoders and mean 0.5 / std 0.5 for any other channel count.
"""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path
from typing import Any

import torch

from semmae.encoder_spec import parse_encoder_spec
from semmae.errors import CheckpointError, ConfigError
from semmae.models.checkpoint import backbone_hash, load_checkpoint
from semmae.models.presets import preset
from semmae.models.vit_encoder import ENCODER_KEYS, ViTEncoder

log = logging.getLogger(__name__)

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
RANDOM_SEED = 0  # seed of ``random:<preset>`` encoders, so the floor is one fixed network

# Keys found next to an encoder and deliberately dropped: the MAE decoder, timm classifier parts.
IGNORED_KEYS = (
    "decoder_embed.",
    "mask_token",
    "decoder_pos_embed",
    "decoder_blocks.",
    "decoder_norm.",
    "decoder_pred.",
    "head.",
    "fc_norm.",
    "head_drop.",
)
_KNOWN_HEADS = {(1280, 32): 16}  # (width, depth) -> heads where D / 64 is wrong (ViT-H)
_STANDARD_WIDTHS = frozenset({192, 384, 768, 1024, 1280})  # ViT-Ti/S/B/L/H: 64-wide heads (or above)


def default_normalization(in_chans: int) -> tuple[list[float], list[float]]:
    """(mean, std) used when a checkpoint does not say: ImageNet's for RGB, 0.5/0.5 otherwise."""
    if in_chans == 3:
        return list(IMAGENET_MEAN), list(IMAGENET_STD)
    return [0.5], [0.5]


def check_encoder_fits(encoder: ViTEncoder, image_size: int, in_chans: int) -> None:
    """Refuse data the encoder cannot take, naming the config settings that fix it.

    Args:
        encoder: the encoder (its position embeddings fix the image size).
        image_size: S of the data.
        in_chans: C of the data.

    Raises:
        ConfigError: channel count or image size (patch grid) differ from the encoder's.
    """
    fixes = [f"data.in_chans={encoder.in_chans}"] if in_chans != encoder.in_chans else []
    if image_size != encoder.img_size:
        fixes.append(f"data.image_size={encoder.img_size}")
    if not fixes:
        return
    if image_size % encoder.patch_size:
        p = encoder.patch_size
        reason = f"the encoder's patch size {p} does not divide the data's image size {image_size}"
    else:
        c, s, g = encoder.in_chans, encoder.img_size, encoder.grid
        reason = (
            f"the encoder takes {c}x{s}x{s} images (a {g[0]}x{g[1]} position grid) but the data gives "
            f"{in_chans}x{image_size}x{image_size}"
        )
    raise ConfigError(f"{reason}; set {' '.join(fixes)}")


def _is_number(x: Any) -> bool:
    """A finite int or float (bools, which are ints to Python, are not numbers in a checkpoint)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _key_list(state: dict[str, Any], n: int = 6) -> str:
    keys = list(state)
    more = f", ... ({len(keys)} keys)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def _encoder_state(state: dict[str, Any], where: str) -> dict[str, torch.Tensor]:
    """Encoder weights of ``state`` with any prefix (``module.``, ``backbone.``, ...) removed.

    Raises:
        CheckpointError: no ViT encoder, several candidate prefixes, or unknown extra keys.
    """
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    prefixes = sorted(
        k[: -len("patch_embed.proj.weight")] for k in tensors if k.endswith("patch_embed.proj.weight")
    )
    if not prefixes:
        raise CheckpointError(f"checkpoint {where} holds no ViT encoder (found keys {_key_list(state)})")
    if len(prefixes) > 1 and "" not in prefixes:
        raise CheckpointError(
            f"checkpoint {where} holds several ViT encoders (prefixes {prefixes}); export one"
        )
    prefix = "" if "" in prefixes else prefixes[0]
    sub = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    enc = {k: v for k, v in sub.items() if k.startswith(ENCODER_KEYS)}
    unknown = [k for k in sub if not k.startswith(ENCODER_KEYS + IGNORED_KEYS)]
    if unknown:
        raise CheckpointError(
            f"checkpoint {where} holds a ViT variant this encoder does not support (unexpected keys "
            f"{unknown[:4]}: e.g. layer scale, register tokens, qk-norm)"
        )
    if "norm.weight" not in enc and "fc_norm.weight" in sub:
        # An average-pooling classifier has no token norm; its pooled-feature norm stands in for it.
        log.info("checkpoint %s has no final token norm; using its fc_norm in its place", where)
        enc["norm.weight"], enc["norm.bias"] = sub["fc_norm.weight"], sub["fc_norm.bias"]
    return enc


def infer_arch(
    state: dict[str, torch.Tensor], where: str, hint: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Encoder constructor arguments from tensor shapes; ``hint`` supplies heads/ratio when known.

    Raises:
        CheckpointError: shapes that do not form a plain ViT (e.g. no class-token position).
    """
    hint = dict(hint or {})
    try:
        dim, chans, patch, patch_w = state["patch_embed.proj.weight"].shape
        num_pos = state["pos_embed"].shape[1]
        depth = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k)))
        hidden = state["blocks.0.mlp.fc1.weight"].shape[0]
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {where} holds an incomplete ViT encoder (missing {exc})") from None
    side = round((num_pos - 1) ** 0.5)
    if patch != patch_w or side * side != num_pos - 1 or "cls_token" not in state:
        raise CheckpointError(
            f"checkpoint {where} is not a square-patch ViT with a class token and position embeddings "
            f"for it (pos_embed has {num_pos} positions)"
        )
    heads = hint.get("num_heads")
    if heads is None:
        heads = _KNOWN_HEADS.get((dim, depth)) or (dim // 64 if dim % 64 == 0 else 1)
        if dim not in _STANDARD_WIDTHS:  # a guess a non-standard ViT may not match: say so
            log.warning("checkpoint %s records no head count; assuming %d (width %d / 64). If the encoder had "
                        "another, its features will be wrong: give the file as timm:MODEL_NAME@FILE, or keep the "
                        "checkpoint's 'arch' entry", where, heads, dim)  # fmt: skip
    ratio = hidden / dim if hint.get("mlp_ratio") is None else hint["mlp_ratio"]
    if not _is_number(heads) or heads != int(heads) or heads < 1:
        raise CheckpointError(f"checkpoint {where} gives num_heads={heads!r}; it must be a positive integer")
    if dim % int(heads):
        raise CheckpointError(
            f"checkpoint {where} gives num_heads={heads!r}, which does not divide its width {dim}; "
            "correct the head count it records (e.g. timm_kwargs)"
        )
    if not _is_number(ratio) or ratio <= 0:
        raise CheckpointError(f"checkpoint {where} gives mlp_ratio={ratio!r}; it must be a positive number")
    return dict(img_size=side * patch, patch_size=patch, in_chans=chans, embed_dim=dim, depth=depth,
                num_heads=int(heads), mlp_ratio=float(ratio))  # fmt: skip


def _build(state: dict[str, torch.Tensor], where: str, hint: dict[str, Any] | None) -> ViTEncoder:
    integral = next(
        (k for k, t in state.items() if isinstance(t, torch.Tensor) and not t.is_floating_point()), None
    )
    if integral is not None:  # load_state_dict would cast them silently: every feature would be wrong
        raise CheckpointError(
            f"checkpoint {where} holds {state[integral].dtype} weights ({integral}); an encoder's weights "
            "are floating point (a quantised or corrupted file?)"
        )
    arch = infer_arch(state, where, hint)
    enc = ViTEncoder(**arch)
    try:
        missing, unexpected = enc.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shapes that disagree with the recorded arch (e.g. its mlp_ratio)
        last = str(exc).strip().splitlines()[-1].strip()
        raise CheckpointError(
            f"checkpoint {where} does not fit the architecture it records: {last}"
        ) from None
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {where} holds a ViT variant this encoder does not support (missing {missing[:4]}, "
            f"unexpected {unexpected[:4]}; e.g. layer scale or qk-norm)"
        )
    bad = next((name for name, t in enc.state_dict().items() if not bool(t.isfinite().all())), None)
    if bad is not None:  # every feature would be NaN: kNN, probes and exports would report garbage
        raise CheckpointError(
            f"checkpoint {where} holds NaN or infinite weights ({bad}); the run diverged before it was "
            "saved: use an earlier checkpoint"
        )
    return enc.eval()


def _random_encoder(name: str) -> tuple[ViTEncoder, dict[str, Any]]:
    arch = preset(name)  # ConfigError listing the presets
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        enc = ViTEncoder.from_arch(arch)
    mean, std = default_normalization(enc.in_chans)
    return enc.eval(), {"source": f"random:{name}", "kind": "random", "mean": mean, "std": std, "data": None}


def _timm_heads(name: str) -> dict[str, Any]:
    """Heads and MLP ratio of the timm model ``name``, built on the meta device (no weights)."""
    import timm

    try:
        with torch.device("meta"):
            model = timm.create_model(name, pretrained=False)
        attn, mlp = model.blocks[0].attn, model.blocks[0].mlp
    except Exception as exc:  # noqa: BLE001 - unknown or non-ViT timm names
        raise CheckpointError(
            f"timm model {name!r} is not a ViT timm can build ({type(exc).__name__})"
        ) from None
    return {"num_heads": attn.num_heads, "mlp_ratio": mlp.fc1.out_features / mlp.fc1.in_features}


def _json_metadata(meta: dict[str, str], key: str, where: str, kind: type) -> Any:
    """A safetensors metadata entry parsed as JSON of type ``kind`` (None allowed).

    Raises:
        CheckpointError: not JSON, or JSON of another type.
    """
    try:
        value = json.loads(meta[key])
    except (json.JSONDecodeError, TypeError):
        raise CheckpointError(
            f"checkpoint {where} has {key!r} metadata that is not JSON; re-export it with `semmae export`"
        ) from None
    if value is not None and not isinstance(value, kind):
        raise CheckpointError(
            f"checkpoint {where} has {key!r} metadata of the wrong kind ({type(value).__name__}, "
            f"expected {kind.__name__}); re-export it with `semmae export`"
        )
    return value


def check_normalization(mean: Any, std: Any, in_chans: int, where: str) -> tuple[list[float], list[float]]:
    """The recorded input normalisation as float lists, if it fits a ``in_chans``-channel encoder.

    Raises:
        CheckpointError: not lists of finite numbers, not 1 or ``in_chans`` values each, or std <= 0.
    """

    def numbers(v: Any) -> bool:
        return isinstance(v, (list, tuple)) and all(_is_number(x) for x in v)

    if (
        not (numbers(mean) and numbers(std))
        or len(mean) not in (1, in_chans)
        or len(std) != len(mean)
        or not all(s > 0 for s in std)
    ):
        raise CheckpointError(
            f"checkpoint {where} records normalisation mean={mean!r} std={std!r}, which does not fit its "
            f"{in_chans}-channel encoder (1 or {in_chans} numbers each, std > 0); correct or drop them"
        )
    return [float(x) for x in mean], [float(x) for x in std]


def _read_file(
    path: Path, where: str, map_location: str | torch.device
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(state dict, description) of any supported file; description has kind/arch/config/meta."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
            with safe_open(str(path), "pt") as f:
                meta = f.metadata() or {}
        except Exception as exc:  # noqa: BLE001 - a corrupt file is the user's to fix
            raise CheckpointError(f"checkpoint {where} could not be read ({type(exc).__name__})") from None
        kwargs = _json_metadata(meta, "timm_kwargs", where, dict) if "timm_kwargs" in meta else None
        norm = {k: _json_metadata(meta, k, where, list if k != "data" else dict) for k in ("mean", "std", "data")
                if k in meta}  # fmt: skip
        return state, {"kind": "timm", "arch": kwargs, "config": None, "norm": norm}
    obj = load_checkpoint(path, map_location=map_location)
    for key in ("arch", "config"):
        if obj.get(key) is not None and not isinstance(obj[key], dict):
            raise CheckpointError(
                f"checkpoint {where} records {key!r} as a {type(obj[key]).__name__}, not a mapping; "
                "the file is damaged or was not written by semmae"
            )
    if "kind" in obj and isinstance(obj.get("model"), dict):
        norm = obj.get("normalization") or {}  # what a fine-tune actually fed its encoder
        return obj["model"], dict(kind=obj["kind"], arch=obj.get("arch"), config=obj.get("config"), norm=norm,
                                  backbone=obj.get("backbone"))  # fmt: skip
    for key, kind in (("model", "official_mae"), ("state_dict", "timm"), ("model_ema", "timm")):
        if isinstance(obj.get(key), dict):
            return obj[key], {"kind": kind, "arch": None, "config": None}
    return obj, {"kind": "timm", "arch": None, "config": None}


def _recorded_backbone(backbone: str, where: str) -> str:
    """The backbone a part checkpoint names, or a CheckpointError saying why it cannot be found."""
    parsed = parse_encoder_spec(backbone)
    if parsed.path is not None and not Path(parsed.path).is_file():
        relative = "" if Path(parsed.path).is_absolute() else " (relative to the folder it was trained from)"
        raise CheckpointError(
            f"part checkpoint {where} was trained on the backbone {backbone!r}{relative}, which is not "
            "there; run from that folder, or evaluate the backbone itself"
        )
    return backbone


def _check_backbone_unchanged(backbone: str, recorded: Any, where: str) -> None:
    """The backbone file must be the one the part learner was trained on (its recorded hash)."""
    if not isinstance(recorded, dict) or "hash" not in recorded or "state" in recorded:
        return  # no record (an older checkpoint), or a random backbone rebuilt from its spec
    current = backbone_hash(backbone)  # as training computed it, from the same spec
    if current != recorded["hash"]:
        raise CheckpointError(
            f"backbone {backbone!r} of part checkpoint {where} is not the file the part learner was "
            f"trained on (hash {current} != {recorded['hash']}); restore that file or retrain the parts"
        )


def load_encoder(spec: str, *, map_location: str | torch.device = "cpu") -> tuple[ViTEncoder, dict[str, Any]]:
    """Build the ViT encoder named by ``spec`` (see the module docstring for what it may be).

    Args:
        spec: a checkpoint path, ``timm:NAME@FILE`` or ``random:<mae preset>``.
        map_location: where tensors are loaded (the encoder is returned on this device).

    Returns:
        ``(encoder in eval mode, metadata)``; metadata has ``source``, ``kind``, ``mean``, ``std``
        (lists of floats) and ``data`` (the checkpoint's data config dict, or None).

    Raises:
        CheckpointError: missing or unreadable file, one that holds no ViT encoder, or part
            checkpoints that name each other as backbone.
        ConfigError: unknown ``random:`` preset.
    """
    return _load_encoder(spec, map_location, ())


def _load_encoder(
    spec: str, map_location: str | torch.device, chain: tuple[Path, ...]
) -> tuple[ViTEncoder, dict[str, Any]]:
    """:func:`load_encoder`, with ``chain``: the part checkpoints that led here via their backbone."""
    parsed = parse_encoder_spec(spec)
    if parsed.kind == "random":
        enc, meta = _random_encoder(str(parsed.name))
        return enc.to(map_location), meta
    hint = _timm_heads(str(parsed.name)) if parsed.kind == "timm" else {}
    path = Path(str(parsed.path))
    where = repr(str(path))
    if not path.is_file():
        raise CheckpointError(f"checkpoint {where} not found")
    if path.resolve() in chain:
        loop = " -> ".join(str(p) for p in (*chain, path.resolve()))
        raise CheckpointError(
            f"part checkpoints name each other as parts.backbone ({loop}); point parts.backbone at an "
            "encoder checkpoint (e.g. an MAE run's checkpoints/last.pt)"
        )
    state, desc = _read_file(path, where, map_location)
    backbone = (
        ((desc["config"] or {}).get("parts") or {}).get("backbone") if desc["kind"] == "parts" else None
    )
    if backbone and not any(k.endswith("patch_embed.proj.weight") for k in state):
        # A part learner that stored only its own head: its frozen encoder is the backbone it names.
        log.info("checkpoint %s holds no encoder weights; loading its backbone %s", where, backbone)
        enc, meta = _load_encoder(_recorded_backbone(backbone, where), map_location, (*chain, path.resolve()))
        _check_backbone_unchanged(backbone, desc.get("backbone"), where)
        return enc, {**meta, "via": spec}
    enc_state = _encoder_state(state, where)
    enc = _build(enc_state, where, {**hint, **(desc["arch"] or {})}).to(map_location)
    data = desc["config"].get("data") if isinstance(desc["config"], dict) else None
    mean, std = default_normalization(enc.in_chans)
    norm = desc.get("norm") or {}
    if norm.get("mean") is not None or norm.get("std") is not None:
        mean, std = check_normalization(norm.get("mean"), norm.get("std"), enc.in_chans, where)
    elif data and data.get("mean") and data.get("std"):
        mean, std = check_normalization(data["mean"], data["std"], enc.in_chans, where)
    return enc, dict(source=spec, kind=desc["kind"], mean=mean, std=std, data=data or norm.get("data"))
