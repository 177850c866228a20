"""A start that died before its first checkpoint continues with --resume: from scratch, saying so."""

from __future__ import annotations

from pathlib import Path

from semmae.config import load
from semmae.engine.state import LAST
from semmae.train.pretrain import run_pretrain

DEBUG = str(Path(__file__).parents[2] / "configs" / "debug_tiny.yaml")


def _cfg(*extra: str):  # noqa: ANN202
    return load(DEBUG, ["train.progress_bar=false", "train.knn_every_epochs=-1", "data.limit=64",
                        "train.batch_size=16", "train.max_steps=2", *extra])  # fmt: skip


def test_resume_of_a_failed_start_trains_from_scratch(tmp_path: Path, caplog) -> None:  # noqa: ANN001
    out = tmp_path / "run"
    run_pretrain(_cfg(), out, stop_at_step=1)
    (out / LAST).unlink()  # as if killed before the first checkpoint
    with caplog.at_level("INFO"):
        summary = run_pretrain(_cfg(), out, resume=True)
    assert "starting from scratch" in caplog.text
    assert summary["step"] == 2 and (out / LAST).is_file()
