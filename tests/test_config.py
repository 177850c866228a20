"""Config loading: defaults, recipes, overrides, and clear refusals."""

from __future__ import annotations

import ast
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from semmae import config as config_lib
from semmae.errors import ConfigError

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_recipe_loads(path: Path) -> None:
    cfg = config_lib.load(path)
    assert isinstance(cfg, config_lib.Config)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_recipes_hold_only_what_differs_from_the_defaults(path: Path) -> None:
    cfg, defaults = config_lib.load(path), config_lib.Config()
    tree = yaml.safe_load(path.read_text())
    same = [f"{s}.{k}" for s, fields in tree.items() for k in fields
            if getattr(getattr(cfg, s), k) == getattr(getattr(defaults, s), k)]  # fmt: skip
    assert not same, f"{path.name} repeats defaults: {same}"


def test_overrides_are_typed_and_applied() -> None:
    cfg = config_lib.load(
        None, ["train.epochs=3", "data.limit=100", "masking.ratio=0.6", "data.crop_scale=[0.5,1]"]
    )
    assert cfg.train.epochs == 3 and cfg.data.limit == 100
    assert cfg.masking.ratio == pytest.approx(0.6)
    assert cfg.data.crop_scale == [0.5, 1.0]


def test_round_trip_through_dict_and_yaml(tmp_path: Path) -> None:
    cfg = config_lib.load(None, ["train.seed=7", "model.depth=3"])
    config_lib.dump(cfg, tmp_path / "c.yaml")
    again = config_lib.load(tmp_path / "c.yaml")
    assert again == cfg == config_lib.from_dict(cfg.to_dict())


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("train.epoch=2", "did you mean 'train.epochs'"),
        ("trian.epochs=2", "unknown config section"),
        ("masking.ratio=1.5", "masking.ratio"),
        ("masking.ratio=0", "masking.ratio"),
        ("model.patch_size=5", "model.patch_size"),
        ("model.embed_dim=0", "model.embed_dim"),
        ("model.num_heads=0", "model.num_heads"),
        ("model.decoder_depth=-1", "model.decoder_depth"),
        ("model.mlp_ratio=inf", "model.mlp_ratio"),
        ("model.mlp_ratio=nan", "model.mlp_ratio"),
        ("model.mlp_ratio=0", "model.mlp_ratio"),
        ("train.epochs=two", "train.epochs"),
        ("train.precision=fp16", "train.precision"),
        ("data.name=mnist", "data.name"),
        ("epochs", "section.field=value"),
        ("parts.lambda_area=-1", "parts.lambda_area"),
        ("parts.tau=0", "parts.tau"),
        ("parts.blur_padding=zeros", "parts.blur_padding"),
        # Values that used to reach PyTorch and end in a traceback:
        ("train.base_lr=nan", "train.base_lr"),
        ("train.base_lr=-1", "train.base_lr"),
        ("train.warmup_epochs=nan", "train.warmup_epochs"),
        ("train.weight_decay=nan", "train.weight_decay"),
        ("train.clip_grad=-1", "train.clip_grad"),
        ("train.seed=99999999999999999999999", "train.seed"),
        ("train.seed=-1", "train.seed"),
        ("train.knn_every_epochs=-2", "train.knn_every_epochs"),
        ("eval.knn_t=0", "eval.knn_t"),
        ("eval.knn_t=-1", "eval.knn_t"),
        ("eval.ft_base_lr=inf", "eval.ft_base_lr"),
        ("data.num_workers=-1", "data.num_workers"),
        ("data.in_chans=4", "data.in_chans"),
        ("data.std=[inf]", "data.std"),
        ("data.mean=[nan]", "data.mean"),
        ("train.device=foo", "train.device"),
        ("train.device=cuda:x", "train.device"),
        ("eval.ft_drop_path=2", "eval.ft_drop_path"),
        ("eval.ft_label_smoothing=1.5", "eval.ft_label_smoothing"),
        ("eval.ft_reprob=3", "eval.ft_reprob"),
        ("eval.ft_mixup=-1", "eval.ft_mixup"),
        ("eval.ft_auto_augment=garbage-xyz", "eval.ft_auto_augment"),
        ("eval.linear_val_frac=1", "eval.linear_val_frac"),
        ("pipeline.seeds=[]", "pipeline.seeds"),
        ("eval.linear_lrs=[]", "eval.linear_lrs"),
        ("eval.linear_lrs=[0.1,-1]", "eval.linear_lrs"),
        ("pipeline.study_methods=[]", "pipeline.study_methods"),
        ("data.name=image_folder", "data.name=image_folder needs data.root=DIR"),
        ("train.betas=[0.9]", "'train.betas' must be two AdamW betas in [0, 1)"),
        ("train.betas=[0.9,1.5]", "'train.betas' must be two AdamW betas in [0, 1)"),
        ("model.num_heads=5", "model.embed_dim (192) must be divisible by model.num_heads (5)"),
        (
            "model.decoder_num_heads=3",
            "model.decoder_embed_dim (128) must be divisible by model.decoder_num_heads (3)",
        ),
        ("model.embed_dim=6", "model.embed_dim must be divisible by 4 (the 2-D sin-cos position embedding)"),
        ("data.crop_ratio=[0,0]", "'data.crop_ratio' must be [lo, hi] with 0 < lo <= hi"),
        ("data.crop_ratio=[2,1]", "'data.crop_ratio' must be [lo, hi] with 0 < lo <= hi"),
        ("train.knn_train=0", "'train.knn_train' must be a finite number of at least 1"),
        ("train.knn_test=0", "'train.knn_test' must be a finite number of at least 1"),
        ("pipeline.seeds=[-1]", "'pipeline.seeds' must hold seeds in [0, 2**63)"),
        ("pipeline.seeds=[9223372036854775808]", "'pipeline.seeds' must hold seeds in [0, 2**63)"),
        ("data.image_size=99999999999999999999", "'data.image_size' must be at most 8192"),
        ("train.warmup_epochs=1e308", "'train.warmup_epochs' must be at most 1e+06"),
    ],
)
def test_bad_values_fail_with_the_key_named(override: str, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_lib.load(None, [override])
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "override",
    ["train.device=cuda:1", "train.device=mps", "eval.ft_auto_augment=\"\"", "eval.ft_auto_augment=augmix-m5-w4",
     "eval.ft_auto_augment=original-mstd0.5", "eval.ft_reprob=1", "eval.ft_drop_path=0", "eval.ft_mixup=0",
     "train.epochs=0 train.max_steps=3", "eval.ft_auto_augment=", "model.embed_dim=384 model.num_heads=6",
     "data.crop_ratio=[1,1]"],
)  # fmt: skip
def test_values_at_the_edges_of_their_range_load(override: str) -> None:
    config_lib.load(None, override.split())


