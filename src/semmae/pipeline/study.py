"""``semmae study``: masking strategies compared under one recipe, over seeds.

Methods (``pipeline.study_methods``): ``random`` (MAE), ``block`` (BEiT-style), ``semantic``
(SemMAE, power schedule with ``masking.gamma``), ``intra`` (λ ≡ 1), ``inter`` (λ ≡ 0),
``reversed`` (λ = p^γ), and ``oracle`` (semantic with ground-truth parts; added automatically on
sets with part masks: toy-parts, toy-relations). Learned parts come from one shared prefix (MAE
seed 0 → part learner → export) so every semantic variant masks with the same maps; the prefix
MAE is also ``random``'s seed-0 run. Every seed also gets a ``floor`` row: the same network at
its seed's initialisation, untrained. Runs with the same seed share initial weights and data
order, so each method's difference to ``random`` is paired by seed (:mod:`semmae.pipeline.stats`).

Budgets (:mod:`semmae.pipeline.budgets`): ``full`` is the config as written; ``quick`` a smoke run
in minutes; ``gpu`` the same study with more data, epochs and seeds, sized for one H100/H200-class
GPU in about 10 minutes.
"""

from __future__ import annotations

import json
import logging
import resource
from pathlib import Path
from typing import Any

import torch

from semmae import runtime
from semmae.atomic import atomic_path
from semmae.config import Config
from semmae.engine.build import build_model
from semmae.engine.rundir import prepare_run_dir
from semmae.errors import ConfigError
from semmae.models.checkpoint import save_checkpoint
from semmae.parts.export import maps_from_masks
from semmae.pipeline.budgets import PART_MASK_SETS
from semmae.pipeline.evaluate import evaluate_encoder
from semmae.pipeline.layout import PipelineLayout, StageDir, StudyLayout
from semmae.pipeline.stages import (
    StageFn,
    check_labelled,
    export_stage,
    parts_config,
    parts_stage,
    pretrain_stage,
    run_stage,
    with_masking,
)
from semmae.pipeline.stats import describe
from semmae.pipeline.study_report import compare, write_study_report
from semmae.runtime import provenance

log = logging.getLogger(__name__)

SCHEDULES = {"semantic": None, "intra": "intra", "inter": "inter", "reversed": "reversed", "oracle": None}
FLOOR = "floor"


def cpu_seconds() -> float:
    """User + system CPU seconds of this process so far (all threads): the cost on a shared machine."""
    use = resource.getrusage(resource.RUSAGE_SELF)
    return use.ru_utime + use.ru_stime


def method_config(cfg: Config, method: str, seed: int, learned: Path, oracle: Path | None) -> Config:
    """The recipe of one (method, seed) run: only masking and seed differ between runs."""
    if method in ("random", "block"):
        out = with_masking(cfg, method)  # type: ignore[arg-type]
    else:
        out = with_masking(cfg, "semantic", oracle if method == "oracle" else learned)
    out.train.seed = seed
    if SCHEDULES.get(method):
        out.masking.schedule = SCHEDULES[method]  # type: ignore[assignment]
    return out


def _oracle_maps(cfg: Config, prefix: PipelineLayout, grid: list[int]) -> Path | None:
    """Ground-truth part maps of the train split at the learned maps' grid, for the ``oracle`` method."""
    if cfg.data.name not in PART_MASK_SETS:
        return None
    path = prefix.oracle_maps("train")
    if not path.is_file() and runtime.is_main():  # the learned maps' grid is square: images are S x S
        maps_from_masks(cfg, "train", grid[0], path)
    runtime.barrier()  # every rank reads the file rank 0 wrote
    return path


