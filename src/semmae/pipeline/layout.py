"""Where the pipeline and the study keep everything: one layout object instead of path strings.

A pipeline directory holds one run directory per stage (DESIGN.md §4: ``config.yaml``,
``metrics.jsonl``, ``checkpoints/last.pt``, ``images/``) with the pipeline's markers in it, the
exported part maps, and the report with its figures. A study directory holds a pipeline prefix
(MAE -> part learner -> export, plus oracle maps), one run directory per (method, seed), and the
study's tables and plots. Nothing here creates files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

from semmae.errors import RunDirError
from semmae.names import PipelineStage

STAGES = get_args(PipelineStage)  # in the order they run


@dataclass(frozen=True)
class StageDir:
    """One stage's run directory and the files the pipeline keeps in it.

    ``done`` (``DONE.json``) holds the stage's record once it completed; ``partial``
    (``PARTIAL.json``) the wall seconds and attempts of the interrupted attempts so far; ``cpu``
    and ``evaluation`` (``cpu.json``, ``eval.json``) a study run's CPU seconds and evaluation row.
    """

    path: Path

    @property
    def done(self) -> Path:
        return self.path / "DONE.json"

    @property
    def partial(self) -> Path:
        return self.path / "PARTIAL.json"

    @property
    def checkpoint(self) -> Path:
        return self.path / "checkpoints" / "last.pt"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def images(self) -> Path:
        return self.path / "images"

    @property
    def cpu(self) -> Path:
        return self.path / "cpu.json"

    @property
    def evaluation(self) -> Path:
        return self.path / "eval.json"

    def record(self) -> dict[str, Any] | None:
        """The stage's ``DONE.json`` content, or None when the stage has not completed."""
        return read_record(self.done) if self.done.is_file() else None


def read_record(path: Path) -> dict[str, Any]:
    """A stage's JSON record (``DONE.json``, ``PARTIAL.json``).

    Raises:
        RunDirError: the file is not a JSON object with a number of ``seconds`` and a whole number
            of ``attempts`` (damaged): say how to run the stage again.
    """
    try:
        record = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError):
        record = None
    number = (int, float)
    if (
        not isinstance(record, dict)
        or not isinstance(record.get("seconds"), number)
        or isinstance(record.get("seconds"), bool)
        or not isinstance(record.get("attempts", 1), int)
    ):
        raise RunDirError(
            f"stage record {str(path)!r} is damaged (not a stage's JSON record); delete it (or the stage folder) "
            "and run again to redo that stage"
        )
    return record


@dataclass(frozen=True)
class PipelineLayout:
    """The directory of ``semmae pipeline`` (or a study's prefix): stages, part maps, report."""

    root: Path

    def stage(self, name: str) -> StageDir:
        """The run directory of stage ``name`` (one of :data:`STAGES` but ``report``)."""
        if name not in STAGES[:-1]:
            raise ValueError(f"unknown pipeline stage {name!r}; use one of {', '.join(STAGES[:-1])}")
        return StageDir(self.root / name)

    @property
    def mae(self) -> StageDir:
        return self.stage("mae")

    @property
    def parts(self) -> StageDir:
        return self.stage("parts")

    @property
    def export(self) -> StageDir:
        return self.stage("export")

    @property
    def semmae(self) -> StageDir:
        return self.stage("semmae")

    @property
    def eval(self) -> StageDir:
        return self.stage("eval")

    def part_maps(self, split: str) -> Path:
        """The learned part maps of ``split`` (``.npy`` + manifest) written by the export stage."""
        return self.export.path / f"parts_{split}.npy"

    def oracle_maps(self, split: str) -> Path:
        """Part maps from the dataset's ground-truth part masks (the study's ``oracle`` method)."""
        return self.root / f"oracle_{split}.npy"

    @property
    def results(self) -> Path:
        """One row per evaluated encoder, appended as each finishes."""
        return self.eval.path / "results.jsonl"

    @property
    def partseg(self) -> Path:
        """The part learner's part-discovery metrics."""
        return self.parts.path / "partseg.json"

    @property
    def figures(self) -> Path:
        return self.root / "figures"

    @property
    def report(self) -> Path:
        """``report.md`` (``report.html`` beside it)."""
        return self.root / "report.md"


@dataclass(frozen=True)
class StudyLayout:
    """The directory of ``semmae study``: the shared prefix, one run per (method, seed), tables."""

    root: Path

    @property
    def prefix(self) -> PipelineLayout:
        return PipelineLayout(self.root / "prefix")

    def run(self, method: str, seed: int) -> StageDir:
        return StageDir(self.root / "runs" / f"{method}_s{seed}")

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    def table(self, suffix: str) -> Path:
        """``study.json`` or ``study.md`` (``study.html`` beside it)."""
        return self.root / f"study{suffix}"

    def recorded_budget(self) -> str | None:
        """The ``--budget`` this study recorded in ``study.json``; None where it has recorded none."""
        try:
            budget = json.loads(self.table(".json").read_text(encoding="utf-8")).get("budget")
        except (OSError, ValueError, AttributeError):  # no file yet, or not one of ours
            return None
        return budget if isinstance(budget, str) else None
