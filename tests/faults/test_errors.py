"""Bad input that used to end in a traceback (or a trap) is one line and exit code 2."""

from __future__ import annotations

import errno
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from semmae import config as config_lib
from semmae.cli.main import build_parser, main, os_error_message, parse_args
from semmae.engine import rundir
from semmae.engine.lock import release_run_lock
from semmae.engine.rundir import MARKER, has_checkpoint, prepare_run_dir
from semmae.errors import RunDirError
from semmae.models.encoder import ViTEncoder
from semmae.models.export import timm_vit_kwargs

TOY = [
    "data.name=toy_parts", "data.image_size=28", "data.in_chans=1", "data.toy_size=32", "data.mean=[0.27]",
    "data.std=[0.18]", "model.name=mae_debug", "train.device=cpu", "train.progress_bar=false",
]  # fmt: skip


def _one_line(capsys: pytest.CaptureFixture[str], argv: list[str], needle: str) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) >= 1 and err[-1].startswith("semmae: error: ") and needle in err[-1], err
    assert not any("Traceback" in line for line in err)
    return err[-1]


def test_a_binary_config_file(tmp_path: Path, capsys) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe\xfa")
    _one_line(capsys, ["pretrain", "--config", str(path), "--out", str(tmp_path / "r")], "is not UTF-8 text")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    ("override", "key"),
    [("data.std=[0.0]", "data.std"), ("data.std=[-0.5]", "data.std"),
     ("train.ckpt_every_steps=-5", "train.ckpt_every_steps"), ("train.warmup_epochs=-1", "train.warmup_epochs")],
)  # fmt: skip
def test_config_values_out_of_range(tmp_path: Path, capsys, override: str, key: str) -> None:
    _one_line(capsys, ["pretrain", "--out", str(tmp_path / "r"), *TOY, override], f"config key {key!r}")


def test_overrides_after_options_are_applied() -> None:
    args = parse_args(
        build_parser(), ["pretrain", "train.epochs=2", "--out", "R", "train.seed=3", "--resume"]
    )
    assert args.overrides == ["train.epochs=2", "train.seed=3"] and args.out == "R" and args.resume
    args = parse_args(build_parser(), ["eval", "knn", "--checkpoint", "random:mae_debug", "eval.knn_k=3"])
    assert args.overrides == ["eval.knn_k=3"]
    with pytest.raises(SystemExit):
        parse_args(build_parser(), ["pretrain", "--out", "R", "--no-such-flag"])
    with pytest.raises(SystemExit):  # export takes no overrides
        parse_args(build_parser(), ["export", "--checkpoint", "a", "--format", "timm", "--out", "b", "x.y=1"])


