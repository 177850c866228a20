"""``semmae pipeline`` (the whole SemMAE pipeline with a report) and ``semmae study``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from shlex import quote
from typing import get_args

from semmae import config as config_lib
from semmae.cli.common import add_config_args, check_out, check_run_out, finish_run, load_config
from semmae.cli.interrupts import interrupted
from semmae.errors import ConfigError, StageStopped
from semmae.names import StudyBudget
from semmae.pipeline.budgets import budget_overrides
from semmae.pipeline.layout import StudyLayout


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pipeline",
        help="MAE -> parts -> part maps -> SemMAE -> kNN/linear -> report, resumable",
        description="Run the whole SemMAE pipeline into --out; after an interruption, the same command with "
        "--resume skips the finished stages and resumes the stopped one. "
        "Example: semmae pipeline --config configs/pipeline_fmnist.yaml --out runs/demo",
    )
    add_config_args(p)
    p.set_defaults(func=_pipeline)
    s = sub.add_parser(
        "study",
        help="masking study: random, block, semantic variants over seeds, paired 95%% intervals",
        description="Compare masking strategies under one recipe over pipeline.seeds. "
        "Example: semmae study --config configs/study_fmnist.yaml --budget quick --out runs/study",
    )
    add_config_args(s)
    s.add_argument(
        "--budget",
        choices=get_args(StudyBudget),
        help="quick (the default): a smoke run; full: the config as written (the README's); gpu: the same "
        "study scaled for one H100/H200-class GPU (~10 min). A resume keeps the budget the study recorded",
    )
    s.set_defaults(func=_study)


def _own_config(args: argparse.Namespace) -> Path:
    """The run directory's resolved config, what a resume names as ``--config``."""
    return Path(args.out) / "config.yaml"


def _same_file(a: str | Path, b: Path) -> bool:
    try:
        return Path(a).samefile(b)
    except OSError:
        return False


def _resumed_budget(args: argparse.Namespace) -> str:
    """The budget of a resumed study: the one it recorded (the default when it recorded none).

    Raises:
        ConfigError: ``--budget`` names another budget than the study recorded.
    """
    recorded = StudyLayout(Path(args.out)).recorded_budget()
    if recorded and args.budget and args.budget != recorded:
        raise ConfigError(
            f"this study ran with --budget {recorded}: resume it with --budget {recorded}, or without --budget"
        )
    return recorded or args.budget or "quick"


def _pipeline(args: argparse.Namespace) -> int:
    cfg = load_config(args)  # bad input is refused before torch is imported (start-up time)
    cfg.train.check_pretraining()
    check_run_out(args)
    from semmae.pipeline.stages import run_pipeline  # heavy: torch, timm, matplotlib, sklearn

    check_out(args, cfg)
    try:
        records = run_pipeline(cfg, args.out, resume=args.resume, overwrite=args.overwrite)
    except (StageStopped, KeyboardInterrupt) as stop:  # in a stage's training loop, or between steps
        command = f"semmae pipeline --config {quote(str(_own_config(args)))} --out {quote(args.out)}"
        if isinstance(stop, KeyboardInterrupt):
            return interrupted(stop, command)
        return finish_run({"interrupted": stop.signum, "step": stop.step}, command)
    report = records.get("report", {}).get("path")
    if report:
        print(f"report: {report} (and {report[:-3]}.html)")
    return 0


def _study(args: argparse.Namespace) -> int:
    # The config, its budget applied, is refused before torch is imported (start-up time); the gpu
    # budget scales the sizes of the config as the user wrote it.
    base = load_config(args)
    # The study's own config.yaml already holds its budget's values: applied again, the gpu budget
    # would scale them twice; its label is the one it recorded.
    own = args.resume and args.config is not None and _same_file(args.config, _own_config(args))
    budget = _resumed_budget(args) if args.resume else args.budget or "quick"
    extra = [] if own else budget_overrides(budget, base)
    cfg = config_lib.load(args.config, extra + list(args.overrides))
    cfg.train.check_pretraining()
    check_run_out(args)
    from semmae.pipeline.study import run_study  # heavy: torch, timm, matplotlib

    check_out(args, cfg)
    try:
        table = run_study(cfg, args.out, budget=budget, resume=args.resume, overwrite=args.overwrite)
    except (StageStopped, KeyboardInterrupt) as stop:
        command = (
            f"semmae study --config {quote(str(_own_config(args)))} --budget {budget} --out {quote(args.out)}"
        )
        if isinstance(stop, KeyboardInterrupt):
            return interrupted(stop, command)
        return finish_run({"interrupted": stop.signum, "step": stop.step}, command)
    print(json.dumps(table))
    return 0