def test_nothing_to_pretrain_is_a_rule_of_pretraining_only() -> None:
    # A shared recipe with train.epochs: 0 still serves evaluation and part learning.
    cfg = config_lib.load(None, ["train.epochs=0"])
    with pytest.raises(ConfigError, match="train.epochs is 0 and train.max_steps unset; set either to >= 1"):
        cfg.train.check_pretraining()
    config_lib.load(None, ["train.epochs=0", "train.max_steps=3"]).train.check_pretraining()


def test_every_policy_the_check_accepts_builds_in_timm() -> None:
    from timm.data import create_transform

    for policy in ("rand-m9-mstd0.5-inc1", "augmix-m5-w4", "original-mstd0.5", "v0r", "3a", "rand-m9-mstd0.5-t3a",
                   "rand-m9-n2-t3aw"):  # fmt: skip
        config_lib.load(None, [f"eval.ft_auto_augment={policy}"])
        create_transform(32, is_training=True, auto_augment=policy)


def test_a_key_given_twice_in_a_recipe_is_refused(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("train:\n  epochs: 3\n  batch_size: 8\n  epochs: 30\n")
    with pytest.raises(ConfigError, match="key 'epochs' is given twice"):
        config_lib.load(recipe)
    recipe.write_text("train:\n  epochs: 3\ndata:\n  limit: 5\ntrain:\n  seed: 1\n")
    with pytest.raises(ConfigError, match="key 'train' is given twice"):
        config_lib.load(recipe)


def test_missing_and_broken_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        config_lib.load(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="is a folder; give a YAML recipe"):
        config_lib.load(tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        config_lib.load(bad)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("train:\n  lr: 0.1\n")
    with pytest.raises(ConfigError, match="train.lr"):
        config_lib.load(unknown)


@pytest.mark.parametrize(
    ("override", "valid"),
    [
        (
            "pipeline.study_methods=[random,semantc]",
            "random, block, semantic, intra, inter, reversed, oracle",
        ),
        ("pipeline.stages=[mae,part,export]", "mae, parts, export, semmae, eval, report"),
        ("model.name=mae_vit_base", "mae_vit_base_patch16"),
        ("masking.schedule=zigzag", "power, intra, inter, linear, reversed, cosine"),
        ("parts.export_scale=3", "1, 2"),
        ("parts.export_scale=true", "1, 2"),  # a YAML bool is not the integer 1
    ],
)
def test_names_outside_their_list_fail_at_load_listing_the_valid_ones(override: str, valid: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_lib.load(None, [override])
    message = str(info.value)
    assert override.split("=")[0] in message and valid in message and "\n" not in message


def test_pipeline_lists_name_each_entry_once() -> None:
    ok = config_lib.load(None, ["pipeline.study_methods=[random,oracle]", "pipeline.stages=[mae,report]"])
    assert ok.pipeline.study_methods == ["random", "oracle"] and ok.pipeline.stages == ["mae", "report"]
    for override in ("pipeline.study_methods=[random,block,random]", "pipeline.seeds=[0,1,0]"):
        with pytest.raises(ConfigError, match="twice"):
            config_lib.load(None, [override])


def test_sections_check_themselves_and_validate_joins_them() -> None:
    data = config_lib.DataConfig(image_size=0)
    with pytest.raises(ConfigError, match="data.image_size"):
        data.check()
    with pytest.raises(ConfigError, match="eval.linear_crop_scale"):
        config_lib.EvalConfig(linear_crop_scale=[0.5, 0.1]).check()
    model = config_lib.ModelConfig(patch_size=5)
    model.check()  # a patch of 5 is fine on its own; it does not divide the data's 28 px
    with pytest.raises(ConfigError, match="must divide data.image_size"):
        config_lib.validate(config_lib.Config(model=model))
    config_lib.validate(config_lib.Config(model=model, data=config_lib.DataConfig(image_size=30)))


def test_load_applies_file_and_overrides_on_a_base(tmp_path: Path) -> None:
    base = config_lib.load(None, ["data.name=toy_parts", "data.image_size=32", "data.limit=10"])
    recipe = tmp_path / "r.yaml"
    recipe.write_text("data:\n  limit: 100\n")
    cfg = config_lib.load(recipe, ["eval.knn_k=5"], base=base)
    assert (cfg.data.name, cfg.data.image_size, cfg.data.limit, cfg.eval.knn_k) == ("toy_parts", 32, 100, 5)
    assert base.data.limit == 10 and base.eval.knn_k == 20  # the base is not modified
    with pytest.raises(ConfigError, match="model.patch_size"):  # the merged config is validated
        config_lib.load(None, ["model.patch_size=4"], base=config_lib.load(None, ["data.image_size=30"]))


def test_parts_section_builds_the_learner_arch() -> None:
    cfg = config_lib.load(None, ["parts.tau=0.2", "parts.num_parts=6", "parts.lr=0.5"])
    arch = cfg.parts.learner_arch()
    assert type(arch) is config_lib.PartLearnerArch and (arch.tau, arch.num_parts) == (0.2, 6)
    assert arch.center_tokens is True  # what every configured run has used
    fields = {f.name for f in dataclasses.fields(config_lib.PartLearnerArch)}
    assert set(dataclasses.asdict(arch)) == fields and "lr" not in fields


def test_config_modules_import_nothing_above_the_bottom_layer() -> None:
    code = "import sys, semmae.config; print(sorted(m for m in sys.modules if m.startswith(('semmae', 'torch'))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    bottom = {"semmae", "semmae.config", "semmae.config_checks", "semmae.config_eval", "semmae.config_parts",
              "semmae.config_sections",
              "semmae.errors", "semmae.model_sizes",
              "semmae.names"}  # fmt: skip
    assert set(ast.literal_eval(out)) == bottom


def test_recipe_sections_merge_keys_and_shapes(tmp_path: Path) -> None:
    # YAML merge keys work (and what they bring may be overridden); an empty section sets nothing;
    # a section that is no mapping is named as one.
    recipe = tmp_path / "r.yaml"
    recipe.write_text("base: &b {epochs: 3, batch_size: 16}\ntrain:\n  <<: *b\n  epochs: 5\ndata:\n")
    with pytest.raises(ConfigError, match="config section 'base' must be a mapping|unknown"):
        config_lib.load(recipe)
    recipe.write_text("train:\n  <<: {epochs: 3, batch_size: 16}\n  epochs: 5\ndata:\n")
    cfg = config_lib.load(recipe)
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.data.name) == (5, 16, "fashion_mnist")
    recipe.write_text("data: [1, 2]\n")
    with pytest.raises(ConfigError, match="config section 'data' must be a mapping of its keys"):
        config_lib.load(recipe)
