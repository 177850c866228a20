"""``semmae pipeline``: MAE baseline -> part learning -> part maps -> SemMAE -> evaluation -> report.

Each stage writes into its own sub-directory of the pipeline directory and leaves a ``DONE.json``
(with its wall time) when it completes; a stage with ``DONE.json`` is skipped, and an interrupted
stage is resumed from its last checkpoint, so running the same command again continues where it
stopped.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from semmae import runtime
from semmae.config import Config
from semmae.engine.rundir import prepare_run_dir
from semmae.errors import SemmaeError
from semmae.parts.export import export_part_maps
from semmae.train.parts import run_parts_train
from semmae.train.pretrain import run_pretrain

log = logging.getLogger(__name__)

STAGES = ("mae", "parts", "export", "semmae", "eval", "report")


def stage_done(stage_dir: Path) -> dict[str, Any] | None:
    """The stage's ``DONE.json`` content, or None when the stage has not completed."""
    marker = stage_dir / "DONE.json"
    return json.loads(marker.read_text()) if marker.is_file() else None


def run_stage(stage_dir: Path, name: str, fn: Callable[[Path, bool], dict[str, Any]]) -> dict[str, Any]:
    """Run ``fn(stage_dir, resume)`` unless already done; record its wall time in ``DONE.json``.

    ``resume`` is True when an earlier attempt left a checkpoint behind; a stage directory that
    holds no checkpoint is started afresh. An attempt that fails or is interrupted leaves its
    time in ``PARTIAL.json``, so a resumed stage's ``seconds`` counts every attempt it built on
    (a process killed with SIGKILL cannot record its time).
    """
    done = stage_done(stage_dir)
    if done is not None:
        log.info("[%s] already complete (%.0fs), skipped", name, done["seconds"])
        return done
    resume = any(stage_dir.glob("checkpoints/last.pt"))
    if stage_dir.exists() and not resume and runtime.is_main():
        shutil.rmtree(stage_dir)  # a stage that never reached a checkpoint has nothing worth keeping
    runtime.barrier()
    partial = stage_dir / "PARTIAL.json"
    earlier = (
        json.loads(partial.read_text()) if resume and partial.is_file() else {"seconds": 0.0, "attempts": 0}
    )
    log.info("[%s] %s", name, "resuming" if resume else "starting")
    t0 = time.perf_counter()
    try:
        result = fn(stage_dir, resume)
    except BaseException:
        if runtime.is_main() and stage_dir.is_dir():
            spent = {
                "seconds": earlier["seconds"] + time.perf_counter() - t0,
                "attempts": earlier["attempts"] + 1,
            }
            partial.write_text(json.dumps(spent) + "\n")
        raise
    seconds = earlier["seconds"] + time.perf_counter() - t0
    record = {
        "stage": name,
        "seconds": round(seconds, 1),
        "attempts": earlier["attempts"] + 1,
        "result": result,
    }
    if runtime.is_main():
        stage_dir.mkdir(parents=True, exist_ok=True)
        (stage_dir / "DONE.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
        partial.unlink(missing_ok=True)
    return record


def mae_config(cfg: Config) -> Config:
    """The baseline: the same recipe with random masking."""
    out = copy.deepcopy(cfg)
    out.masking.name = "random"
    out.masking.parts = None
    return out


def semmae_config(cfg: Config, part_maps: Path) -> Config:
    """SemMAE: the same recipe, semantic masking from ``part_maps``."""
    out = copy.deepcopy(cfg)
    out.masking.name = "semantic"
    out.masking.parts = str(part_maps)
    return out


def parts_config(cfg: Config, backbone: Path) -> Config:
    """Stage 1 on the MAE baseline's encoder."""
    out = copy.deepcopy(cfg)
    out.parts.backbone = str(backbone)
    return out


def _pretrain(cfg: Config) -> Callable[[Path, bool], dict[str, Any]]:
    def fn(d: Path, resume: bool) -> dict[str, Any]:
        summary = run_pretrain(cfg, d, resume=resume)
        if not summary.get("complete"):
            raise SemmaeError(f"stage stopped at step {summary['step']}; run the pipeline again to resume it")
        return summary

    return fn


def _parts_train(cfg: Config) -> Callable[[Path, bool], dict[str, Any]]:
    def fn(d: Path, resume: bool) -> dict[str, Any]:
        summary = run_parts_train(cfg, d, resume=resume, overwrite=False)
        if not summary.get("complete"):
            raise SemmaeError(f"stage stopped at step {summary['step']}; run the pipeline again to resume it")
        return summary

    return fn


def _export(parts_dir: Path, cfg: Config) -> Callable[[Path, bool], dict[str, Any]]:
    def fn(d: Path, resume: bool) -> dict[str, Any]:
        d.mkdir(parents=True, exist_ok=True)
        out = {}
        for split in ("train", "test"):
            manifest = export_part_maps(parts_dir, split, d / f"parts_{split}.npy", batch_size=cfg.eval.batch_size,
                                        device=cfg.train.device, progress=cfg.train.progress_bar)  # fmt: skip
            out[split] = str(d / f"parts_{split}.npy")
            out[f"{split}_grid"] = list(manifest.grid)
        return out

    return fn


def _evaluate(cfg: Config, encoders: dict[str, str]) -> Callable[[Path, bool], dict[str, Any]]:
    def fn(d: Path, resume: bool) -> dict[str, Any]:
        from semmae.pipeline.evaluate import evaluate_encoders

        d.mkdir(parents=True, exist_ok=True)
        return evaluate_encoders(cfg, encoders, d / "results.jsonl")

    return fn


def run_pipeline(
    cfg: Config, out_dir: str | Path, *, resume: bool = False, overwrite: bool = False
) -> dict[str, Any]:
    """Run every stage in ``cfg.pipeline.stages`` (see module docstring) into ``out_dir``.

    Returns:
        Per-stage records (``DONE.json`` contents) and the report path.
    """
    root = prepare_run_dir(out_dir, cfg, resume=resume, overwrite=overwrite)
    wanted = set(cfg.pipeline.stages)
    records: dict[str, Any] = {}
    mae_ckpt = root / "mae" / "checkpoints" / "last.pt"
    maps = root / "export" / "parts_train.npy"
    plan: list[tuple[str, Callable[[Path, bool], dict[str, Any]]]] = [
        ("mae", _pretrain(mae_config(cfg))),
        ("parts", _parts_train(parts_config(cfg, mae_ckpt))),
        ("export", _export(root / "parts", cfg)),
        ("semmae", _pretrain(semmae_config(cfg, maps))),
        ("eval", _evaluate(cfg, _encoders(root, cfg))),
    ]
    for name, fn in plan:
        if name in wanted:
            records[name] = run_stage(root / name, name, fn)
    if "report" in wanted and runtime.is_main():
        from semmae.pipeline.report import write_report

        records["report"] = {"path": str(write_report(root, cfg))}
    return records


def _encoders(root: Path, cfg: Config) -> dict[str, str]:
    return {
        "MAE (random masking)": str(root / "mae" / "checkpoints" / "last.pt"),
        "SemMAE (semantic masking)": str(root / "semmae" / "checkpoints" / "last.pt"),
        "random init (floor)": f"random:{cfg.model.name}",
    }
