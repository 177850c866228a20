"""Ctrl-C at start-up is never raised inside an import, and is not lost either."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from semmae.cli.interrupts import interrupts_outside_imports

RECIPE = Path(__file__).resolve().parents[2] / "configs" / "fmnist_tiny.yaml"


def _module(tmp_path: Path, name: str) -> None:
    """A module whose import is hit by Ctrl-C halfway, then does more work and marks itself done."""
    (tmp_path / f"{name}.py").write_text(
        "import signal, time\nsignal.raise_signal(signal.SIGINT)\ntime.sleep(0.05)\nDONE = True\n"
    )


def test_a_ctrl_c_inside_an_import_is_raised_once_the_import_has_finished(tmp_path, monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    _module(tmp_path, "slow_to_import")
    with interrupts_outside_imports(), pytest.raises(KeyboardInterrupt):
        import slow_to_import  # noqa: F401

        assert sys.modules["slow_to_import"].DONE  # the module is whole
        time.sleep(2.0)  # the deferred Ctrl-C arrives here
        pytest.fail("the Ctrl-C was lost")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back


def test_without_it_the_import_is_cut_short(tmp_path, monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    _module(tmp_path, "cut_short")
    with pytest.raises(KeyboardInterrupt):
        import cut_short  # noqa: F401
    assert "cut_short" not in sys.modules


def test_outside_imports_a_ctrl_c_is_raised_at_once() -> None:
    with interrupts_outside_imports(), pytest.raises(KeyboardInterrupt):
        signal.raise_signal(signal.SIGINT)
        pytest.fail("not raised at once")


def test_the_command_interrupted_while_it_starts_exits_130_in_one_line(tmp_path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "semmae", "pretrain", "--config", str(RECIPE),
         "--out", str(tmp_path / "run"), "train.max_steps=1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(0.4)  # importing PyTorch
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and err.strip().splitlines()[-1] == "semmae: interrupted", err
    assert "Traceback" not in err


def test_a_second_ctrl_c_during_a_hung_import_is_raised_at_once(tmp_path, monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "hangs.py").write_text(
        "import signal\nsignal.raise_signal(signal.SIGINT)\nsignal.raise_signal(signal.SIGINT)\n"
        "import time\ntime.sleep(5)\nDONE = True\n"
    )
    start = time.perf_counter()
    with interrupts_outside_imports(), pytest.raises(KeyboardInterrupt):
        import hangs  # noqa: F401
    assert time.perf_counter() - start < 2.0 and "hangs" not in sys.modules  # not after the 5 s


def test_sigterm_outside_a_training_loop_says_so_and_exits_143(tmp_path) -> None:
    # eval knn has no training loop: SIGTERM used to end it silently (the default action). It is
    # sent once the train split is built, with the test split and the features still to come.
    proc = subprocess.Popen(
        [sys.executable, "-m", "semmae", "eval", "knn", "--checkpoint", "random:mae_debug",
         "--results", str(tmp_path / "r.jsonl"), "data.name=toy_parts", "data.toy_size=3000"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if line.startswith("dataset toy_parts/train"):
            proc.send_signal(signal.SIGTERM)
            break
    _, err = proc.communicate(timeout=60)
    err = "".join(seen) + err
    assert proc.returncode == 143 and err.strip().splitlines()[-1] == "semmae: stopped by SIGTERM", err
    assert "Traceback" not in err and not (tmp_path / "r.jsonl").exists()


def test_a_sigterm_inside_an_import_is_raised_once_the_import_has_finished(tmp_path, monkeypatch) -> None:
    from semmae.errors import Terminated

    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "termed.py").write_text(
        "import signal, time\nsignal.raise_signal(signal.SIGTERM)\ntime.sleep(0.05)\nDONE = True\n"
    )
    with interrupts_outside_imports(), pytest.raises(Terminated):
        import termed  # noqa: F401

        assert sys.modules["termed"].DONE
        time.sleep(2.0)
        pytest.fail("the SIGTERM was lost")
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # put back


def test_a_pipeline_stopped_outside_a_training_step_prints_its_resume(tmp_path, monkeypatch, capsys) -> None:
    import semmae.pipeline.stages as stages
    from semmae.cli.main import main
    from semmae.errors import Terminated

    def stopped(*args: object, **kwargs: object) -> None:
        raise Terminated

    monkeypatch.setattr(stages, "run_pipeline", stopped)
    out = tmp_path / "p"
    assert main(["pipeline", "--config", str(RECIPE.parent / "debug_tiny.yaml"), "--out", str(out)]) == 143
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == (
        f"semmae: stopped by SIGTERM; what was finished is kept. Continue with: semmae pipeline "
        f"--config {out / 'config.yaml'} --out {out} --resume"
    )


def test_a_second_sigterm_takes_the_default_action() -> None:
    # So `kill PID; kill PID` ends a process even where the first one's exception cannot surface
    # (a C call that does not return), in the training loop and outside it alike.
    from semmae.engine.signals import StopRequest
    from semmae.errors import Terminated

    with interrupts_outside_imports():
        with StopRequest() as stop:
            signal.raise_signal(signal.SIGTERM)
            assert stop.signum == signal.SIGTERM and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        with pytest.raises(Terminated):
            signal.raise_signal(signal.SIGTERM)
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