@pytest.mark.parametrize(
    ("argv", "prog", "needle"),
    [
        (["pretrain"], "semmae pretrain", "required: --out"),
        (["frob"], "semmae", "invalid choice: 'frob'"),
        (["eval", "knn"], "semmae eval knn", "required: --checkpoint"),
        (
            ["parts", "export", "--run", "r", "--split", "test", "--out", "o", "--zz"],
            "semmae parts export",
            "--zz",
        ),
        (
            ["pretrain", "--out", "R", "--no-such-flag"],
            "semmae pretrain",
            "unrecognized arguments: --no-such-flag",
        ),
        (
            ["export", "--checkpoint", "a", "--format", "timm", "--out", "b", "x.y=1"],
            "semmae export",
            "x.y=1",
        ),
    ],
)
def test_usage_errors_are_one_line_naming_the_commands_help(capsys, argv, prog, needle) -> None:
    with pytest.raises(SystemExit) as stop:
        parse_args(build_parser(), argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1, err
    assert (
        err[0].startswith(f"{prog}: error: ")
        and needle in err[0]
        and err[0].endswith(f"(see '{prog} --help')")
    )


def test_an_override_after_out_reaches_the_config(tmp_path: Path, capsys) -> None:
    _one_line(
        capsys,
        ["pretrain", "data.limit=5", "--out", str(tmp_path / "r"), "masking.ratio=1.5"],
        "masking.ratio",
    )


def _timm_file(path: Path, **meta: str) -> str:
    enc = ViTEncoder(img_size=28, patch_size=4, in_chans=1, embed_dim=192, depth=1, num_heads=3)
    base = {"timm_kwargs": json.dumps(timm_vit_kwargs(enc)), "mean": "[0.5]", "std": "[0.5]"}
    save_file({k: v.contiguous() for k, v in enc.state_dict().items()}, str(path), metadata={**base, **meta})
    return str(path)


def test_a_good_safetensors_file_loads(tmp_path: Path) -> None:
    from semmae.models.encoder import load_encoder

    enc, meta = load_encoder(_timm_file(tmp_path / "ok.safetensors"))
    assert enc.num_heads == 3 and meta["mean"] == [0.5]


@pytest.mark.parametrize(
    ("meta", "needle"),
    [
        ({"timm_kwargs": "{not json"}, "'timm_kwargs' metadata that is not JSON"),
        ({"timm_kwargs": "[1, 2]"}, "'timm_kwargs' metadata of the wrong kind"),
        ({"timm_kwargs": json.dumps({"num_heads": 7})}, "num_heads=7, which does not divide its width 192"),
        ({"timm_kwargs": json.dumps({"num_heads": 0})}, "num_heads=0"),
        ({"timm_kwargs": json.dumps({"mlp_ratio": 3.0})}, "does not fit the architecture it records"),
        ({"mean": "[0.1, 0.2, 0.3, 0.4, 0.5]", "std": "[0.2, 0.2, 0.2, 0.2, 0.2]"}, "1-channel encoder"),
        ({"mean": "[0.1, 0.2, 0.3, 0.4, 0.5]"}, "does not fit"),
        ({"std": "[0.0]"}, "std > 0"),
        ({"mean": "nan"}, "not JSON"),
    ],
    ids=[
        "bad_json",
        "not_a_dict",
        "heads_7",
        "heads_0",
        "mlp_ratio",
        "mean_5",
        "mean_5_std_1",
        "std_0",
        "nan",
    ],
)
def test_bad_safetensors_metadata(tmp_path: Path, capsys, meta: dict[str, str], needle: str) -> None:
    path = _timm_file(tmp_path / "enc.safetensors", **meta)
    _one_line(capsys, ["eval", "knn", "--checkpoint", path, *TOY], needle)


def test_part_checkpoints_naming_each_other_as_backbone(tmp_path: Path, capsys, caplog) -> None:
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    for path, other in ((a, b), (b, a)):
        cfg = {"parts": {"backbone": str(other)}}
        torch.save({"kind": "parts", "model": {"head.w": torch.ones(2)}, "config": cfg}, path)
    with caplog.at_level(logging.INFO):
        err = _one_line(
            capsys, ["eval", "knn", "--checkpoint", str(a), *TOY], "name each other as parts.backbone"
        )
    assert f"{a} -> {b} -> {a}" in err
    assert len(caplog.records) <= 3


def test_a_failed_start_is_restartable(tmp_path: Path, caplog) -> None:
    run = tmp_path / "run"
    cfg = config_lib.load(None, TOY)
    prepare_run_dir(run, cfg, resume=False, overwrite=False)  # then the process died: a failed start
    release_run_lock(run)
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / ".last.pt.abc123.tmp").write_bytes(b"")  # SIGKILL during a save
    cfg.train.seed = 7
    prepare_run_dir(run, cfg, resume=False, overwrite=False)  # a plain run is allowed again
    assert config_lib.load(run / "config.yaml").train.seed == 7  # and writes its own config
    assert not list(run.rglob("*.tmp"))
    release_run_lock(run)
    with caplog.at_level(logging.INFO):
        prepare_run_dir(run, cfg, resume=True, overwrite=False)
    assert "starting from scratch" in caplog.text and (run / MARKER).is_file()


