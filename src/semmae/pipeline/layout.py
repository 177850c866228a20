"""Where the pipeline and the study keep everything: one layout object instead of path strings.

A pipeline directory holds one run directory per stage (DESIGN.md §4: ``config.yaml``,
``metrics.jsonl``, ``checkpoints/last.pt``, ``images/``) plus the pipeline's own markers in each
(``DONE.json`` when the stage completed, ``PARTIAL.json`` while an interrupted one waits to be
resumed), the exported part maps, the report and its figures. A study directory holds a pipeline
prefix (MAE -> part learner -> export, plus oracle maps), one run directory per (method, seed),
and the study's tables. Nothing here creates or reads files except :meth:`StageDir.record`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STAGES = ("mae", "parts", "export", "semmae", "eval", "report")


@dataclass(frozen=True)
class StageDir:
    """One stage's run directory and the files the pipeline reads or writes in it."""

    path: Path

    @property
    def done(self) -> Path:
        """``DONE.json``: the stage's record, written once it completed."""
        return self.path / "DONE.json"

    @property
    def partial(self) -> Path:
        """``PARTIAL.json``: wall seconds and attempts of the interrupted attempts so far."""
        return self.path / "PARTIAL.json"

    @property
    def checkpoint(self) -> Path:
        """The run's latest checkpoint, ``checkpoints/last.pt``."""
        return self.path / "checkpoints" / "last.pt"

    @property
    def metrics(self) -> Path:
        """The run's ``metrics.jsonl`` (one JSON object per log step)."""
        return self.path / "metrics.jsonl"

    @property
    def images(self) -> Path:
        """The run's ``images/`` folder (PNG grids drawn during training)."""
        return self.path / "images"

    @property
    def cpu(self) -> Path:
        """``cpu.json``: CPU seconds of the attempt that completed the stage (study runs)."""
        return self.path / "cpu.json"

    @property
    def evaluation(self) -> Path:
        """``eval.json``: the evaluation row of a study run, cached so a resumed study skips it."""
        return self.path / "eval.json"

    def record(self) -> dict[str, Any] | None:
        """The stage's ``DONE.json`` content, or None when the stage has not completed."""
        return json.loads(self.done.read_text()) if self.done.is_file() else None


@dataclass(frozen=True)
class PipelineLayout:
    """The directory of ``semmae pipeline``: one :class:`StageDir` per stage, maps, report."""

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
        """The learned part maps of ``split`` written by the export stage (``.npy`` + manifest)."""
        return self.export.path / f"parts_{split}.npy"

    def oracle_maps(self, split: str) -> Path:
        """Part maps from a dataset's ground-truth part masks (the study's ``oracle`` method)."""
        return self.root / f"oracle_{split}.npy"

    @property
    def results(self) -> Path:
        """The evaluation stage's ``results.jsonl`` (one row per encoder)."""
        return self.eval.path / "results.jsonl"

    @property
    def partseg(self) -> Path:
        """Part-discovery metrics of the part learner (``partseg.json`` in its run directory)."""
        return self.parts.path / "partseg.json"

    @property
    def masks_progress(self) -> Path:
        """SemMAE's masks for fixed images over training progress."""
        return self.semmae.images / "masks_progress.png"

    @property
    def figures(self) -> Path:
        """Figures drawn for the report."""
        return self.root / "figures"

    @property
    def report_md(self) -> Path:
        return self.root / "report.md"

    @property
    def report_html(self) -> Path:
        return self.root / "report.html"


@dataclass(frozen=True)
class StudyLayout:
    """The directory of ``semmae study``: the shared prefix, one run per (method, seed), tables."""

    root: Path

    @property
    def prefix(self) -> PipelineLayout:
        """MAE seed 0 -> part learner -> export, laid out like a pipeline directory."""
        return PipelineLayout(self.root / "prefix")

    def run(self, method: str, seed: int) -> StageDir:
        """The run directory of one (method, seed) pretraining."""
        return StageDir(self.root / "runs" / f"{method}_s{seed}")

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    @property
    def json(self) -> Path:
        return self.root / "study.json"

    @property
    def md(self) -> Path:
        return self.root / "study.md"

    @property
    def html(self) -> Path:
        return self.root / "study.html"
