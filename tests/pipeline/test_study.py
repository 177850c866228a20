"""Masking study: paired t-intervals, verdicts, budgets, floor weights, report; quick study end to end (slow)."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from scipy import stats as sps

from semmae import config as config_lib
from semmae.errors import ConfigError, DataError
from semmae.pipeline.budgets import budget_overrides
from semmae.pipeline.stats import paired_difference, t_interval, verdict
from semmae.pipeline.study import _initial_weights, run_study, write_study
from semmae.pipeline.study_report import METRICS, compare, verdicts

ROOT = Path(__file__).parents[2]


def _rows(values: dict[str, list[float]]) -> list[dict]:
    return [
        {"method": m, "seed": s, "knn": {"top1": v}, "linear": {"top1": v + 10}, "pretrain_s": 60.0,
         "pretrain_cpu_s": 30.0, "eval_cpu_s": 6.0}
        for m, vs in values.items() for s, v in enumerate(vs)
    ]  # fmt: skip


def test_t_interval_matches_scipy_and_needs_two_values() -> None:
    values = [1.0, 2.5, 2.0, 4.0]
    lo, hi = t_interval(values)
    ref = sps.t.interval(0.95, 3, loc=statistics.fmean(values), scale=sps.sem(values))
    assert lo == pytest.approx(ref[0]) and hi == pytest.approx(ref[1])
    assert t_interval([3.0]) is None


def test_paired_difference_pairs_by_seed_and_says_when_resolved() -> None:
    # Large seed-to-seed spread shared by both methods: unpaired it would not resolve, paired it does.
    ref = {0: 40.0, 1: 60.0, 2: 50.0}
    better = {0: 41.0, 1: 61.2, 2: 50.9, 7: 99.0}  # seed 7 has no partner and is ignored
    d = paired_difference(better, ref)
    assert d["seeds"] == [0, 1, 2] and d["mean"] == pytest.approx(1.0333333)
    assert d["resolved"] and d["lo"] > 0
    assert "resolved: higher" in verdict("b", "random", "kNN", d)
    noisy = paired_difference({0: 42.0, 1: 59.0, 2: 50.5}, ref)
    assert not noisy["resolved"] and noisy["lo"] < 0 < noisy["hi"]
    assert "not resolved" in verdict("n", "random", "kNN", noisy)
    one = paired_difference({0: 45.0}, ref)
    assert one["lo"] is None and not one["resolved"] and "no interval" in verdict("o", "random", "kNN", one)
    assert paired_difference({5: 1.0}, ref) is None


def test_compare_reports_every_method_against_random_and_random_against_the_floor() -> None:
    rows = _rows({"floor": [30.0, 31.0, 29.0], "random": [50.0, 52.0, 51.0], "inter": [50.5, 52.2, 51.0]})
    comp = compare(rows)
    lin = comp["linear_top1"]
    assert lin["random"]["vs_random"] is None and lin["random"]["vs_floor"]["mean"] == pytest.approx(21.0)
    assert lin["inter"]["vs_random"]["mean"] == pytest.approx(0.2333333) and lin["inter"]["vs_floor"] is None
    assert lin["floor"]["vs_random"]["mean"] == pytest.approx(-21.0)
    text = verdicts(comp)
    assert len(text) == 2 * 2  # per metric: random vs the floor, inter vs random
    assert "21.0 standard deviations" in text[0]


def test_without_random_the_verdicts_say_so_once_per_metric() -> None:
    text = verdicts(compare(_rows({"floor": [30.0, 31.0], "block": [50.0, 52.0], "inter": [50.5, 52.2]})))
    assert text == [
        f"random is not among pipeline.study_methods, so no method is compared with it on {label}."
        for label in METRICS.values()
    ]
    # A study that lists random but has not reached its runs yet (the table is rewritten after each).
    comp = compare(_rows({"floor": [30.0, 31.0], "block": [50.0, 52.0]}))
    assert verdicts(comp, ["block", "random"]) == [
        f"random has no evaluated run yet, so no method is compared with it on {label}."
        for label in METRICS.values()
    ]


def test_budgets() -> None:
    cfg = config_lib.load(ROOT / "configs" / "study_relations.yaml", [])
    assert budget_overrides("full", cfg) == [] and "pipeline.seeds=[0]" in budget_overrides("quick", cfg)
    with pytest.raises(ConfigError, match="quick, full, gpu"):
        budget_overrides("huge", cfg)
    gpu = config_lib.load(ROOT / "configs" / "study_relations.yaml", budget_overrides("gpu", cfg))
    assert gpu.data.toy_size == 4 * cfg.data.toy_size and gpu.train.epochs > cfg.train.epochs
    assert gpu.train.device == "cuda" and len(gpu.pipeline.seeds) == 5


def test_oracle_without_part_masks_is_refused_before_any_run(tmp_path: Path) -> None:
    cfg = config_lib.load(ROOT / "configs" / "debug_tiny.yaml", ["pipeline.study_methods=[random,oracle]"])
    with pytest.raises(ConfigError, match="'oracle', which needs ground-truth part masks"):
        run_study(cfg, tmp_path / "study")
    assert not (tmp_path / "study").exists()


@pytest.mark.parametrize(
    ("override", "error", "message"),
    [
        ("data.limit=1", DataError, r"holds one class, .*; the study \(kNN and a linear probe of every run\) needs at least two"),
        ("train.min_lr=1", ConfigError, "train.min_lr=1 is above the peak learning rate"),
    ],
)  # fmt: skip
def test_data_or_settings_no_run_could_use_are_refused_before_any_run(
    tmp_path: Path, override: str, error: type, message: str
) -> None:
    cfg = config_lib.load(ROOT / "configs" / "debug_tiny.yaml", [override])
    with pytest.raises(error, match=message):
        run_study(cfg, tmp_path / "study")
    assert not (tmp_path / "study").exists()


def test_floor_weights_are_the_seeds_initialisation(tmp_path: Path) -> None:
    from semmae.engine.build import build_model
    from semmae.models.encoder import load_encoder

    cfg = config_lib.load(ROOT / "configs" / "study_relations.yaml", ["model.name=mae_debug", "train.seed=3"])
    _initial_weights(cfg)(tmp_path, False)
    torch.manual_seed(3)
    expected = build_model(cfg).state_dict()
    enc, meta = load_encoder(str(tmp_path / "checkpoints" / "last.pt"))
    assert torch.equal(enc.state_dict()["patch_embed.proj.weight"], expected["patch_embed.proj.weight"])
    assert meta["mean"] == cfg.data.mean  # evaluated with the data's normalisation, like trained runs


def test_write_study_json_markdown_and_html(tmp_path: Path) -> None:
    rows = _rows({"floor": [30.0, 31.0, 29.0], "random": [50.0, 52.0, 51.0], "semantic": [53.0, 55.5, 54.0]})
    cfg = config_lib.load(ROOT / "configs" / "study_relations.yaml", [])
    table = write_study(tmp_path, cfg, "full", rows, overhead_cpu_s=60.0)
    study = json.loads((tmp_path / "study.json").read_text())
    assert study["table"] == json.loads(json.dumps(table)) and study["cpu_minutes"] == pytest.approx(6.4)
    assert study["comparison"]["knn_top1"]["semantic"]["vs_random"]["resolved"]
    md = (tmp_path / "study.md").read_text()
    assert "| semantic | 54.17 ± 1.26 | +3.17 [+2.45, +3.88] **✓** |" in md
    html = (tmp_path / "study.html").read_text()
    assert html.count("data:image/png;base64,") == 4  # means and differences, per metric
    assert "random (MAE) vs the random-init floor" in md


@pytest.mark.slow
def test_quick_study_runs_end_to_end_from_the_cli(tmp_path: Path) -> None:
    """``semmae study --budget quick`` on toy-relations: floor, every method, oracle; report written."""
    out = tmp_path / "study"
    cmd = [sys.executable, "-m", "semmae", "study", "--config", str(ROOT / "configs" / "study_relations.yaml"),
           "--budget", "quick", "--out", str(out), "data.toy_size=600", "parts.eval_limit=200"]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, timeout=1800)
    study = json.loads((out / "study.json").read_text())
    cfg = config_lib.load(ROOT / "configs" / "study_relations.yaml", [])
    methods = {"floor", *cfg.pipeline.study_methods, "oracle"}  # oracle: toy-relations has part masks
    assert set(study["table"]) == methods and study["budget"] == "quick"
    assert all(r["pretrain_cpu_s"] is not None for r in study["runs"])
    assert (out / "study.html").is_file() and "Δ linear" in (out / "study.md").read_text()


@pytest.mark.parametrize("budget", ["quick", "gpu"])
def test_a_stopped_study_prints_a_resume_that_keeps_its_budget_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], budget: str
) -> None:
    # The study's own config.yaml holds its budget's values; the printed resume must not apply the
    # budget again (the gpu budget scales epochs and images from the config it is given).
    import shlex

    import yaml

    import semmae.pipeline.study as study
    from semmae.cli.main import main
    from semmae.errors import StageStopped

    seen: list[config_lib.Config] = []
    labels: list[object] = []

    def stop_after_writing_config(cfg: config_lib.Config, out: Path, **kwargs: object) -> dict:
        seen.append(cfg)
        labels.append(kwargs["budget"])
        if len(seen) == 1:  # what run_study has written when it is stopped
            Path(out).mkdir()
            (Path(out) / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
            write_study(Path(out), cfg, str(kwargs["budget"]), [])
            raise StageStopped(7, 15)
        return {}

    monkeypatch.setattr(study, "run_study", stop_after_writing_config)
    out = tmp_path / "study"
    argv = [
        "study",
        "--config",
        str(ROOT / "configs" / "study_fmnist.yaml"),
        "--budget",
        budget,
        "--out",
        str(out),
    ]
    assert main(argv) == 128 + 15
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(
        "semmae: stopped by SIGTERM at step 7; checkpoint saved. Continue with: semmae study"
    )
    hint = shlex.split(last.split("Continue with: ", 1)[1])
    assert main(hint[1:]) == 0
    assert seen[1].to_dict() == seen[0].to_dict() and labels == [budget, budget]
    # Resumed without --budget, the study keeps the budget it recorded (values and label alike).
    at = hint.index("--budget")
    without = hint[1:at] + hint[at + 2 :]
    assert main(without) == 0
    assert seen[2].to_dict() == seen[0].to_dict() and labels[2] == budget
    # Another --budget would mislabel the study's values: refused, naming the one it ran with.
    other = "full" if budget != "full" else "quick"
    assert main([*without, "--budget", other]) == 2
    assert f"this study ran with --budget {budget}" in capsys.readouterr().err
    assert len(seen) == 3
    # Resumed with the recipe it started from and no --budget: the recorded budget is applied again.
    assert (
        main(
            ["study", "--config", str(ROOT / "configs" / "study_fmnist.yaml"), "--out", str(out), "--resume"]
        )
        == 0
    )
    assert seen[3].to_dict() == seen[0].to_dict() and labels[3] == budget


def test_a_study_records_its_budget_before_its_first_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A study stopped in its shared prefix has its budget on record, so a resume keeps its label.
    import semmae.pipeline.study as study
    from semmae.errors import StageStopped
    from semmae.pipeline.layout import StudyLayout

    def stopped(*args: object, **kwargs: object) -> None:
        raise StageStopped(3, 2)

    monkeypatch.setattr(study, "_prefix", stopped)
    cfg = config_lib.load(ROOT / "configs" / "study_fmnist.yaml", [])
    with pytest.raises(StageStopped):
        run_study(cfg, tmp_path / "study", budget="gpu")
    assert StudyLayout(tmp_path / "study").recorded_budget() == "gpu"


def test_a_study_that_failed_at_its_start_runs_again_with_or_without_overwrite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Its table (written at the start, the budget on record) is an early log: the same command runs
    # again, and --overwrite replaces it, study.html included.
    import semmae.pipeline.study as study
    from semmae.cli.main import main
    from semmae.errors import DataError

    def no_data(*args: object, **kwargs: object) -> None:
        raise DataError("no images here")

    monkeypatch.setattr(study, "_prefix", no_data)
    out = tmp_path / "study"
    argv = ["study", "--config", str(ROOT / "configs" / "study_fmnist.yaml"), "--out", str(out)]
    assert main(argv) == 2
    assert {"study.json", "study.md", "study.html"} <= {p.name for p in out.iterdir()}
    for extra in ([], ["--overwrite"]):
        capsys.readouterr()
        assert main([*argv, *extra]) == 2
        assert capsys.readouterr().err.strip().splitlines()[-1] == "semmae: error: no images here", extra
