"""``report.md`` and a self-contained ``report.html`` for a pipeline directory.

The report is drawn from what the pipeline holds: the stage records keyed by stage id and the
evaluation rows keyed by encoder id (``mae``, ``semmae``: the stages that trained them; ``floor``);
the rest (curves, pictures) comes from the files the stages wrote, found through the layout.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from semmae.config import Config
from semmae.engine.logging import read_metrics
from semmae.pipeline.document import Document, count
from semmae.pipeline.layout import PipelineLayout
from semmae.runtime import provenance
from semmae.viz.parts import render_part_map_file
from semmae.viz.plots import plot_curves


def _latest(folder: Path, pattern: str) -> Path | None:
    return max(folder.glob(pattern), default=None)


def _fmt(value: Any, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def results_rows(results: dict[str, Any], times: dict[str, float]) -> list[list[str]]:
    """One table row per encoder: kNN top1/top5, linear top1 (lr), pretraining minutes.

    Args:
        results: evaluation rows (each with its display ``name``) keyed by encoder id.
        times: wall seconds keyed by stage id; an encoder trained by a stage shares its id.
    """
    rows = []
    for encoder, r in results.items():
        seconds = times.get(encoder)
        rows.append([
            r["name"], _fmt(r["knn"]["top1"]), _fmt(r["knn"].get("top5")), _fmt(r["linear"]["top1"]),
            f"{r['linear']['lr']:g}", _fmt(seconds / 60 if seconds else None, 1),
        ])  # fmt: skip
    return rows


def reading(results: dict[str, Any]) -> str:
    """A plain reading of the numbers (no claims beyond them); ``results`` keyed by encoder id."""
    mae, sem, floor = results.get("mae"), results.get("semmae"), results.get("floor")
    if not (mae and sem):
        return "The evaluation did not cover both encoders, so there is nothing to compare."
    dk = sem["knn"]["top1"] - mae["knn"]["top1"]
    dl = sem["linear"]["top1"] - mae["linear"]["top1"]
    verdict = "higher" if dk > 0 and dl > 0 else "lower" if dk < 0 and dl < 0 else "mixed"
    text = (
        f"SemMAE's encoder scores {dk:+.2f} points kNN and {dl:+.2f} points linear-probe top-1 against the MAE "
        f"baseline trained with the same recipe and budget (result: {verdict}). "
    )
    if floor:
        gk = mae["knn"]["top1"] - floor["knn"]["top1"]
        gl = mae["linear"]["top1"] - floor["linear"]["top1"]
        text += (
            f"Against a random-init encoder of the same shape, MAE pretraining is worth {gk:+.2f} kNN and "
            f"{gl:+.2f} linear-probe points"
        )
        text += (
            "; a linear probe on random ViT features is a strong floor on small grey images, so a short "
            "schedule may not clear it. "
            if gl <= 0
            else ". "
        )
    text += (
        "This is one seed on a short schedule: differences of a point or two are within run-to-run noise at this "
        "budget (see `semmae study` for means and standard deviations over seeds). The paper's gains come from "
        "800-epoch ImageNet schedules with part maps learned on an iBOT backbone; here the part learner sits on a "
        "briefly trained MAE, so its parts are coarser and the masking signal is weaker."
    )
    return text


def _settings(cfg: Config, root: Path) -> list[list[str]]:
    d, t, m, p = cfg.data, cfg.train, cfg.masking, cfg.parts
    prov = provenance()
    return [
        ["dataset", f"{d.name} (limit {d.limit or 'none'}), {d.image_size}px × {d.in_chans}ch"],
        ["model", f"{cfg.model.name}"],
        [
            "pretraining",
            f"{count(t.epochs, 'epoch')}, batch {t.batch_size}×{t.accum_steps}, blr {t.base_lr:g}, {t.precision}",
        ],
        [
            "masking",
            f"ratio {m.ratio}, SemMAE schedule {m.schedule} (γ={m.gamma:g}), λ stepped per {m.step_per}",
        ],
        ["parts", f"K={p.num_parts}, {count(p.epochs, 'epoch')}, global token {p.global_token}, τ={p.tau:g}"],
        ["hardware", f"{prov['device']}, torch {prov['torch']}"],
        ["code", f"semmae {prov['semmae']}" + (f", git {prov['git']}" if prov["git"] else "")],
        ["directory", f"`{root}`"],
    ]


def write_report(
    layout: PipelineLayout,
    cfg: Config,
    records: dict[str, dict[str, Any]],
    results: dict[str, dict[str, Any]],
) -> Path:
    """Write ``report.md`` and ``report.html``; returns the .md path.

    Args:
        layout: the pipeline directory.
        cfg: the pipeline's config.
        records: ``DONE.json`` records of the completed stages, keyed by stage id, in stage order.
        results: evaluation rows keyed by encoder id (see module docstring), in table order.
    """
    times = {stage: record["seconds"] for stage, record in records.items()}
    doc = Document(layout.root)
    doc.heading("Settings")
    doc.table(["", "value"], _settings(cfg, layout.root))
    doc.heading("Results")
    protocols = sorted({r["linear"].get("protocol", "fast") for r in results.values()}) or ["fast"]
    header = ["encoder", "kNN top-1", "kNN top-5", f"linear top-1 ({'/'.join(protocols)} probe)", "probe lr"]
    doc.table([*header, "pretrain min"], results_rows(results, times))
    doc.para(reading(results))
    doc.table(
        ["stage", "minutes"], [[s, _fmt(v / 60 if v else None, 1)] for s, v in times.items() if v is not None]
    )
    _curves(doc, layout)
    _parts_section(doc, layout, cfg)
    doc.heading("Masks over training progress")
    doc.image(layout.semmae.images / "masks_progress.png",
              "SemMAE masks for the same images at progress 0, .25, .5, .75, 1 (dark = hidden, colours = parts)")  # fmt: skip
    doc.heading("Reconstructions")
    for stage, label in ((layout.mae, "MAE"), (layout.semmae, "SemMAE")):
        doc.image(_latest(stage.images, "recon_epoch_*.png"),
                  f"{label}: original | masked | reconstruction | reconstruction + visible")  # fmt: skip
    return doc.write(layout.report, "SemMAE pipeline report")


def _curves(doc: Document, layout: PipelineLayout) -> None:
    runs = {"MAE": read_metrics(layout.mae.metrics), "SemMAE": read_metrics(layout.semmae.metrics)}
    fig = layout.figures
    doc.heading("Training curves")
    doc.image(
        plot_curves(runs, "loss", fig / "loss.png", title="pretraining loss (hidden patches)"),
        "pretraining loss",
    )
    doc.image(plot_curves(runs, "knn_top1", fig / "knn.png", x="epoch", title="kNN monitor", ylabel="top-1 %"),
              "kNN monitor (held-out subset) per epoch")  # fmt: skip
    doc.image(plot_curves({"SemMAE": runs["SemMAE"]}, "lambda", fig / "lambda.png", title="λ: 1 intra-part → 0 inter-part"),
              "SemMAE's λ schedule as trained")  # fmt: skip
    parts = {"part learner": read_metrics(layout.parts.metrics)}
    doc.image(
        plot_curves(parts, "loss", fig / "parts_loss.png", title="part learner loss"), "part learner loss"
    )


def _parts_section(doc: Document, layout: PipelineLayout, cfg: Config) -> None:
    doc.heading("Learned parts")
    if layout.partseg.is_file():
        m = json.loads(layout.partseg.read_text())
        rows = [[name, _fmt(v.get("nmi"), 3), _fmt(v.get("ari"), 3), _fmt(v.get("miou"), 3), str(v.get("empty_parts"))]
                for name, v in m.items() if isinstance(v, dict) and "nmi" in v]  # fmt: skip
        doc.table(["method", "NMI", "ARI", "mIoU", "empty parts"], rows)
    maps = layout.part_maps("test")
    if maps.is_file():
        out = render_part_map_file(maps, cfg.data, 16, layout.figures / "part_maps_test.png")
        doc.image(out, "exported part maps on test images (one colour per part)")
    doc.image(_latest(layout.parts.images, "*.png"), "part learner: input | part overlay | reconstruction")
