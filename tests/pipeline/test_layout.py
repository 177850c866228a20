"""The run-directory layout, the report's join by id, and the import graph of data/pipeline/viz."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from semmae import config as config_lib
from semmae.pipeline.layout import STAGES, PipelineLayout, StageDir, StudyLayout
from semmae.pipeline.report import write_report
from semmae.pipeline.stages import ENCODERS, by_encoder, run_stage

SRC = Path(__file__).parents[2] / "src"
OWN = ("semmae.data", "semmae.pipeline", "semmae.viz", "semmae.eval.features")


def test_layout_follows_the_run_directory_contract(tmp_path: Path) -> None:
    layout = PipelineLayout(tmp_path)
    assert [layout.stage(s).path for s in STAGES[:-1]] == [tmp_path / s for s in STAGES[:-1]]
    assert layout.mae.checkpoint == tmp_path / "mae" / "checkpoints" / "last.pt"
    assert layout.part_maps("train") == tmp_path / "export" / "parts_train.npy"
    assert layout.results == tmp_path / "eval" / "results.jsonl"
    with pytest.raises(ValueError, match="unknown pipeline stage 'mea'"):
        layout.stage("mea")
    study = StudyLayout(tmp_path)
    assert study.prefix.export == StageDir(tmp_path / "prefix" / "export")
    assert study.prefix.oracle_maps("train") == tmp_path / "prefix" / "oracle_train.npy"
    assert study.run("inter", 3).checkpoint == tmp_path / "runs" / "inter_s3" / "checkpoints" / "last.pt"


def test_stage_record_is_what_run_stage_wrote(tmp_path: Path) -> None:
    stage = PipelineLayout(tmp_path).parts
    assert stage.record() is None
    record = run_stage(stage, "parts", lambda d, resume: {"resumed": resume})
    assert stage.record() == record and record["result"] == {"resumed": False}


@pytest.mark.parametrize("holds", ["a user's file", "a link"])
def test_a_stage_started_again_never_deletes_what_semmae_did_not_write(tmp_path: Path, holds: str) -> None:
    # A stage without a checkpoint is cleared before it starts again: only when it is all semmae's.
    from semmae.errors import RunDirError

    stage = PipelineLayout(tmp_path / "run").export
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("precious")
    if holds == "a link":
        stage.path.parent.mkdir()
        stage.path.symlink_to(mine, target_is_directory=True)
    else:
        stage.path.mkdir(parents=True)
        (stage.path / "parts_train.npy").write_bytes(b"\x93NUMPY")  # an export's own, unfinished
        (stage.path / "notes.txt").write_text("precious")
    with pytest.raises(RunDirError, match="which semmae did not write; move it out"):
        run_stage(stage, "export", lambda d, resume: {})
    assert (mine / "notes.txt").read_text() == "precious"
    assert holds == "a link" or (stage.path / "notes.txt").read_text() == "precious"
    if holds != "a link":
        (stage.path / "notes.txt").unlink()  # then it is all semmae's, and cleared
        assert run_stage(stage, "export", lambda d, resume: {"resumed": resume})["result"] == {
            "resumed": False
        }
        assert not (stage.path / "parts_train.npy").exists()


@pytest.mark.parametrize("text", ["{}", '{"seconds": "x"}', '{"seconds": 1, "attempts": 1.5}', "[1]"])
def test_a_damaged_stage_record_is_refused_in_one_line(tmp_path: Path, text: str) -> None:
    from semmae.errors import RunDirError

    stage = PipelineLayout(tmp_path).mae
    stage.path.mkdir()
    stage.done.write_text(text)
    with pytest.raises(RunDirError, match="is damaged .* delete it"):
        stage.record()


def _row(name: str, knn: float, linear: float) -> dict:
    return {"name": name, "knn": {"top1": knn, "top5": knn + 5}, "linear": {"top1": linear, "lr": 0.1}}


def test_report_joins_rows_and_stage_times_by_id_whatever_the_labels(tmp_path: Path) -> None:
    # Labels that the former report's prefix parsing ("MAE", "SemMAE", "random") could not match.
    results = {
        "mae": _row("baseline", 50.0, 60.0),
        "semmae": _row("ours", 52.0, 59.0),
        "floor": _row("init", 10, 20),
    }
    records = {"mae": {"seconds": 120.0}, "parts": {"seconds": 30.0}, "semmae": {"seconds": 240.0}}
    cfg = config_lib.load(None, [])
    md = write_report(PipelineLayout(tmp_path), cfg, records, results).read_text()
    assert "| baseline | 50.00 | 55.00 | 60.00 | 0.1 | 2.0 |" in md
    assert "| ours | 52.00 | 57.00 | 59.00 | 0.1 | 4.0 |" in md
    assert "| init | 10.00 | 15.00 | 20.00 | 0.1 | – |" in md  # no stage trained the floor
    assert "+2.00 points kNN and -1.00 points linear-probe" in md and "(result: mixed)" in md
    assert "| parts | 0.5 |" in md and (tmp_path / "report.html").is_file()


def test_evaluation_rows_are_keyed_by_encoder_id() -> None:
    stored = {"result": {ENCODERS["floor"]: _row("f", 1, 2), ENCODERS["mae"]: _row("m", 3, 4)}}
    assert list(by_encoder(stored)) == ["mae", "floor"]  # table order, only what was evaluated
    assert by_encoder(None) == {}


def _imports() -> tuple[dict[str, set[str]], list[tuple[str, int]]]:
    """Module -> the semmae modules it imports, and every ``semmae`` import inside a function."""
    modules = {}
    for path in (SRC / "semmae").rglob("*.py"):
        name = ".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
        modules[name] = ast.parse(path.read_text())
    graph: dict[str, set[str]] = {name: set() for name in modules}
    nested: list[tuple[str, int]] = []
    for name, tree in modules.items():
        top = {id(node) for node in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("semmae"):
                targets = [f"{node.module}.{a.name}" for a in node.names]
                targets = [t if t in modules else node.module for t in targets]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.startswith("semmae")]
            else:
                continue
            graph[name].update(t for t in targets if t in modules and t != name)
            if targets and id(node) not in top:
                nested.append((name, node.lineno))
    return graph, nested


def _cycle_through(graph: dict[str, set[str]], start: str) -> list[str] | None:
    stack, seen = [(start, [start])], set()
    while stack:
        node, path = stack.pop()
        for nxt in graph[node]:
            if nxt == start:
                return path
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, [*path, nxt]))
    return None


def test_data_pipeline_and_viz_import_at_module_level_without_cycles() -> None:
    graph, nested = _imports()
    own = [m for m in graph if m.startswith(OWN)]
    assert len(own) > 20  # the walk found the modules
    assert [(m, line) for m, line in nested if m.startswith(OWN)] == []
    cycles = {m: c for m in own if (c := _cycle_through(graph, m))}
    assert cycles == {}
    assert "semmae.pipeline.stages" not in graph["semmae.pipeline.report"]
    for loader in ("fashion_mnist", "folder", "relations", "synthetic", "torchvision_sets"):
        assert graph[f"semmae.data.{loader}"].isdisjoint({"semmae.data", "semmae.data.datasets"}), loader


def test_a_stage_whose_input_neither_runs_nor_has_run_is_refused_before_any_work(tmp_path: Path) -> None:
    from semmae.errors import ConfigError
    from semmae.pipeline.stages import run_pipeline

    cfg = config_lib.load(None, ["pipeline.stages=[mae,eval,report]"])
    with pytest.raises(
        ConfigError, match="lists 'eval', which needs the 'semmae' stage's output.*add 'semmae'"
    ):
        run_pipeline(cfg, tmp_path / "p")
    assert not (tmp_path / "p").exists()
    # Resumed where the earlier stages completed, the later ones may run alone.
    for name in ("mae", "parts", "export", "semmae"):
        run_stage(PipelineLayout(tmp_path / "q").stage(name), name, lambda d, resume: {})
    from semmae.pipeline.stages import _check_inputs_of

    _check_inputs_of({"eval"}, PipelineLayout(tmp_path / "q"), resume=True)
    with pytest.raises(ConfigError, match="lists 'eval'"):
        _check_inputs_of({"eval"}, PipelineLayout(tmp_path / "q"), resume=False)
