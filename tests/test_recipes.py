"""The paper recipes resolve to the papers' settings, and MAE and SemMAE share one evaluation protocol.

Every row of :data:`PAPER` is one setting of one or more recipes, with the value the paper states and
where it states it. ``MAE A.1`` is He et al. 2022 (arXiv 2111.06377), appendix A.1: Table 8
(pre-training), Table 9 (end-to-end fine-tuning), Table 10 (linear probing). ``SemMAE 4.1`` is Li et
al. 2022 (arXiv 2206.10207), section 4.1 (implementation details). Values that depend on the number
of processes are resolved for the recipes' stated 8 GPUs.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest

from semmae import config as config_lib
from semmae.models.presets import preset

CONFIGS = Path(__file__).parents[1] / "configs"
GPUS = 8  # the recipes' comments size their batches for 8 processes

MAE_B16, SEMMAE_B16 = "vit_base_in1k.yaml", "vit_base_in1k_semmae.yaml"
MAE_B8, SEMMAE_B8 = "vit_base8_in1k.yaml", "vit_base8_in1k_semmae.yaml"
MAE_L, MAE_H = "vit_large_in1k.yaml", "vit_huge_in1k.yaml"
BASE = (MAE_B16, SEMMAE_B16, MAE_B8, SEMMAE_B8)
ALL = (*BASE, MAE_L, MAE_H)
SEMMAE = (SEMMAE_B16, SEMMAE_B8)
PAIRS = ((MAE_B16, SEMMAE_B16), (MAE_B8, SEMMAE_B8))


def _resolved(cfg: config_lib.Config, key: str) -> Any:
    """A recipe's value of ``key``: a config field or a quantity derived from several."""
    derived = {
        "pretrain.effective_batch": lambda: cfg.train.batch_size * cfg.train.accum_steps * GPUS,
        "finetune.effective_batch": lambda: cfg.eval.ft_batch_size * GPUS,
        "model.patch_size": lambda: cfg.model.patch_size or preset(cfg.model.name)["patch_size"],
        "model.embed_dim": lambda: preset(cfg.model.name)["embed_dim"],
        "model.depth": lambda: preset(cfg.model.name)["depth"],
        "model.decoder": lambda: tuple(
            preset(cfg.model.name)[k] for k in ("decoder_embed_dim", "decoder_depth", "decoder_num_heads")
        ),
        "eval.resize_short_side": lambda: int(cfg.data.image_size / cfg.data.crop_pct),
    }
    if key in derived:
        return derived[key]()
    section, name = key.split(".")
    value = getattr(getattr(cfg, section), name)
    return tuple(value) if isinstance(value, list) else value