def _initial_weights(cfg: Config) -> StageFn:
    """A stage writing the untrained network of ``cfg`` at ``cfg.train.seed`` as a pretraining checkpoint.

    Pretraining seeds the global generator with ``train.seed`` right before building its model,
    so this is the very network a run with that seed starts from: the floor of that seed.
    """

    def fn(d: Path, resume: bool) -> dict[str, Any]:
        with torch.random.fork_rng(devices=[]):
            runtime.seed_everything(cfg.train.seed)
            model = build_model(cfg)
        state = {"kind": "mae", "model": model.state_dict(), "arch": dict(model.arch), "step": 0,
                 "config": cfg.to_dict()}  # fmt: skip
        save_checkpoint(StageDir(d).checkpoint, state)
        return {"complete": True, "step": 0, "final_loss": None}

    return fn


def summarise(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Mean ± std (sample std; None for one seed) of kNN and linear top-1 and pretrain minutes per method."""
    table: dict[str, dict[str, Any]] = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        rs = [r for r in rows if r["method"] == method]
        entry: dict[str, Any] = {"seeds": [r["seed"] for r in rs]}
        for key, values in (
            ("knn_top1", [r["knn"]["top1"] for r in rs]),
            ("linear_top1", [r["linear"]["top1"] for r in rs]),
            ("pretrain_min", [r["pretrain_s"] / 60 for r in rs]),
        ):
            d = describe(values)
            entry[key] = {"mean": d["mean"], "std": d["std"]}
        table[method] = entry
    return table


def timed_stage(stage: StageDir, name: str, fn: StageFn) -> dict[str, Any]:
    """:func:`run_stage` that also records the CPU seconds this process spent on it (``cpu.json``).

    The record gains ``cpu_s``: what the attempt that completed the stage cost (a stage resumed
    after an interruption counts only its last attempt), read back when the stage is skipped.
    """
    c0 = cpu_seconds()
    record = run_stage(stage, name, fn)
    if not stage.cpu.is_file() and runtime.is_main():
        stage.cpu.write_text(json.dumps({"cpu_s": round(cpu_seconds() - c0, 1)}) + "\n")
    return {**record, "cpu_s": json.loads(stage.cpu.read_text())["cpu_s"] if stage.cpu.is_file() else None}


def _prefix(
    cfg: Config, prefix: PipelineLayout
) -> tuple[dict[str, Any], Path, Path | None, list[dict[str, Any]]]:
    """MAE seed ``train.seed`` → part learner → export → oracle maps: (MAE record, learned maps, oracle, records)."""
    mae = timed_stage(prefix.mae, "mae", pretrain_stage(with_masking(cfg, "random")))
    parts = timed_stage(prefix.parts, "parts", parts_stage(parts_config(cfg, prefix.mae.checkpoint)))
    export = timed_stage(prefix.export, "export", export_stage(prefix, cfg))
    oracle = _oracle_maps(cfg, prefix, export["result"]["train_grid"])
    return mae, prefix.part_maps("train"), oracle, [parts, export]


def run_study(cfg: Config, out_dir: str | Path, *, budget: str = "quick", resume: bool = False,
              overwrite: bool = False) -> dict[str, Any]:  # fmt: skip
    """Run every (method, seed) pretraining + kNN/linear evaluation and the floor of every seed.

    Writes ``study.json``, ``study.md`` and ``study.html`` when it starts (no rows yet: the budget is
    on record) and after every run (an interrupted study shows its table so far). ``cfg`` already holds the budget (see :func:`budget_overrides`);
    ``budget`` is recorded.

    Returns:
        The per-method table of :func:`summarise`.
    """
    if "oracle" in cfg.pipeline.study_methods and cfg.data.name not in PART_MASK_SETS:
        raise ConfigError(
            f"pipeline.study_methods lists 'oracle', which needs ground-truth part masks: use data.name "
            f"{' or '.join(PART_MASK_SETS)} (got {cfg.data.name!r}), or drop 'oracle'"
        )
    cfg.train.check_pretraining()
    check_labelled(cfg, "the study (kNN and a linear probe of every run)")
    layout = StudyLayout(prepare_run_dir(out_dir, cfg, resume=resume, overwrite=overwrite, same_length=True))
    prov = provenance()  # the code this process started with, not the tree when it finishes
    if not layout.table(".json").is_file():  # the budget is on record from the start (a resume reads it)
        write_study(layout.root, cfg, budget, [], prov)
    mae, learned, oracle, prefix_records = _prefix(cfg, layout.prefix)
    methods = list(cfg.pipeline.study_methods) + (
        ["oracle"] if oracle and "oracle" not in cfg.pipeline.study_methods else []
    )
    overhead = sum(r["cpu_s"] or 0.0 for r in prefix_records)
    rows: list[dict[str, Any]] = []
    table: dict[str, Any] = {}
    for seed in cfg.pipeline.seeds:
        for method in [FLOOR, *methods]:
            if method == "random" and seed == cfg.train.seed:  # the prefix's MAE is this run
                run, record = layout.prefix.mae, mae
            else:
                run = layout.run(method, seed)
                run_cfg = method_config(cfg, "random" if method == FLOOR else method, seed, learned, oracle)
                stage = _initial_weights(run_cfg) if method == FLOOR else pretrain_stage(run_cfg)
                record = timed_stage(run, f"{method} seed {seed}", stage)
            rows.append(_evaluate_run(cfg, run, method, seed, record))
            table = write_study(layout.root, cfg, budget, rows, prov, overhead_cpu_s=overhead)
    return table


def write_study(
    root: Path,
    cfg: Config,
    budget: str,
    rows: list[dict[str, Any]],
    prov: dict[str, Any] | None = None,
    *,
    overhead_cpu_s: float = 0.0,
) -> dict[str, Any]:
    """Write ``study.json``, ``study.md`` and ``study.html`` for the runs evaluated so far; returns the table.

    ``prov`` is :func:`~semmae.runtime.provenance` taken when the study started (now when None);
    ``overhead_cpu_s`` the CPU seconds of the shared prefix (part learner, export).
    """
    table = summarise(rows)
    cpu = [r.get("pretrain_cpu_s") for r in rows] + [r.get("eval_cpu_s") for r in rows]
    result = {
        "budget": budget, "dataset": cfg.data.name, "limit": cfg.data.limit, "epochs": cfg.train.epochs,
        "images": cfg.data.toy_size if cfg.data.name in PART_MASK_SETS else cfg.data.limit,
        "model": cfg.model.name, "model_overrides": _model_overrides(cfg), "seeds": cfg.pipeline.seeds,
        "methods": list(dict.fromkeys(r["method"] for r in rows)),
        "study_methods": list(cfg.pipeline.study_methods), "provenance": prov or provenance(),
        "cpu_minutes": round((overhead_cpu_s + sum(c for c in cpu if c)) / 60, 2),
        "table": table, "comparison": compare(rows), "runs": rows,
    }  # fmt: skip
    if runtime.is_main():  # under torchrun every rank has the table; one writes it
        with atomic_path(StudyLayout(root).table(".json")) as tmp:
            tmp.write_text(json.dumps(result, indent=2) + "\n")
        write_study_report(root, result)
    return table


def _model_overrides(cfg: Config) -> dict[str, Any]:
    """The model fields the config sets on top of its preset (e.g. a narrower, shallower ViT)."""
    return {k: v for k, v in cfg.to_dict()["model"].items() if k != "name" and v is not None}


def _evaluate_run(
    cfg: Config, run: StageDir, method: str, seed: int, record: dict[str, Any]
) -> dict[str, Any]:
    cache = run.evaluation
    if cache.is_file():
        return json.loads(cache.read_text())
    c0 = cpu_seconds()
    res = evaluate_encoder(cfg, str(run.checkpoint), progress=cfg.train.progress_bar)
    row = {"method": method, "seed": seed, "pretrain_s": record["seconds"], "pretrain_cpu_s": record.get("cpu_s"),
           "eval_cpu_s": round(cpu_seconds() - c0, 1), "knn": res["knn"], "linear": res["linear"],
           "final_loss": record["result"].get("final_loss")}  # fmt: skip
    cache.write_text(json.dumps(row, indent=2) + "\n")
    return row
