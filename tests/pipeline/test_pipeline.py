"""The whole pipeline on tiny data: every stage, a report whose table matches the stage outputs, resume."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from semmae import config as config_lib
from semmae.pipeline.stages import STAGES, run_pipeline
from semmae.pipeline.study import summarise, write_study

ROOT = Path(__file__).parents[2]
TINY = [
    "data.limit=256", "model.name=mae_debug", "train.epochs=1", "train.batch_size=32", "train.progress_bar=false",
    "train.knn_every_epochs=0", "train.knn_train=256", "train.knn_test=128", "parts.epochs=1", "parts.batch_size=32",
    "parts.eval_limit=64", "eval.linear_epochs=2", "eval.batch_size=128",
]  # fmt: skip


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pipe") / "run"
    cfg = config_lib.load(ROOT / "configs" / "pipeline_fmnist.yaml", TINY)
    run_pipeline(cfg, out)
    return out


def test_every_stage_completes_and_the_report_has_every_part(pipeline_dir: Path) -> None:
    for stage in STAGES[:-1]:
        assert (pipeline_dir / stage / "DONE.json").is_file(), stage
    md = (pipeline_dir / "report.md").read_text()
    for needle in ("## Settings", "## Results", "## Training curves", "## Learned parts", "## Masks over training progress",
                   "## Reconstructions", "points kNN"):  # fmt: skip
        assert needle in md, needle
    for img in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md):
        assert (pipeline_dir / img).is_file(), img
    assert len(re.findall(r"!\[", md)) >= 7  # curves, part maps, masks, both reconstructions
    assert "| pretraining | 1 epoch, batch 32" in md and ", 1 epoch, global token" in md  # not "1 epochs"
    html = (pipeline_dir / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(re.findall(r"!\[", md))
    assert 'src="figures' not in html  # self-contained


def test_report_table_matches_the_evaluation_outputs(pipeline_dir: Path) -> None:
    rows = [json.loads(line) for line in (pipeline_dir / "eval" / "results.jsonl").read_text().splitlines()]
    assert [r["name"] for r in rows] == [
        "MAE (random masking)",
        "SemMAE (semantic masking)",
        "random init (floor)",
    ]
    md = (pipeline_dir / "report.md").read_text()
    assert "linear top-1 (fast probe)" in md and all(r["linear"]["protocol"] == "fast" for r in rows)
    for r in rows:
        line = next(line for line in md.splitlines() if line.startswith(f"| {r['name']} |"))
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert float(cells[1]) == pytest.approx(r["knn"]["top1"], abs=0.005)
        assert float(cells[3]) == pytest.approx(r["linear"]["top1"], abs=0.005)
    semmae_cfg = config_lib.from_dict(
        json.loads(
            json.dumps(__import__("yaml").safe_load((pipeline_dir / "semmae" / "config.yaml").read_text()))
        )
    )
    assert semmae_cfg.masking.name == "semantic" and semmae_cfg.masking.parts.endswith("parts_train.npy")
    mae_cfg = __import__("yaml").safe_load((pipeline_dir / "mae" / "config.yaml").read_text())
    assert mae_cfg["masking"]["name"] == "random"
    assert {k: v for k, v in mae_cfg["train"].items()} == semmae_cfg.to_dict()["train"]  # same recipe


def test_rerun_skips_finished_stages_and_redoes_unfinished(pipeline_dir: Path) -> None:
    cfg = config_lib.load(ROOT / "configs" / "pipeline_fmnist.yaml", TINY)
    before = {s: (pipeline_dir / s / "DONE.json").read_text() for s in STAGES[:-1]}
    (pipeline_dir / "eval" / "DONE.json").unlink()  # as if killed during evaluation
    records = run_pipeline(cfg, pipeline_dir, resume=True)
    for s in ("mae", "parts", "export", "semmae"):
        assert (pipeline_dir / s / "DONE.json").read_text() == before[s], s
    assert records["eval"]["result"].keys() == json.loads(before["eval"])["result"].keys()


def test_a_stage_left_out_of_the_resume_still_has_its_checkpoint_checked(
    pipeline_dir: Path, tmp_path: Path
) -> None:
    from semmae.errors import RunDirError

    ckpt = pipeline_dir / "mae" / "checkpoints" / "last.pt"
    original = ckpt.read_bytes()
    cfg = config_lib.load(ROOT / "configs" / "pipeline_fmnist.yaml", [*TINY, "pipeline.stages=[eval]"])
    try:
        ckpt.write_bytes(original + b"another run")
        with pytest.raises(RunDirError, match="'mae' stage is complete but"):
            run_pipeline(cfg, pipeline_dir, resume=True)
    finally:
        ckpt.write_bytes(original)


def test_a_resume_with_other_settings_is_refused_before_any_stage_runs(pipeline_dir: Path) -> None:
    from semmae.errors import RunDirError

    cfg = config_lib.load(ROOT / "configs" / "pipeline_fmnist.yaml", [*TINY, "masking.ratio=0.5"])
    before = {
        p: p.read_bytes() for p in sorted(pipeline_dir.rglob("*")) if p.is_file() and p.name != ".semmae.lock"
    }
    with pytest.raises(RunDirError, match=r"other values of masking\.ratio"):
        run_pipeline(cfg, pipeline_dir, resume=True)
    after = {
        p: p.read_bytes() for p in sorted(pipeline_dir.rglob("*")) if p.is_file() and p.name != ".semmae.lock"
    }
    assert after == before


def test_a_damaged_stage_record_is_named_with_the_way_out(tmp_path: Path) -> None:
    from semmae.errors import RunDirError
    from semmae.pipeline.layout import StageDir

    stage = StageDir(tmp_path / "mae")
    stage.path.mkdir()
    stage.done.write_text("{bad")
    with pytest.raises(RunDirError, match=r"DONE\.json' is damaged .*delete it"):
        stage.record()
    stage.done.write_text("[1, 2]")  # JSON, but not a record
    with pytest.raises(RunDirError, match="is damaged"):
        stage.record()


def test_a_resumed_stage_counts_the_time_of_every_attempt(tmp_path: Path) -> None:
    import time

    from semmae.pipeline.layout import StageDir
    from semmae.pipeline.stages import run_stage

    calls: list[bool] = []

    def stage(d: Path, resume: bool) -> dict:
        calls.append(resume)
        (d / "checkpoints").mkdir(parents=True, exist_ok=True)
        (d / "checkpoints" / "last.pt").write_bytes(b"x")
        time.sleep(0.3)
        if len(calls) == 1:
            raise KeyboardInterrupt  # stopped halfway
        return {"ok": True}

    with pytest.raises(KeyboardInterrupt):
        run_stage(StageDir(tmp_path / "s"), "s", stage)
    assert json.loads((tmp_path / "s" / "PARTIAL.json").read_text())["attempts"] == 1
    record = run_stage(StageDir(tmp_path / "s"), "s", stage)
    assert calls == [False, True]
    assert record["attempts"] == 2 and record["seconds"] >= 0.6
    assert not (tmp_path / "s" / "PARTIAL.json").exists()
    assert run_stage(StageDir(tmp_path / "s"), "s", stage) == json.loads(
        (tmp_path / "s" / "DONE.json").read_text()
    )
    assert len(calls) == 2  # done stages are not run again


def test_study_summary_mean_and_std(tmp_path: Path) -> None:
    rows = [
        {"method": "a", "seed": s, "knn": {"top1": k}, "linear": {"top1": k + 1}, "pretrain_s": 60.0}
        for s, k in ((0, 10.0), (1, 14.0))
    ]
    table = summarise(rows)
    assert table["a"]["knn_top1"] == {"mean": 12.0, "std": pytest.approx(2.8284271)}
    assert table["a"]["linear_top1"]["mean"] == 13.0 and table["a"]["pretrain_min"]["mean"] == 1.0
    single = summarise(rows[:1])["a"]["knn_top1"]
    assert single == {"mean": 10.0, "std": None}  # one seed has no spread to report
    cfg = config_lib.load(None, [])
    write_study(tmp_path, cfg, "quick", rows)
    assert "| a | 12.00 ± 2.83 | – | 13.00 ± 2.83 | – | – |" in (tmp_path / "study.md").read_text()
    study = json.loads((tmp_path / "study.json").read_text())
    assert study["table"] == json.loads(json.dumps(table))
    assert set(study["provenance"]) == {"semmae", "git", "torch", "device", "created"}


def test_provenance_names_the_commit_of_this_checkout() -> None:
    import re
    import shutil
    import subprocess

    from semmae.runtime import provenance

    prov = provenance()
    assert prov["torch"] and prov["device"] and prov["semmae"]
    root = Path(__file__).resolve().parents[2]
    if shutil.which("git") is None or not (root / ".git").exists():
        assert prov["git"] is None
        return
    head = subprocess.run(
        ["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    assert re.fullmatch(r"[0-9a-f]{4,}(\+dirty)?", prov["git"])
    assert prov["git"].split("+")[0] == head.stdout.strip()


@pytest.mark.parametrize("change", ["replaced", "lost"])
def test_a_completed_stage_whose_checkpoint_changed_is_refused(tmp_path: Path, change: str) -> None:
    from semmae.errors import RunDirError
    from semmae.pipeline.layout import StageDir
    from semmae.pipeline.stages import run_stage

    def stage(d: Path, resume: bool) -> dict:
        (d / "checkpoints").mkdir(parents=True, exist_ok=True)
        (d / "checkpoints" / "last.pt").write_bytes(b"the weights it finished with")
        return {"ok": True}

    s = StageDir(tmp_path / "mae")
    record = run_stage(s, "mae", stage)
    assert len(record["checkpoint_sha256"]) == 16
    assert run_stage(s, "mae", stage) == record  # unchanged: skipped
    if change == "replaced":
        s.checkpoint.write_bytes(b"another run's weights")
    else:
        s.checkpoint.unlink()
    state = "is not the checkpoint the stage finished with" if change == "replaced" else "is gone"
    with pytest.raises(
        RunDirError, match=rf"the 'mae' stage is complete but .*last\.pt {state} .*delete .*DONE\.json"
    ):
        run_stage(s, "mae", stage)


def _folder(root: Path, classes: list[str]) -> Path:
    """train/ and val/ splits of four images each: in one folder per class of ``classes``, or with
    no classes directly in the split folder (unlabelled)."""
    from PIL import Image

    for split in ("train", "val"):
        for i in range(4):
            folder = root / split / (classes[i % len(classes)] if classes else "")
            folder.mkdir(parents=True, exist_ok=True)
            Image.new("L", (28, 28), 40 * i).save(folder / f"{i}.png")
    return root


@pytest.mark.parametrize(
    ("classes", "message"), [([], "has no class labels"), (["shoes"], "holds one class, so any classifier")]
)
def test_a_pipeline_that_evaluates_refuses_data_it_cannot_score_before_training(
    tmp_path: Path, classes: list[str], message: str
) -> None:
    from semmae.errors import DataError

    folder = _folder(tmp_path / "images", classes)
    extra = ["data.name=image_folder", f"data.root={folder}", "data.image_size=28", "data.in_chans=1"]
    cfg = config_lib.load(ROOT / "configs" / "pipeline_fmnist.yaml", TINY + extra)
    with pytest.raises(
        DataError,
        match=rf"{message}.*; the pipeline's 'eval' stage needs .*; or leave 'eval' out of pipeline.stages",
    ):
        run_pipeline(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()  # refused before the run directory, let alone training
    # Without the evaluation stage the same data trains (it is checked where it is used).
    cfg.pipeline.stages, cfg.train.batch_size = ["mae"], 4
    run_pipeline(cfg, tmp_path / "mae_only")
    assert (tmp_path / "mae_only" / "mae" / "DONE.json").is_file()


def test_a_pretraining_lr_floor_above_its_peak_is_refused_before_the_pipeline_starts(tmp_path: Path) -> None:
    from semmae.errors import ConfigError

    cfg = config_lib.load(ROOT / "configs" / "pipeline_fmnist.yaml", [*TINY, "train.min_lr=1"])
    with pytest.raises(ConfigError, match="train.min_lr=1 is above the peak learning rate"):
        run_pipeline(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_the_lr_floor_is_checked_against_the_launch_world_size(monkeypatch: pytest.MonkeyPatch) -> None:
    from semmae.errors import ConfigError

    # base_lr 1e-3 x batch 32 / 256: a peak of 1.25e-4 on one rank, 5e-4 on four (torchrun's WORLD_SIZE).
    train = config_lib.load(None, ["train.base_lr=1e-3", "train.batch_size=32", "train.min_lr=2e-4"]).train
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(ConfigError, match=r"above the peak learning rate 0.000125 .*effective batch 32 /"):
        train.check_pretraining()
    monkeypatch.setenv("WORLD_SIZE", "4")
    train.check_pretraining()  # a peak of 5e-4: the floor is below it
    with pytest.raises(ConfigError, match="effective batch 32 /"):
        train.check_pretraining(world=1)  # a process group's own size, where the trainer knows it