# (recipes, key, paper value, source)
PAPER: list[tuple[tuple[str, ...], str, Any, str]] = [
    # pre-training (MAE's, which SemMAE follows)
    (ALL, "train.epochs", 800, "MAE A.1 (800-epoch schedule); SemMAE 4.1: 800 epochs"),
    (ALL, "train.warmup_epochs", 40, "MAE A.1 Table 8: warmup epochs 40"),
    (ALL, "train.base_lr", 1.5e-4, "MAE A.1 Table 8: base lr 1.5e-4"),
    (ALL, "pretrain.effective_batch", 4096, "MAE A.1 Table 8: batch size 4096"),
    (ALL, "train.weight_decay", 0.05, "MAE A.1 Table 8: weight decay 0.05"),
    (ALL, "train.betas", (0.9, 0.95), "MAE A.1 Table 8: AdamW beta 0.9, 0.95"),
    (ALL, "data.crop_scale", (0.2, 1.0), "MAE A.1 Table 8: RandomResizedCrop (MAE code: scale 0.2-1)"),
    (ALL, "data.hflip", True, "MAE A.1 Table 8: RandomResizedCrop + flip"),
    (ALL, "data.image_size", 224, "MAE A.1: 224x224 input"),
    (ALL, "masking.ratio", 0.75, "MAE 4 (mask ratio 75%); SemMAE 4.1"),
    (ALL, "model.norm_pix_loss", True, "MAE 4: normalised pixels as the target"),
    (ALL, "model.decoder", (512, 8, 16), "MAE A.1: decoder 512-d, 8 blocks"),
    ((MAE_B16, SEMMAE_B16), "model.patch_size", 16, "MAE A.1 ViT-B/16; SemMAE 4.1 ViT-B/16"),
    ((MAE_B8, SEMMAE_B8), "model.patch_size", 8, "SemMAE 4.1/Table 1: ViT-B/8"),
    (BASE, "model.embed_dim", 768, "ViT-B: 768 wide, 12 blocks"),
    ((MAE_L,), "model.depth", 24, "ViT-L: 24 blocks"),
    ((MAE_H,), "model.patch_size", 14, "MAE A.1: ViT-H/14"),
    ((MAE_H,), "model.embed_dim", 1280, "ViT-H: 1280 wide"),
    (SEMMAE, "masking.name", "semantic", "SemMAE 3.2: semantic-guided masking"),
    (SEMMAE, "masking.gamma", 2.0, "SemMAE 3.2: intra- to inter-part schedule (our lambda = 1 - p^2)"),
    # end-to-end fine-tuning
    (BASE, "eval.ft_epochs", 100, "MAE A.1 Table 9: 100 epochs (ViT-B); SemMAE 4.1: 100 epochs"),
    ((MAE_L, MAE_H), "eval.ft_epochs", 50, "MAE A.1 Table 9: 50 epochs (ViT-L/H)"),
    (BASE, "eval.ft_base_lr", 5e-4, "MAE A.1 Table 9: base lr 5e-4 (ViT-B)"),
    ((MAE_L, MAE_H), "eval.ft_base_lr", 1e-3, "MAE A.1 Table 9: base lr 1e-3 (ViT-L/H)"),
    (BASE, "eval.ft_layer_decay", 0.65, "MAE A.1 Table 9: layer decay 0.65 (ViT-B)"),
    ((MAE_L, MAE_H), "eval.ft_layer_decay", 0.75, "MAE A.1 Table 9: layer decay 0.75 (ViT-L/H)"),
    (BASE, "eval.ft_drop_path", 0.1, "MAE A.1 Table 9: drop path 0.1 (ViT-B)"),
    ((MAE_L,), "eval.ft_drop_path", 0.2, "MAE's released ViT-L fine-tuning setting: drop path 0.2"),
    ((MAE_H,), "eval.ft_drop_path", 0.3, "MAE's released ViT-H fine-tuning setting: drop path 0.3"),
    (ALL, "finetune.effective_batch", 1024, "MAE A.1 Table 9: batch size 1024"),
    (ALL, "eval.ft_weight_decay", 0.05, "MAE A.1 Table 9: weight decay 0.05"),
    (ALL, "eval.ft_warmup_epochs", 5, "MAE A.1 Table 9: warmup epochs 5"),
    (ALL, "eval.ft_auto_augment", "rand-m9-mstd0.5-inc1", "MAE A.1 Table 9: RandAug (9, 0.5)"),
    (ALL, "eval.ft_crop_scale", (0.08, 1.0), "MAE A.1 Table 9: RandomResizedCrop (default scale 0.08-1)"),
    (ALL, "eval.ft_label_smoothing", 0.1, "MAE A.1 Table 9: label smoothing 0.1"),
    (ALL, "eval.ft_mixup", 0.8, "MAE A.1 Table 9: mixup 0.8"),
    (ALL, "eval.ft_cutmix", 1.0, "MAE A.1 Table 9: cutmix 1.0"),
    (ALL, "eval.ft_reprob", 0.25, "MAE A.1 Table 9: random erase 0.25"),
    (ALL, "eval.ft_global_pool", "avg", "MAE A.1: fine-tuning uses global average pooling"),
    (ALL, "eval.resize_short_side", 256, "MAE A.1: evaluation resize 256, centre crop 224"),
    # linear probing
    (ALL, "eval.linear_protocol", "mae", "MAE A.1 Table 10 (the protocol itself)"),
    (ALL, "eval.linear_blr", 0.1, "MAE A.1 Table 10: base lr 0.1"),
    (ALL, "eval.linear_batch_size", 16384, "MAE A.1 Table 10: batch size 16384"),
    (ALL, "eval.linear_epochs", 90, "MAE A.1 Table 10: 90 epochs"),
    (ALL, "eval.linear_warmup_epochs", 10, "MAE A.1 Table 10: warmup epochs 10"),
    (ALL, "eval.linear_weight_decay", 0.0, "MAE A.1 Table 10: weight decay 0"),
    (ALL, "eval.linear_crop_scale", (0.08, 1.0), "MAE A.1 Table 10: RandomResizedCrop"),
    (ALL, "eval.feature", "cls", "MAE A.1: the linear probe reads the class token"),
    # stage 1 (where SemMAE states it)
    (
        ("parts_vitb16_in1k.yaml",),
        "parts.global_token",
        "cls",
        "SemMAE 3.1: part tokens from the global (CLS) token",
    ),
    (("parts_vitb16_in1k.yaml",), "data.image_size", 224, "SemMAE 4.1: iBOT ViT-B/16 at 224 px"),
]


