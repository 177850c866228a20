"""``semmae study``: masking strategies compared under one recipe, over seeds.

Methods (``pipeline.study_methods``): ``random`` (MAE), ``block`` (BEiT-style), ``semantic``
(SemMAE, power schedule with ``masking.gamma``), ``intra`` (λ ≡ 1), ``inter`` (λ ≡ 0),
``reversed`` (λ = p^γ), and ``oracle`` (semantic with ground-truth parts; toy-parts only, added
automatically there). Learned parts come from one shared prefix (MAE seed 0 → part learner →
export) so every semantic variant masks with the same maps; the prefix MAE is also ``random``'s
seed-0 run.
"""

from __future__ import annotations

import copy
import json
import logging
import statistics
from pathlib import Path
from typing import Any

from semmae.config import Config
from semmae.engine.rundir import prepare_run_dir
from semmae.errors import ConfigError
from semmae.pipeline.stages import _export, _parts_train, _pretrain, mae_config, parts_config, run_stage
from semmae.runtime import provenance

log = logging.getLogger(__name__)

# The quick budget: a smoke run of the whole study in minutes.
QUICK = [
    "data.limit=1500", "train.epochs=1", "parts.epochs=1", "eval.linear_epochs=10",
    "pipeline.seeds=[0]", "train.knn_every_epochs=-1", "train.image_every_epochs=0",
]  # fmt: skip
SCHEDULES = {"semantic": None, "intra": "intra", "inter": "inter", "reversed": "reversed", "oracle": None}


def budget_overrides(budget: str) -> list[str]:
    """Overrides applied before the user's: none for ``full`` (the config as written), :data:`QUICK` for ``quick``."""
    if budget not in ("quick", "full"):
        raise ConfigError(f"study budget must be quick or full, got {budget!r}")
    return list(QUICK) if budget == "quick" else []


def method_config(cfg: Config, method: str, seed: int, learned: Path, oracle: Path | None) -> Config:
    """The recipe of one (method, seed) run: only masking and seed differ between runs."""
    out = copy.deepcopy(cfg)
    out.train.seed = seed
    if method in ("random", "block"):
        out.masking.name, out.masking.parts = method, None
        return out
    out.masking.name = "semantic"
    out.masking.parts = str(oracle if method == "oracle" else learned)
    if SCHEDULES.get(method):
        out.masking.schedule = SCHEDULES[method]  # type: ignore[assignment]
    return out


def _oracle_maps(cfg: Config, root: Path, grid: list[int]) -> Path | None:
    if cfg.data.name != "toy_parts":
        return None
    from semmae.data import build_dataset
    from semmae.data.oracle import part_maps_from_masks
    from semmae.data.partmaps import write_part_maps

    path = root / "prefix" / "oracle_train.npy"
    if not path.is_file():
        ds = build_dataset(cfg.data, "train")
        labels = part_maps_from_masks(ds, (grid[0], grid[1]))
        write_part_maps(path, labels, dataset=ds.name, split="train", image_size=ds.image_size,
                        num_parts=int(ds.num_gt_parts), fingerprint=ds.fingerprint(), source="oracle")  # fmt: skip
    return path


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
            entry[key] = {
                "mean": statistics.fmean(values),
                "std": statistics.stdev(values) if len(values) > 1 else None,
            }
        table[method] = entry
    return table


def run_study(cfg: Config, out_dir: str | Path, *, budget: str = "quick", resume: bool = False,
              overwrite: bool = False) -> dict[str, Any]:  # fmt: skip
    """Run every (method, seed) pretraining + kNN/linear evaluation; write ``study.json`` and ``study.md``.

    ``cfg`` already holds the budget (see :func:`budget_overrides`); ``budget`` is recorded.
    """
    from semmae.pipeline.evaluate import evaluate_encoder

    root = prepare_run_dir(out_dir, cfg, resume=resume, overwrite=overwrite)
    prov = provenance()  # the code this process started with, not the tree when it finishes
    prefix = root / "prefix"
    mae = run_stage(prefix / "mae", "mae", _pretrain(mae_config(cfg)))
    run_stage(
        prefix / "parts", "parts", _parts_train(parts_config(cfg, prefix / "mae" / "checkpoints" / "last.pt"))
    )
    export = run_stage(prefix / "export", "export", _export(prefix / "parts", cfg))
    learned = prefix / "export" / "parts_train.npy"
    oracle = _oracle_maps(cfg, root, export["result"]["train_grid"])
    methods = list(cfg.pipeline.study_methods) + (
        ["oracle"] if oracle and "oracle" not in cfg.pipeline.study_methods else []
    )
    rows: list[dict[str, Any]] = []
    table: dict[str, Any] = {}
    for seed in cfg.pipeline.seeds:
        for method in methods:
            if method == "random" and seed == 0 and mae_config(cfg).train.seed == 0:
                run_dir, record = prefix / "mae", mae
            else:
                run_dir = root / "runs" / f"{method}_s{seed}"
                record = run_stage(
                    run_dir,
                    f"{method} seed {seed}",
                    _pretrain(method_config(cfg, method, seed, learned, oracle)),
                )
            rows.append(_evaluate_run(cfg, run_dir, method, seed, record, evaluate_encoder))
            # After every run, so an interrupted study shows its table so far.
            table = write_study(root, cfg, budget, rows, prov)
    return table


def write_study(
    root: Path, cfg: Config, budget: str, rows: list[dict[str, Any]], prov: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Write ``study.json`` and ``study.md`` for the runs evaluated so far; returns the table.

    ``prov`` is :func:`~semmae.runtime.provenance` taken when the study started (now when None).
    """
    table = summarise(rows)
    result = {
        "budget": budget, "dataset": cfg.data.name, "limit": cfg.data.limit, "epochs": cfg.train.epochs,
        "model": cfg.model.name, "seeds": cfg.pipeline.seeds, "provenance": prov or provenance(),
        "table": table, "runs": rows,
    }  # fmt: skip
    (root / "study.json").write_text(json.dumps(result, indent=2) + "\n")
    (root / "study.md").write_text(study_markdown(result))
    return table


def _evaluate_run(
    cfg: Config, run_dir: Path, method: str, seed: int, record: dict[str, Any], evaluate: Any
) -> dict[str, Any]:
    cache = run_dir / "eval.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    res = evaluate(cfg, str(run_dir / "checkpoints" / "last.pt"), progress=cfg.train.progress_bar)
    row = {"method": method, "seed": seed, "pretrain_s": record["seconds"], "knn": res["knn"], "linear": res["linear"],
           "final_loss": record["result"].get("final_loss")}  # fmt: skip
    cache.write_text(json.dumps(row, indent=2) + "\n")
    return row


def study_markdown(result: dict[str, Any]) -> str:
    """The study table as Markdown (mean ± std over seeds)."""
    lines = [
        f"# Masking study: {result['dataset']} ({result['budget']} budget)\n",
        f"Model {result['model']}, {result['epochs']} epochs, data.limit {result['limit']}, seeds {result['seeds']}.\n",
        "| method | kNN top-1 | linear top-1 | pretrain min |",
        "|---|---|---|---|",
    ]
    for method, e in result["table"].items():
        cell = [
            f"{e[k]['mean']:.2f}" + ("" if e[k]["std"] is None else f" ± {e[k]['std']:.2f}")
            for k in ("knn_top1", "linear_top1", "pretrain_min")
        ]
        lines.append(f"| {method} | " + " | ".join(cell) + " |")
    return "\n".join(lines) + "\n"
