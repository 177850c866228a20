"""`semmae eval` / `semmae export`: one-line errors with exit code 2, config layering, JSON results."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from semmae.cli.eval import eval_config, results_path
from semmae.cli.main import main


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("semmae: error: ")
    return err[0]


def test_not_an_encoder_is_refused(tmp_path, capsys) -> None:
    path = tmp_path / "cnn.pt"
    torch.save({"kind": "parts", "model": nn.Conv2d(1, 2, 3).state_dict()}, path)
    assert main(["eval", "knn", "--checkpoint", str(path)]) == 2
    assert "holds no ViT encoder" in _error_line(capsys)


def test_patch_size_that_does_not_fit_is_refused(capsys) -> None:
    assert main(["eval", "linear", "--checkpoint", "random:mae_debug", "data.image_size=30"]) == 2
    assert "patch size 4 does not divide" in _error_line(capsys)
    assert main(["eval", "knn", "--checkpoint", "random:mae_debug", "data.in_chans=3"]) == 2
    assert "data.in_chans=1" in _error_line(capsys)


def test_an_encoder_with_nan_weights_is_not_exported(tmp_path, capsys) -> None:
    from semmae.models import build_mae
    from semmae.models.checkpoint import save_checkpoint

    mae = build_mae("mae_debug")
    with torch.no_grad():
        mae.patch_embed.proj.bias[0] = float("nan")
    save_checkpoint(tmp_path / "last.pt", {"kind": "mae", "model": mae.state_dict(), "arch": mae.arch})
    out = tmp_path / "enc.safetensors"
    assert (
        main(["export", "--checkpoint", str(tmp_path / "last.pt"), "--format", "timm", "--out", str(out)])
        == 2
    )
    assert "patch_embed.proj.bias" in _error_line(capsys) and not out.exists()


def test_unknown_export_format_and_overwrite(tmp_path, capsys) -> None:
    out = tmp_path / "enc.safetensors"
    with pytest.raises(SystemExit) as exc:  # an argparse choice: the usage error, exit 2
        main(["export", "--checkpoint", "random:mae_debug", "--format", "tflite", "--out", str(out)])
    assert (
        exc.value.code == 2
        and "invalid choice: 'tflite' (choose from 'timm', 'onnx')" in capsys.readouterr().err
    )
    assert main(["export", "--checkpoint", "random:mae_debug", "--format", "timm", "--out", str(out)]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["format"] == "timm" and res["max_abs_diff"] <= 1e-5
    assert main(["export", "--checkpoint", "random:mae_debug", "--format", "timm", "--out", str(out)]) == 2
    assert "--overwrite" in _error_line(capsys)


def test_config_layers_checkpoint_file_overrides(tmp_path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("data:\n  limit: 100\neval:\n  knn_k: 5\n")
    ckpt_data = {"name": "toy_parts", "image_size": 32, "limit": 10, "mean": [0.1], "std": [0.2], "gone": 1}
    cfg = eval_config(ckpt_data, str(recipe), ["data.limit=7", "eval.feature=mean"])
    assert (cfg.data.name, cfg.data.image_size, cfg.data.limit, cfg.data.mean) == ("toy_parts", 32, 7, [0.1])
    assert (cfg.eval.knn_k, cfg.eval.feature) == (5, "mean")
    assert eval_config(None, None, []).data.name == "fashion_mnist"


def test_results_path(tmp_path) -> None:
    assert results_path("runs/a/checkpoints/last.pt", None).as_posix() == "runs/a/results.jsonl"
    assert results_path("w/mae.pth", None).as_posix() == "w/results.jsonl"
    assert results_path("timm:vit_tiny_patch16_224@w/v.safetensors", None).as_posix() == "w/results.jsonl"
    assert results_path("random:mae_debug", None) is None
    assert results_path("random:mae_debug", "x.jsonl").as_posix() == "x.jsonl"


@pytest.mark.parametrize("command", ["knn", "linear"])
def test_eval_prints_json_last_and_appends_results(tmp_path, capsys, command) -> None:
    pytest.importorskip("semmae.data.transforms")
    from semmae.config import Config
    from semmae.models import build_mae
    from semmae.models.checkpoint import save_checkpoint

    cfg = Config()
    cfg.data.name, cfg.data.toy_size, cfg.data.image_size = "toy_parts", 40, 28
    mae = build_mae("mae_debug")
    ckpt = save_checkpoint(
        tmp_path / "run" / "checkpoints" / "last.pt",
        {"kind": "mae", "model": mae.state_dict(), "arch": mae.arch, "config": cfg.to_dict()},
    )
    argv = [
        "eval",
        command,
        "--checkpoint",
        str(ckpt),
        "eval.linear_epochs=2",
        "eval.knn_k=3",
        "train.device=cpu",
    ]
    assert main(argv) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (
        res["eval"] == command
        and res["dataset"] == "toy_parts"
        and res["n_train"] == 40
        and res["n_test"] == 40
    )
    assert 0.0 <= res["top1"] <= 100.0 and "top5" not in res and res["checkpoint"] == str(ckpt)
    assert ("k" in res) if command == "knn" else ("lr" in res and res["protocol"] == "fast")
    rows = (tmp_path / "run" / "results.jsonl").read_text().splitlines()
    assert json.loads(rows[-1]) == res


def test_a_results_file_that_is_not_ours_is_refused_before_any_work(tmp_path, capsys) -> None:
    from semmae.models.encoder import load_encoder
    from semmae.models.export import export_timm

    ckpt = export_timm(load_encoder("random:mae_debug")[0], tmp_path / "enc.safetensors")
    original = ckpt.read_bytes()
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes, no newline")
    (tmp_path / "folder").mkdir()
    base = ["eval", "knn", "--checkpoint", str(ckpt)]
    cases = {
        str(ckpt): "is the checkpoint",
        str(notes): "not a JSON-lines",
        str(tmp_path / "folder"): "folder",
    }
    for results, needle in cases.items():
        assert main([*base, "--results", results]) == 2
        assert needle in _error_line(capsys)
    assert ckpt.read_bytes() == original and notes.read_text() == "my notes, no newline"
    (tmp_path / "results.jsonl").write_text("a user's own file\n")  # the default place, next to it
    assert main(base) == 2
    assert "not a JSON-lines results file; pass --results" in _error_line(capsys)


def test_a_results_file_of_ours_is_appended_to(tmp_path) -> None:
    from semmae.cli.eval import check_results_file

    ours = tmp_path / "results.jsonl"
    for text in ("", '{"eval": "knn", "top1": 50.0}\n\n{"eval": "linear"}\n'):
        ours.write_text(text)
        check_results_file(ours, None)  # accepted: empty, or JSON objects a line each
    check_results_file(tmp_path / "new.jsonl", None)  # a new file


def test_a_folder_given_as_the_checkpoint_is_named_as_one(tmp_path, capsys) -> None:
    assert main(["eval", "knn", "--checkpoint", str(tmp_path)]) == 2
    assert "is a folder; give the file (a run's is RUN/checkpoints/last.pt)" in _error_line(capsys)


@pytest.mark.parametrize("flag", ["--out", "--resume", "--overwrite"])
def test_run_directory_flags_of_the_fast_probe_are_refused_not_ignored(tmp_path, capsys, flag: str) -> None:
    argv = [
        "eval",
        "linear",
        "--checkpoint",
        "random:mae_debug",
        "--results",
        str(tmp_path / "r.jsonl"),
        flag,
    ]
    argv += [str(tmp_path / "probe")] if flag == "--out" else []
    assert main(argv) == 2
    line = _error_line(capsys)
    assert f"{flag} is for eval.linear_protocol=mae" in line and "drop " + flag in line
    assert not (tmp_path / "probe").exists() and not (tmp_path / "r.jsonl").exists()


@pytest.mark.parametrize("occupant", ["a user's file", "a run"])
def test_an_occupied_out_of_the_fast_probe_is_refused_for_the_protocol(
    tmp_path, capsys, occupant: str
) -> None:
    # Not "pass --resume" (which the fast probe then refuses): the fix that works is to drop --out.
    out = tmp_path / "probe"
    out.mkdir()
    (out / ("notes.txt" if occupant == "a user's file" else "config.yaml")).write_text("mine\n")
    argv = ["eval", "linear", "--checkpoint", "random:mae_debug", "--results", str(tmp_path / "r.jsonl")]
    assert main([*argv, "--out", str(out)]) == 2
    assert "--out is for eval.linear_protocol=mae" in _error_line(capsys)
    assert sorted(p.name for p in out.iterdir()) == [
        "notes.txt" if occupant == "a user's file" else "config.yaml"
    ]


@pytest.mark.parametrize(
    ("fmt", "name", "fix"),
    [("timm", "notes.txt", "notes.safetensors"), ("onnx", "enc.safetensors", "enc.onnx")],
)
def test_an_export_out_must_carry_its_formats_suffix(tmp_path, capsys, fmt: str, name: str, fix: str) -> None:
    # --overwrite can then only replace a file of that kind: never a user's notes or a checkpoint.
    out = tmp_path / name
    out.write_text("mine")
    argv = ["export", "--checkpoint", "random:mae_debug", "--format", fmt, "--out", str(out), "--overwrite"]
    assert main(argv) == 2
    assert (
        f"--format {fmt} writes a {Path(fix).suffix} file; name --out {str(tmp_path / fix)!r}"
        in _error_line(capsys)
    )
    assert out.read_text() == "mine"


def test_model_overrides_of_an_evaluation_are_said_to_be_ignored(tmp_path, caplog) -> None:
    argv = ["eval", "knn", "--checkpoint", "random:mae_debug", "--results", str(tmp_path / "r.jsonl"),
            "data.name=toy_parts", "data.toy_size=32", "data.image_size=28", "model.name=mae_vit_base_patch16",
            "model.depth=3", "train.device=cpu"]  # fmt: skip
    with caplog.at_level("WARNING", logger="semmae.cli.eval"):
        assert main(argv) == 0
    said = "model.name, model.depth: ignored; an evaluation takes the encoder, architecture included, from"
    assert any(m.startswith(said) for m in caplog.messages)


def test_part_maps_given_to_random_masking_are_said_to_be_ignored(tmp_path, caplog) -> None:
    recipe = str(Path(__file__).parents[2] / "configs" / "debug_tiny.yaml")
    argv = ["pretrain", "--config", recipe, "--out", str(tmp_path / "run"), "data.limit=64",
            "train.max_steps=1", "train.knn_every_epochs=-1", "train.progress_bar=false",
            f"masking.parts={tmp_path / 'maps.npy'}"]  # fmt: skip
    with caplog.at_level("WARNING", logger="semmae.train.pretrain"):
        assert main(argv) == 0
    assert "masking.parts is read by masking.name=semantic only; random masking ignores it" in caplog.messages


def test_a_results_file_that_cannot_be_created_is_refused_before_the_work(
    tmp_path, capsys, monkeypatch
) -> None:
    # A file where its folder would be, or a folder this process may not write: refused before
    # any feature is computed, with the flag that fixes it (eval knn has no --out).
    import semmae.eval.knn as knn

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("the evaluation ran")

    monkeypatch.setattr(knn, "run_knn", never)
    (tmp_path / "t.txt").write_text("mine")
    argv = [
        "eval",
        "knn",
        "--checkpoint",
        "random:mae_debug",
        "--results",
        str(tmp_path / "t.txt" / "r.jsonl"),
    ]
    assert main(argv) == 2
    line = _error_line(capsys)
    assert f"{str(tmp_path / 't.txt')!r} is a file, not a folder; pass --results NEW_FILE.jsonl" in line
    locked = tmp_path / "locked"
    locked.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == locked else real(p, mode))
    argv[-1] = str(locked / "sub" / "r.jsonl")
    assert main(argv) == 2
    assert f"{str(locked)!r} is not writable" in _error_line(capsys)
    assert (tmp_path / "t.txt").read_text() == "mine" and not (locked / "sub").exists()


def test_a_read_only_file_system_names_the_results_flag_where_there_is_no_out() -> None:
    import errno

    from semmae.cli.main import os_error_message

    exc = OSError(errno.EROFS, "Read-only file system", "/ro/run/results.jsonl")
    assert os_error_message(exc, None, False).endswith("choose a --results FILE on a writable file system")
    assert os_error_message(exc, "/ro/run", True).endswith("choose an --out on a writable file system")


def _rgb_folders(root: Path, splits: dict[str, str]) -> None:
    """Solid red (a), green (b) and blue (c) images under ``root/<split>/<class>/``."""
    from PIL import Image

    colours = {"a": (255, 0, 0), "b": (0, 255, 0), "c": (0, 0, 255)}
    for split, classes in splits.items():
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(4):
                Image.new("RGB", (28, 28), colours[c]).save(root / split / c / f"{i}.png")


def _knn_folder(root: Path, results: Path) -> list[str]:
    return ["eval", "knn", "--checkpoint", "random:mae_debug", "--results", str(results),
            "data.name=image_folder", f"data.root={root}", "data.in_chans=1", "data.image_size=28",
            "eval.knn_k=3", "train.device=cpu"]  # fmt: skip


def test_knn_on_a_folder_whose_test_split_lacks_a_class(tmp_path, capsys) -> None:
    # test/ has no "a": numbered on its own, green and blue would read as classes 0 and 1 (0% top-1)
    _rgb_folders(tmp_path / "data", {"train": "abc", "test": "bc"})
    assert main(_knn_folder(tmp_path / "data", tmp_path / "r.jsonl")) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["n_train"] == 12 and res["n_test"] == 8 and res["top1"] == 100.0


def test_a_test_class_train_lacks_is_refused_in_one_line(tmp_path, capsys) -> None:
    _rgb_folders(tmp_path / "data", {"train": "ab", "test": "bc"})
    assert main(_knn_folder(tmp_path / "data", tmp_path / "r.jsonl")) == 2
    line = _error_line(capsys)
    assert f"class folder(s) c in {tmp_path / 'data' / 'test'} have no images in" in line
    assert "add their training images" in line and not (tmp_path / "r.jsonl").exists()


@pytest.mark.parametrize("command", ["knn", "linear", "finetune"])
def test_a_one_class_folder_is_refused_not_scored_100(tmp_path, capsys, command: str) -> None:
    _rgb_folders(tmp_path / "data", {"train": "a", "test": "a"})
    argv = _knn_folder(tmp_path / "data", tmp_path / "r.jsonl")
    argv[1] = command
    out = tmp_path / "ft"
    assert main(argv + (["--out", str(out), "eval.ft_batch_size=4"] if command == "finetune" else [])) == 2
    assert "holds one class, so any classifier scores 100%" in _error_line(capsys)
    assert not (tmp_path / "r.jsonl").exists() and not (out / "checkpoints").exists()


def test_a_limit_that_keeps_one_class_is_refused(tmp_path, capsys) -> None:
    _rgb_folders(tmp_path / "data", {"train": "ab", "test": "ab"})  # files listed class by class
    assert main([*_knn_folder(tmp_path / "data", tmp_path / "r.jsonl"), "data.limit=4"]) == 2
    assert "holds one class" in (line := _error_line(capsys)) and "raise data.limit" in line
