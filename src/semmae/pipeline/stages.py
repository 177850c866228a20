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
from semmae.data.datasets import split_labels
from semmae.engine.rundir import prepare_run_dir
from semmae.engine.runfiles import first_foreign_entry
from semmae.errors import ConfigError, RunDirError, StageStopped
from semmae.eval.features import require_labels
from semmae.models.checkpoint import file_hash
from semmae.names import MaskingName
from semmae.parts.export import export_part_maps
from semmae.pipeline.evaluate import evaluate_encoders
from semmae.pipeline.layout import STAGES, PipelineLayout, StageDir, read_record
from semmae.pipeline.report import write_report
from semmae.train.parts import run_parts_train
from semmae.train.pretrain import run_pretrain

log = logging.getLogger(__name__)

# The encoders the evaluation stage compares, by id (a stage's id, or ``floor``), with the labels
# its results are stored under on disk.
ENCODERS = {
    "mae": "MAE (random masking)",
    "semmae": "SemMAE (semantic masking)",
    "floor": "random init (floor)",
}
StageFn = Callable[[Path, bool], dict[str, Any]]


def _refuse_foreign(path: Path) -> None:
    """Before a stage folder without a checkpoint is cleared: it must hold only semmae's files.

    Raises:
        RunDirError: ``path`` is a link, or holds an entry semmae did not write.
    """
    foreign = path if path.is_symlink() or not path.is_dir() else first_foreign_entry(path)
    if foreign is not None:
        raise RunDirError(
            f"stage folder {str(path)!r} is to be started again but holds {str(foreign)!r}, which semmae "
            "did not write; move it out, then run the same command again"
        )


def run_stage(stage: StageDir, name: str, fn: StageFn) -> dict[str, Any]:
    """Run ``fn(stage directory, resume)`` unless already done; record its wall time in ``DONE.json``.

    ``resume`` is True when an earlier attempt left a checkpoint behind; a stage directory that
    holds no checkpoint is started afresh. An attempt that fails or is interrupted leaves its
    time in ``PARTIAL.json``, so a resumed stage's ``seconds`` counts every attempt it built on
    (a process killed with SIGKILL cannot record its time).
    """
    done = stage.record()
    if done is not None:
        _check_checkpoint_unchanged(stage, name, done)
        log.info("[%s] already complete (%.0fs), skipped", name, done["seconds"])
        return done
    resume = stage.checkpoint.exists()
    if (stage.path.exists() or stage.path.is_symlink()) and not resume and runtime.is_main():
        _refuse_foreign(stage.path)
        shutil.rmtree(stage.path)  # a stage that never reached a checkpoint has nothing worth keeping
    runtime.barrier()
    earlier = {"seconds": 0.0, "attempts": 0}
    if resume and stage.partial.is_file():
        earlier = read_record(stage.partial)
    log.info("[%s] %s", name, "resuming" if resume else "starting")
    t0 = time.perf_counter()
    try:
        result = fn(stage.path, resume)
    except BaseException:
        if runtime.is_main() and stage.path.is_dir():
            spent = {
                "seconds": earlier["seconds"] + time.perf_counter() - t0,
                "attempts": earlier["attempts"] + 1,
            }
            stage.partial.write_text(json.dumps(spent) + "\n")
        raise
    seconds = earlier["seconds"] + time.perf_counter() - t0
    record = {
        "stage": name,
        "seconds": round(seconds, 1),
        "attempts": earlier["attempts"] + 1,
        "result": result,
    }
    if stage.checkpoint.is_file():  # what later stages and the report build on
        record["checkpoint_sha256"] = file_hash(stage.checkpoint)
    if runtime.is_main():
        stage.path.mkdir(parents=True, exist_ok=True)
        stage.done.write_text(json.dumps(record, indent=2, default=str) + "\n")
        stage.partial.unlink(missing_ok=True)
    return record


def _check_checkpoint_unchanged(stage: StageDir, name: str, done: dict[str, Any]) -> None:
    """A completed stage's ``checkpoints/last.pt`` is still the one it finished with.

    Later stages read it (the part learner the MAE's encoder, the evaluation both encoders) and
    the report states what the stage recorded, so a replaced, retrained or lost checkpoint would
    mix two runs silently.

    Raises:
        RunDirError: the checkpoint is gone or is not the file ``DONE.json`` records.
    """
    recorded = done.get("checkpoint_sha256")
    if recorded is None:  # a stage without a checkpoint (export, eval), or a record from before
        return
    path = stage.checkpoint
    if not path.is_file() or file_hash(path) != recorded:
        state = "is gone" if not path.is_file() else "is not the checkpoint the stage finished with"
        raise RunDirError(
            f"the {name!r} stage is complete but {path} {state} (its DONE.json records a sha256 "
            f"starting {recorded}): put that checkpoint back, or delete {stage.done} and the later "
            "stages' DONE.json to run them again"
        )


def with_masking(cfg: Config, name: MaskingName, part_maps: Path | None = None) -> Config:
    """The same recipe with masking ``name`` (from ``part_maps`` when given): the MAE baseline is
    ``random``, SemMAE ``semantic`` with the exported maps."""
    out = copy.deepcopy(cfg)
    out.masking.name = name
    out.masking.parts = None if part_maps is None else str(part_maps)
    return out


def parts_config(cfg: Config, backbone: Path) -> Config:
    """Stage 1 on the MAE baseline's encoder."""
    out = copy.deepcopy(cfg)
    out.parts.backbone = str(backbone)
    return out


def _until_complete(train: StageFn) -> StageFn:
    """A training stage: done when the run completed; an interrupted run raises (resumed next time)."""

    def fn(d: Path, resume: bool) -> dict[str, Any]:
        summary = train(d, resume)
        if not summary.get("complete"):
            raise StageStopped(summary["step"], summary.get("interrupted") or -1)
        return summary

    return fn


