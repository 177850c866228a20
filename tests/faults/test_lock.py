"""One process per run directory: a second one is refused in one line; a dead holder's lock is taken over."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from semmae import config as config_lib
from semmae.cli.main import main
from semmae.engine.lock import LOCK_NAME, holds_run_lock, release_run_lock
from semmae.engine.rundir import prepare_run_dir
from semmae.errors import RunDirError

ROOT = Path(__file__).parents[2]
TOY = [
    "data.name=toy_parts", "data.image_size=28", "data.in_chans=1", "data.toy_size=32", "data.mean=[0.27]",
    "data.std=[0.18]", "model.name=mae_debug", "train.device=cpu", "train.progress_bar=false",
    "train.knn_every_epochs=-1", "train.batch_size=16", "train.image_every_epochs=0",
]  # fmt: skip

# A second process that takes the lock of argv[1] (as prepare_run_dir does), says so, and waits.
_HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from semmae.engine.lock import acquire_run_lock
    Path(sys.argv[1]).mkdir(parents=True, exist_ok=True)
    acquire_run_lock(sys.argv[1])
    print("locked", flush=True)
    time.sleep(600)
""")


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}


@pytest.fixture
def holder(tmp_path: Path):
    """A live process holding the lock of ``tmp_path / 'run'``; yields (run dir, process)."""
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(run)], stdout=subprocess.PIPE, env=_env(), text=True
    )
    try:
        assert proc.stdout.readline().strip() == "locked"
        yield run, proc
    finally:
        proc.kill()
        proc.wait()
        release_run_lock(run)


@pytest.mark.parametrize("flag", [[], ["--resume"], ["--overwrite"]], ids=["plain", "resume", "overwrite"])
def test_second_process_is_refused_in_one_line(holder, capsys, flag: list[str]) -> None:
    run, proc = holder
    config_lib.dump(config_lib.load(None, TOY), run / "config.yaml")
    before = sorted(p.name for p in run.iterdir())
    assert main(["pretrain", "--out", str(run), *flag, *TOY]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    expected = f"is in use by PID {proc.pid} on host {socket.gethostname()}; wait for it or stop it"
    assert len(err) == 1 and err[0].startswith("semmae: error: output directory ") and expected in err[0], err
    assert sorted(p.name for p in run.iterdir()) == before  # nothing deleted, nothing written


def test_a_dead_holders_lock_is_taken_over(holder) -> None:
    run, proc = holder
    with pytest.raises(RunDirError, match="in use"):
        prepare_run_dir(run, None, resume=False, overwrite=False)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (run / LOCK_NAME).is_file()  # the stale file is still there
    prepare_run_dir(run, None, resume=False, overwrite=False)
    assert holds_run_lock(run)
    assert json.loads((run / LOCK_NAME).read_text())["pid"] == os.getpid()


def test_the_same_process_may_prepare_a_directory_again(tmp_path: Path) -> None:
    cfg = config_lib.load(None, TOY)
    prepare_run_dir(tmp_path / "run", cfg, resume=False, overwrite=False)
    prepare_run_dir(tmp_path / "run", cfg, resume=True, overwrite=False)  # e.g. a pipeline stage
    assert holds_run_lock(tmp_path / "run")
    release_run_lock(tmp_path / "run")
    assert not holds_run_lock(tmp_path / "run")


def test_a_refused_start_leaves_no_lock_file(tmp_path: Path) -> None:
    run = tmp_path / "mine"
    run.mkdir()
    (run / "notes.txt").write_text("x")
    with pytest.raises(RunDirError, match="not empty"):
        prepare_run_dir(run, None, resume=False, overwrite=False)
    assert [p.name for p in run.iterdir()] == ["notes.txt"] and not holds_run_lock(run)


@pytest.mark.slow
def test_two_pretrains_on_one_out_exactly_one_runs(tmp_path: Path) -> None:
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "semmae", "pretrain", "--out", str(out), *TOY, "data.toy_size=256"]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(), text=True)
             for _ in range(2)]  # fmt: skip
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    refused = next(err for code, err in results if code == 2).strip().splitlines()
    assert len(refused) == 1 and ("is in use by PID" in refused[0] or "is not empty" in refused[0])


@pytest.mark.parametrize("pid", [2**40, 0, -1, "x"])
def test_a_damaged_lock_file_counts_as_held_and_the_run_takes_the_lock(tmp_path: Path, capsys, pid) -> None:
    # Never a signal to process group 0 or -1, never an OverflowError: the look says "maybe held",
    # and the run's own lock, which knows for sure, decides.
    from semmae.engine.lock import may_be_held_elsewhere

    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK_NAME).write_text(json.dumps({"pid": pid, "host": socket.gethostname()}))
    assert may_be_held_elsewhere(run)
    assert main(["pretrain", "--out", str(run), *TOY, "train.max_steps=1"]) == 0  # no process holds it
    err = capsys.readouterr().err
    assert "Traceback" not in err


def test_a_killed_runs_forked_workers_do_not_keep_its_lock(tmp_path: Path) -> None:
    # SIGKILL the holder while a forked child (as a DataLoader worker) lives on: the lock is free at
    # once, so an immediate --resume is not refused as "in use".
    from semmae.engine.lock import acquire_run_lock

    script = textwrap.dedent("""
        import os, sys, time
        from semmae.engine.lock import acquire_run_lock
        acquire_run_lock(sys.argv[1])
        child = os.fork()
        if child == 0:
            os.write(1, b"child\\n")  # after the fork hooks ran in it (one write: lines never mix)
            time.sleep(60)
            os._exit(0)
        os.write(1, f"{child}\\n".encode())
        time.sleep(60)
    """)
    run = tmp_path / "run"
    run.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(run)], stdout=subprocess.PIPE, text=True, env=env
    )
    lines = {proc.stdout.readline().strip() for _ in range(2)}  # the child's pid, and the child ready
    child = int(next(line for line in lines if line != "child"))
    try:
        with pytest.raises(RunDirError, match="is in use by PID"):  # the parent still holds it
            acquire_run_lock(run)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        os.kill(child, 0)  # the child outlives its parent
        assert acquire_run_lock(run)
        release_run_lock(run)
    finally:
        os.kill(child, signal.SIGKILL)