def test_stale_temp_files_go_when_a_run_is_resumed(tmp_path: Path) -> None:
    run = tmp_path / "run"
    prepare_run_dir(run, None, resume=False, overwrite=False)
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.pt").write_bytes(b"ckpt")
    (run / "checkpoints" / ".last.pt.x1y2.tmp").write_bytes(b"")
    prepare_run_dir(run, None, resume=True, overwrite=False)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.pt"] and has_checkpoint(run)


@pytest.mark.parametrize(
    ("code", "needle"),
    [(errno.EDQUOT, "quota exceeded"), (errno.ENOSPC, "no space left"), (errno.EACCES, "permission denied"),
     (errno.EROFS, "read-only file system")],
)  # fmt: skip
def test_a_write_refused_at_start_is_one_line_and_leaves_nothing(
    tmp_path: Path, capsys, monkeypatch, code: int, needle: str
) -> None:
    def refuse(path: Path) -> None:
        raise OSError(code, os.strerror(code), str(path))

    monkeypatch.setattr(rundir, "atomic_path", refuse)
    err = _one_line(capsys, ["pretrain", "--out", str(tmp_path / "run"), *TOY], needle)
    assert str(tmp_path / "run") in err
    assert not (tmp_path / "run").exists()  # created by this start, so removed with it


def test_other_os_errors_keep_their_traceback() -> None:
    assert os_error_message(OSError(errno.ENOENT, "No such file", "x"), None, True) is None
    line = os_error_message(OSError(errno.ENOSPC, "No space", None), "runs/a", True)
    assert "'runs/a'" in line and "--resume" in line
    assert "--resume" not in os_error_message(OSError(errno.ENOSPC, "No space", None), "f.onnx", False)


def test_a_start_killed_before_its_first_checkpoint_runs_again(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    prepare_run_dir(run, config_lib.load(None, TOY), resume=False, overwrite=False)
    release_run_lock(run)  # as if its process had been killed
    (run / "metrics.jsonl").write_text('{"step": 99, "loss": 1.0}\n')
    (run / "tb").mkdir()
    (run / "tb" / "events.out.tfevents.1.host").write_bytes(b"\0")
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / ".last.pt.k1ll.tmp").write_bytes(b"")
    argv = [
        "pretrain",
        "--out",
        str(run),
        *TOY,
        "train.batch_size=16",
        "train.max_steps=2",
        "train.log_every=1",
    ]
    assert main([*argv, "train.knn_every_epochs=-1", "train.image_every_epochs=0"]) == 0
    capsys.readouterr()
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert 99 not in steps and 2 in steps
    assert not list(run.rglob("*.tmp")) and (run / "checkpoints" / "last.pt").is_file()


def test_a_run_with_a_checkpoint_is_never_cleared_without_asking(tmp_path: Path) -> None:
    run = tmp_path / "run"
    prepare_run_dir(run, None, resume=False, overwrite=False)
    release_run_lock(run)
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.pt").write_bytes(b"ckpt")
    with pytest.raises(RunDirError, match="not empty"):
        prepare_run_dir(run, None, resume=False, overwrite=False)
    assert (run / "metrics.jsonl").read_text() == '{"step": 1}\n'