def pretrain_stage(cfg: Config) -> StageFn:
    """A stage pretraining with ``cfg``."""
    return _until_complete(lambda d, resume: run_pretrain(cfg, d, resume=resume))


def parts_stage(cfg: Config) -> StageFn:
    """A stage training the part learner with ``cfg``."""
    return _until_complete(lambda d, resume: run_parts_train(cfg, d, resume=resume, overwrite=False))


def export_stage(layout: PipelineLayout, cfg: Config) -> StageFn:
    """A stage labelling both splits with ``layout``'s part learner into ``layout.part_maps(split)``."""

    def fn(d: Path, resume: bool) -> dict[str, Any]:
        out = {}
        for split in ("train", "test"):
            maps = layout.part_maps(split)
            maps.parent.mkdir(parents=True, exist_ok=True)
            manifest = export_part_maps(layout.parts.path, split, maps, batch_size=cfg.eval.batch_size,
                                        device=cfg.train.device, progress=cfg.train.progress_bar)  # fmt: skip
            out[split] = str(maps)
            out[f"{split}_grid"] = list(manifest.grid)
        return out

    return fn


def _evaluate(cfg: Config, layout: PipelineLayout) -> StageFn:
    """A stage evaluating every encoder of :data:`ENCODERS` into ``layout.results``."""
    specs = {
        "mae": layout.mae.checkpoint,
        "semmae": layout.semmae.checkpoint,
        "floor": f"random:{cfg.model.name}",
    }

    def fn(d: Path, resume: bool) -> dict[str, Any]:
        layout.results.parent.mkdir(parents=True, exist_ok=True)
        return evaluate_encoders(cfg, {label: str(specs[e]) for e, label in ENCODERS.items()}, layout.results)

    return fn


def by_encoder(eval_record: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """The evaluation stage's result rows keyed by encoder id (those evaluated), in :data:`ENCODERS` order."""
    result = (eval_record or {}).get("result", {})
    return {e: result[label] for e, label in ENCODERS.items() if label in result}


# What each stage reads, by the stage that writes it.
NEEDS: dict[str, tuple[str, ...]] = {
    "parts": ("mae",), "export": ("parts",), "semmae": ("export",), "eval": ("mae", "semmae"),
}  # fmt: skip


def _check_inputs_of(wanted: set[str], layout: PipelineLayout, resume: bool) -> None:
    """Before any work: every stage to run has its inputs, from a stage that runs first or one that
    a resumed pipeline has completed.

    Raises:
        ConfigError: a stage needs one that neither runs nor has run.
    """
    for name in STAGES:
        for need in NEEDS.get(name, ()) if name in wanted else ():
            if need not in wanted and not (resume and layout.stage(need).record() is not None):
                raise ConfigError(
                    f"pipeline.stages lists {name!r}, which needs the {need!r} stage's output, but {need!r} "
                    f"neither runs nor has completed in this --out: add {need!r} to pipeline.stages"
                )


def check_labelled(cfg: Config, needed_by: str, way_out: str = "") -> None:
    """Before any training: both splits of ``cfg.data`` have class labels, of two classes or more.

    The kNN and linear probes of ``needed_by`` need them; found missing only after pretraining, the
    refusal would come hours late. The labels come from :func:`split_labels` (an image folder's
    listing; no file is read).

    Raises:
        DataError: a split is unlabelled or holds one class (see :func:`require_labels`).
    """
    for split in ("train", "test"):
        classes, targets = split_labels(cfg.data, split)
        require_labels(cfg, split, classes, targets, needed_by, way_out)


def run_pipeline(
    cfg: Config, out_dir: str | Path, *, resume: bool = False, overwrite: bool = False
) -> dict[str, Any]:
    """Run every stage in ``cfg.pipeline.stages`` (see module docstring) into ``out_dir``.

    The report is written from the records of this run's stages and of the stages an earlier
    run completed (their ``DONE.json``).

    Returns:
        Per-stage records (``DONE.json`` contents) of the stages run, and the report path.
    """
    wanted, before = set(cfg.pipeline.stages), PipelineLayout(Path(out_dir))  # nothing is written yet
    _check_inputs_of(wanted, before, resume)
    if wanted & {"mae", "semmae"}:
        cfg.train.check_pretraining()
    if "eval" in wanted and not (resume and before.eval.record() is not None):
        way_out = "; or leave 'eval' out of pipeline.stages to train without evaluating"
        check_labelled(cfg, "the pipeline's 'eval' stage", way_out)
    layout = PipelineLayout(
        prepare_run_dir(out_dir, cfg, resume=resume, overwrite=overwrite, same_length=True)
    )
    plan: dict[str, StageFn] = {
        "mae": pretrain_stage(with_masking(cfg, "random")),
        "parts": parts_stage(parts_config(cfg, layout.mae.checkpoint)),
        "export": export_stage(layout, cfg),
        "semmae": pretrain_stage(with_masking(cfg, "semantic", layout.part_maps("train"))),
        "eval": _evaluate(cfg, layout),
    }
    records: dict[str, Any] = {}
    held: dict[str, dict[str, Any]] = {}  # every completed stage's record, in stage order
    for name in STAGES[:-1]:
        if name in wanted:
            records[name] = held[name] = run_stage(layout.stage(name), name, plan[name])
        elif (done := layout.stage(name).record()) is not None:
            _check_checkpoint_unchanged(layout.stage(name), name, done)  # later stages build on it
            held[name] = done
    if "report" in wanted and runtime.is_main():
        path = write_report(layout, cfg, held, by_encoder(held.get("eval")))
        records["report"] = {"path": str(path)}
    return records