@functools.cache
def _load(recipe: str) -> config_lib.Config:
    return config_lib.load(CONFIGS / recipe)


def _matches(value: Any, expected: Any) -> bool:
    return value == pytest.approx(expected) if isinstance(expected, float) else value == expected


@pytest.mark.parametrize("recipe", sorted({r for recipes, *_ in PAPER for r in recipes}))
def test_recipe_holds_the_papers_values(recipe: str) -> None:
    rows = [(k, v, s) for recipes, k, v, s in PAPER if recipe in recipes]
    wrong = [
        f"{key} = {_resolved(_load(recipe), key)!r}, paper: {expected!r} ({source})"
        for key, expected, source in rows
        if not _matches(_resolved(_load(recipe), key), expected)
    ]
    assert len(rows) >= 2 and not wrong, f"{recipe}: " + "; ".join(wrong)


def _protocol(cfg: config_lib.Config) -> dict[str, Any]:
    """Everything that decides an evaluation number: the eval section and the evaluation view."""
    d = cfg.to_dict()
    view = {k: d["data"][k] for k in ("image_size", "in_chans", "crop_pct", "mean", "std", "name")}
    return {"eval": d["eval"], "view": view, "seed": d["train"]["seed"], "precision": d["train"]["precision"]}


@pytest.mark.parametrize("mae,semmae", PAIRS)
def test_mae_and_semmae_recipes_share_one_evaluation_protocol(mae: str, semmae: str) -> None:
    a, b = (_protocol(_load(r)) for r in (mae, semmae))
    differ = sorted(k for k in a["eval"] if a["eval"][k] != b["eval"][k])
    assert a == b, (
        f"{mae} and {semmae} evaluate differently: eval keys {differ}, view {a['view']} vs {b['view']}"
    )
    model_a, model_b = (_load(r).model for r in (mae, semmae))
    assert model_a == model_b  # only the masking differs between the pair


def test_every_paper_recipe_is_in_the_table() -> None:
    covered = {r for recipes, *_ in PAPER for r in recipes}
    assert {p.name for p in CONFIGS.glob("vit_*.yaml")} <= covered


def test_the_table_can_fail() -> None:
    cfg = config_lib.load(CONFIGS / MAE_B16, ["eval.ft_warmup_epochs=1", "train.accum_steps=4"])
    assert not _matches(_resolved(cfg, "eval.ft_warmup_epochs"), 5)
    assert _resolved(cfg, "pretrain.effective_batch") == 2048
    other = config_lib.load(CONFIGS / SEMMAE_B16, ["eval.ft_epochs=5"])
    assert _protocol(other) != _protocol(_load(MAE_B16))