@pytest.mark.slow
def test_sigkill_before_the_first_checkpoint_then_a_plain_rerun(tmp_path: Path) -> None:
    run = tmp_path / "run"
    base = [sys.executable, "-m", "semmae", "pretrain", "--out", str(run), *TOY, "train.batch_size=16",
            "train.knn_every_epochs=-1", "train.image_every_epochs=0", "train.log_every=1"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([*base, "data.toy_size=4096", "train.ckpt_every_steps=0"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not (run / "metrics.jsonl").is_file():
        time.sleep(0.2)
    proc.kill()
    proc.wait()
    assert (run / "metrics.jsonl").is_file() and not (run / "checkpoints" / "last.pt").exists()
    done = subprocess.run([*base, "train.max_steps=2"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])["step"] == 2


def test_an_error_in_a_data_loader_worker_is_one_line(tmp_path: Path, capsys) -> None:
    from PIL import Image

    for split in ("train", "test"):
        folder = tmp_path / "imgs" / split / "a"
        folder.mkdir(parents=True)
        for i in range(4):
            Image.new("L", (8, 8), 90).save(folder / f"{i}.png")
    Image.new("I", (8, 8), 70000).save(tmp_path / "imgs" / "train" / "a" / "wide.tif")  # refused when read
    argv = [
        "pretrain", "--out", str(tmp_path / "run"), *TOY, "data.name=image_folder",
        f"data.root={tmp_path / 'imgs'}", "data.image_size=8", "data.num_workers=1", "train.batch_size=5",
        "train.max_steps=1", "train.knn_every_epochs=-1", "train.image_every_epochs=0",
    ]  # fmt: skip
    line = _one_line(capsys, argv, "wide.tif holds 32-bit integer pixels; convert it")
    assert "DataLoader worker" not in line


@pytest.mark.parametrize(
    ("out", "needle"),
    [
        ("file.txt/run", "Not a directory"),
        ("o/" + "a" * 300, "File name too long"),
        ("dangling", "a file or a broken link is in the way"),
    ],
)
def test_an_out_the_file_system_cannot_create_is_one_line(
    tmp_path: Path, capsys, out: str, needle: str
) -> None:
    (tmp_path / "file.txt").write_text("precious")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    line = _one_line(capsys, ["pretrain", "--out", str(tmp_path / out), *TOY, "train.max_steps=1"], needle)
    assert "choose another --out" in line
    assert (tmp_path / "file.txt").read_text() == "precious"


def test_a_path_error_elsewhere_keeps_its_traceback() -> None:
    assert (
        os_error_message(NotADirectoryError(errno.ENOTDIR, "Not a directory", "/src/x"), "runs/a", True)
        is None
    )


def test_part_grid_and_export_outs_that_are_folders_or_not_images(tmp_path: Path, capsys) -> None:
    _one_line(
        capsys, ["parts", "show", "--maps", "m.npy", "--out", str(tmp_path / "g.txt")], "image file extension"
    )
    _one_line(capsys, ["parts", "show", "--maps", "m.npy", "--out", str(tmp_path)], "is a folder")
    argv = ["export", "--checkpoint", "random:mae_debug", "--format", "timm", "--out", str(tmp_path)]
    _one_line(capsys, argv, "is a directory; give a file name")


_PARTS_EXPORT = ["parts", "export", "--run", "R", "--split", "test"]
_PARTS_SHOW = ["parts", "show", "--maps", "M.npy", "--config", "C.yaml"]
_BAD_PART_MAP_FLAGS = [
    ([*_PARTS_EXPORT, "--batch-size", "0"], "--batch-size must be at least 1"),
    ([*_PARTS_EXPORT, "--batch-size", "-4"], "--batch-size must be at least 1"),
    ([*_PARTS_EXPORT, "--device", "gpu7"], "--device must be auto, cpu, cuda, cuda:N or mps, got 'gpu7'"),
    ([*_PARTS_SHOW, "--n", "0"], "--n must be at least 1"),
    ([*_PARTS_SHOW, "--n", "-1"], "--n must be at least 1"),
]


@pytest.mark.parametrize(("argv", "needle"), _BAD_PART_MAP_FLAGS)
def test_bad_part_map_flags_are_refused_before_any_work(tmp_path: Path, capsys, argv, needle) -> None:
    # The run, maps and config named do not exist: a check that came later would complain of them.
    out = tmp_path / ("o.png" if "show" in argv else "o.npy")
    _one_line(capsys, [*argv, "--out", str(out)], needle)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("argv", "needle"), _BAD_PART_MAP_FLAGS)
def test_bad_part_map_flags_are_refused_before_torch_is_imported(tmp_path: Path, argv, needle) -> None:
    code = (
        "import sys\nfrom semmae.cli.main import main\n"
        f"rc = main({[*argv, '--out', str(tmp_path / 'o.png')]!r})\n"
        "sys.exit(rc if 'torch' not in sys.modules else 99)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and needle in done.stderr, done.stderr


def test_parts_export_on_cuda_without_cuda_names_its_own_flag(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    argv = [*_PARTS_EXPORT, "--device", "cuda", "--out", str(tmp_path / "o.npy")]
    line = _one_line(capsys, argv, "use --device cpu")
    assert "train.device" not in line and list(tmp_path.iterdir()) == []


def test_a_damaged_last_checkpoint_on_resume_says_how_to_go_on(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    argv = [
        "pretrain",
        "--out",
        str(run),
        *TOY,
        "train.max_steps=1",
        "train.knn_every_epochs=-1",
        "train.batch_size=8",
    ]
    assert main(argv) == 0
    capsys.readouterr()
    last = run / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:5000])  # damaged after it was written
    resume = ["pretrain", "--config", str(run / "config.yaml"), "--out", str(run), "--resume"]
    _one_line(capsys, resume, "could not be read")
    assert "start the run again with --overwrite" in _one_line(capsys, resume, "last.pt")
    (run / "checkpoints" / "epoch_0001.pt").write_bytes(b"kept")
    assert "copy epoch_0001.pt over last.pt" in _one_line(capsys, resume, "last.pt")


def test_a_trained_run_without_its_last_checkpoint_is_not_trained_again_from_scratch(
    tmp_path: Path, capsys
) -> None:
    # --resume would otherwise start at step 0 and log a second history over the first.
    run = tmp_path / "run"
    argv = [
        "pretrain",
        "--out",
        str(run),
        *TOY,
        "train.max_steps=2",
        "train.knn_every_epochs=-1",
        "train.batch_size=8",
    ]
    assert main([*argv, "train.image_every_epochs=0"]) == 0
    capsys.readouterr()
    (run / "checkpoints" / "last.pt").unlink()
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    resume = ["pretrain", "--config", str(run / "config.yaml"), "--out", str(run), "--resume"]
    line = _one_line(
        capsys, resume, "has trained (summary.json, metrics.jsonl) but has no checkpoints/last.pt"
    )
    assert line.endswith("start the run again with --overwrite")
    after = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != ".semmae.lock"}
    assert after == {k: v for k, v in before.items() if k != ".semmae.lock"}


def test_a_checkpoint_of_another_kind_names_the_command_that_resumes_it(tmp_path: Path) -> None:
    from semmae.engine.state import load_run_state
    from semmae.errors import CheckpointError
    from semmae.models.checkpoint import save_checkpoint

    (tmp_path / "checkpoints").mkdir()
    save_checkpoint(tmp_path / "checkpoints" / "last.pt", {"kind": "finetune", "arch": {}})
    with pytest.raises(CheckpointError, match="is a 'finetune' checkpoint, not a 'mae' one "
                       r"\(`semmae eval finetune --resume` continues it\); give this run another --out"):  # fmt: skip
        load_run_state(
            tmp_path, kind="mae", arch={}, model=torch.nn.Linear(1, 1), optimizer=None, config=None
        )


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["pretrain", "train.min_lr=1", "train.batch_size=16"], "train.min_lr=1 is above the peak learning rate"),
        (["eval", "finetune", "--checkpoint", "random:mae_debug", "eval.ft_min_lr=1", "eval.ft_batch_size=16"],
         "eval.ft_min_lr=1 is above the peak learning rate"),
        (["parts", "train", "parts.min_lr=1", "parts.lr=0.01", "parts.backbone=random:mae_debug", "parts.batch_size=16"], "parts.min_lr=1 is above the peak learning rate 0.01"),
    ],
)  # fmt: skip
def test_a_schedule_floor_above_its_peak_is_refused(
    tmp_path: Path, capsys, argv: list[str], needle: str
) -> None:
    line = _one_line(capsys, [*argv, "--out", str(tmp_path / "r"), *TOY], needle)
    assert "lower " + needle.split("=")[0] in line  # the fix, by the setting's name
    assert not (tmp_path / "r").exists()  # refused before the run directory (and any data) was made
