"""SemMAE pretraining end to end on toy-parts with oracle part maps, and part-map pairing checks."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from semmae import config as config_lib
from semmae.cli.main import main
from semmae.engine.logging import read_metrics
from semmae.errors import DataError
from semmae.train.pretrain import run_pretrain

ROOT = Path(__file__).parents[2]
TOY = [
    "data.name=toy_parts", "data.toy_size=128", "data.image_size=32", "data.in_chans=3",
    "data.mean=[0.27]", "data.std=[0.18]", "model.name=mae_debug", "train.batch_size=32",
    "train.progress_bar=false", "train.knn_every_epochs=-1", "train.log_every=1", "train.epochs=2",
]  # fmt: skip


def _oracle_maps_via_cli(tmp_path: Path, split: str, grid: int = 8, *extra: str) -> tuple[Path, Path]:
    """Write the toy recipe and ``semmae parts from-masks`` maps of ``split``; returns both paths."""
    cfg_file = tmp_path / "toy.yaml"
    config_lib.dump(config_lib.load(None, TOY), cfg_file)
    maps = tmp_path / f"{split}_maps.npy"
    argv = ["parts", "from-masks", "--config", str(cfg_file), "--split", split, "--grid", str(grid)]
    assert main([*argv, "--out", str(maps), *extra]) == 0
    return cfg_file, maps


def test_oracle_part_maps_drive_semantic_pretraining(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg_file, maps = _oracle_maps_via_cli(tmp_path, "train")
    capsys.readouterr()
    cfg = config_lib.load(cfg_file, ["masking.name=semantic", f"masking.parts={maps}"])
    summary = run_pretrain(cfg, tmp_path / "run")
    assert summary["complete"]
    rows = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "lambda" in r]
    lams = [r["lambda"] for r in rows]
    # Intra-part first, inter-part last (λ is logged for the step's start).
    assert lams[0] == pytest.approx(1.0, abs=0.02) and lams[-1] < 0.3
    assert all(a >= b for a, b in itertools.pairwise(lams))
    assert (tmp_path / "run" / "images" / "masks_progress.png").is_file()


def test_part_maps_of_another_split_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg_file, maps = _oracle_maps_via_cli(tmp_path, "test")
    cfg = config_lib.load(cfg_file, ["masking.name=semantic", f"masking.parts={maps}"])
    with pytest.raises(DataError, match="split"):
        run_pretrain(cfg, tmp_path / "run")
    capsys.readouterr()
    code = main(
        ["pretrain", "--config", str(cfg_file), "--out", str(tmp_path / "run2"), "masking.name=semantic"]
    )
    assert code == 2 and "masking.parts" in capsys.readouterr().err


def test_a_resume_with_other_part_maps_at_the_same_path_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The masks of the remaining steps would come from maps the run did not start with: the
    # checkpoint records the manifest of the maps it trained on.
    from semmae.errors import CheckpointError

    cfg_file, maps = _oracle_maps_via_cli(tmp_path, "train")
    capsys.readouterr()
    cfg = config_lib.load(cfg_file, ["masking.name=semantic", f"masking.parts={maps}", "train.max_steps=6"])
    assert run_pretrain(cfg, tmp_path / "run", stop_at_step=2)["interrupted"] == -1
    assert run_pretrain(cfg, tmp_path / "run", resume=True, stop_at_step=3)["interrupted"] == -1  # same maps
    manifest = maps.with_suffix(".json")
    made_again = json.loads(manifest.read_text()) | {"created": "2001-01-01T00:00:00+00:00"}
    manifest.write_text(json.dumps(made_again))  # the same export made again: only its time differs
    assert run_pretrain(cfg, tmp_path / "run", resume=True, stop_at_step=4)["interrupted"] == -1
    _oracle_maps_via_cli(tmp_path, "train", 4, "--overwrite")  # other maps, same path
    with pytest.raises(
        CheckpointError, match=r"not the part-map file this run started with \(its manifest differs in"
    ):
        run_pretrain(cfg, tmp_path / "run", resume=True)
