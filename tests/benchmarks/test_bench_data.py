"""benchmarks/bench_data.py in smoke mode: both loaders deliver normalised 224 batches; JSON out."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


def test_bench_data_smoke(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # importable by name: its writer pool pickles it
    bench = importlib.import_module("bench_data")
    result = bench.main(["--smoke", "--workers", "0", "--root", str(tmp_path / "jpegs")])
    assert json.loads(capsys.readouterr().out) == result
    assert len(list((tmp_path / "jpegs" / "train").rglob("*.jpg"))) == 48
    assert result["ours_img_per_s"] > 0 and result["torchvision_img_per_s"] > 0 and result["ratio"] > 0
    assert result["timed_images_per_round"] == 40 and result["decoder"].startswith("PIL ")
