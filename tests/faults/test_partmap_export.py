"""A part-map export is all or nothing: an error, Ctrl-C or a kill never costs the old pair.

Every writer of part maps (``parts export``, ``parts from-masks``, the pipeline's export stage)
fills temporary files and moves the ``.npy`` and its ``.json`` manifest into place only once both
are whole; these tests break an export at each point and look at what is left.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from semmae import config as config_lib
from semmae.cli.main import main
from semmae.data import partmap_writer
from semmae.data.partmap_writer import PartMapWriter, write_part_maps
from semmae.data.partmaps import load_part_maps

_OVERRIDES = [
    "data.name=toy_parts", "data.image_size=28", "data.in_chans=1", "data.toy_size=48",
    "data.mean=[0.27]", "data.std=[0.18]", "parts.backbone=random:mae_debug", "parts.num_parts=4",
    "parts.batch_size=16", "parts.mlp_hidden=32", "parts.decoder_channels=16", "parts.style_dim=16",
    "parts.epochs=1", "parts.eval_limit=24", "parts.eval_kmeans=false", "parts.num_vis=1",
    "train.progress_bar=false", "train.device=cpu",
]  # fmt: skip
_META = dict(dataset="toy_parts", split="train", image_size=28, num_parts=4, fingerprint="f00dcafe")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, single_thread: None) -> Path:
    """A tiny trained part learner (48 test images: 6 batches of 8), on one thread (then restored)."""
    from semmae.train.parts import run_parts_train

    out = tmp_path_factory.mktemp("parts") / "run"
    run_parts_train(config_lib.load(None, _OVERRIDES), out)
    return out


def _export(run: Path, out: Path, *extra: str) -> int:
    argv = ["parts", "export", "--run", str(run), "--split", "test", "--out", str(out), "--device", "cpu"]
    return main([*argv, "--batch-size", "8", *extra])


def _files(folder: Path) -> dict[str, bytes]:
    """Every file in ``folder`` (hidden temporary ones included) with its bytes."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _fail_after(monkeypatch: pytest.MonkeyPatch, batches: int, exc: BaseException) -> dict[str, int]:
    """Make the writer raise ``exc`` when it is given batch ``batches + 1``."""
    real, calls = PartMapWriter.write, {"n": 0}

    def write(self: PartMapWriter, indices: torch.Tensor, labels: torch.Tensor) -> None:
        calls["n"] += 1
        if calls["n"] > batches:
            raise exc
        real(self, indices, labels)

    monkeypatch.setattr(PartMapWriter, "write", write)
    return calls


def _export_breaks(run: Path, out: Path, exc: BaseException, *extra: str) -> None:
    if isinstance(exc, KeyboardInterrupt):
        assert _export(run, out, *extra) == 130  # the CLI's "semmae: interrupted"
    else:
        with pytest.raises(type(exc), match=str(exc)):  # a bug keeps its traceback
            _export(run, out, *extra)


BREAKS = pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()], ids=["error", "ctrl-c"])


@BREAKS
def test_an_overwrite_that_fails_midway_keeps_the_old_pair(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exc: BaseException
) -> None:
    assert _export(run, tmp_path / "maps.npy") == 0
    before = _files(tmp_path)
    assert set(before) == {"maps.npy", "maps.json"}
    calls = _fail_after(monkeypatch, 3, exc)
    _export_breaks(run, tmp_path / "maps.npy", exc, "--overwrite")
    assert calls["n"] == 4  # three batches were written before it broke
    assert _files(tmp_path) == before  # byte-identical, and no temporary file left behind
    load_part_maps(tmp_path / "maps.npy")


@BREAKS
def test_a_first_export_that_fails_midway_leaves_nothing(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exc: BaseException
) -> None:
    calls = _fail_after(monkeypatch, 2, exc)
    _export_breaks(run, tmp_path / "maps", exc)
    assert calls["n"] == 3
    assert _files(tmp_path) == {}
    monkeypatch.undo()
    assert _export(run, tmp_path / "maps") == 0  # nothing blocks the rerun
    assert set(_files(tmp_path)) == {"maps.npy", "maps.json"}


def _labels(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 4, size=(10, 7, 7), dtype=np.uint8)


def _pair(folder: Path) -> tuple[bytes | None, bytes | None]:
    npy, manifest = folder / "maps.npy", folder / "maps.json"
    return (
        npy.read_bytes() if npy.exists() else None,
        manifest.read_bytes() if manifest.exists() else None,
    )


def _renames(monkeypatch: pytest.MonkeyPatch, folder: Path, *, fail_at: int = 0, after: bool = False) -> list:
    """Record the pair after every rename; break rename ``fail_at`` (before it, or ``after`` it)."""
    real, seen = os.replace, []

    def replace(src: object, dst: object) -> None:
        if len(seen) + 1 == fail_at and not after:
            seen.append(_pair(folder))
            raise OSError(5, "Input/output error")
        real(src, dst)
        seen.append(_pair(folder))
        if len(seen) == fail_at and after:
            raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", replace)
    return seen


def test_a_reader_never_sees_a_manifest_beside_the_wrong_array(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = write_part_maps(tmp_path / "maps.npy", _labels(0), **_META, source="oracle")
    old_pair = _pair(tmp_path)
    seen = _renames(monkeypatch, tmp_path)
    write_part_maps(tmp_path / "maps.npy", _labels(1), **_META, source="learner")
    monkeypatch.undo()
    new_pair = _pair(tmp_path)
    assert old.source == "oracle" and new_pair[0] != old_pair[0] and new_pair[1] != old_pair[1]
    allowed = {old_pair, (old_pair[0], None), (None, None), (new_pair[0], None), new_pair}
    assert len(seen) >= 3 and all(state in allowed for state in seen), seen
    assert set(_files(tmp_path)) == {"maps.npy", "maps.json"}  # the old pair's hidden copies are gone


@pytest.mark.parametrize("after", [False, True], ids=["io-error-before", "ctrl-c-after"])
@pytest.mark.parametrize("fail_at", [1, 2, 3, 4])
def test_a_break_while_the_pair_is_swapped_puts_the_old_pair_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail_at: int, after: bool
) -> None:
    write_part_maps(tmp_path / "maps.npy", _labels(0), **_META)
    before = _files(tmp_path)
    old_pair = _pair(tmp_path)
    seen = _renames(monkeypatch, tmp_path, fail_at=fail_at, after=after)
    with pytest.raises(KeyboardInterrupt if after else OSError):
        write_part_maps(tmp_path / "maps.npy", _labels(1), **_META)
    monkeypatch.undo()
    assert len(seen) >= fail_at
    assert all(npy is not None or manifest is None for npy, manifest in seen)  # never a lone manifest
    assert _files(tmp_path) == before and _pair(tmp_path) == old_pair


@pytest.mark.parametrize("fail_at", [1, 2])
def test_a_break_while_a_first_pair_moves_in_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail_at: int
) -> None:
    _renames(monkeypatch, tmp_path, fail_at=fail_at, after=True)
    with pytest.raises(KeyboardInterrupt):
        write_part_maps(tmp_path / "maps.npy", _labels(1), **_META)
    monkeypatch.undo()
    assert _files(tmp_path) == {}


def _states_at_renames(monkeypatch: pytest.MonkeyPatch, folder: Path) -> list[dict[str, bytes]]:
    """Every file of ``folder`` before each rename and before each unlink: what a kill there leaves."""
    replace, unlink, states = os.replace, Path.unlink, []

    def replace_(src: object, dst: object) -> None:
        states.append(_files(folder))
        replace(src, dst)

    def unlink_(path: Path, missing_ok: bool = False) -> None:
        states.append(_files(folder))
        unlink(path, missing_ok=missing_ok)

    monkeypatch.setattr(os, "replace", replace_)
    monkeypatch.setattr(Path, "unlink", unlink_)
    return states


def test_a_kill_in_the_swap_leaves_the_old_pair_for_the_next_export(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The old pair is set aside under names no stale-temp cleanup takes; before anything else the
    # next export puts it back (swap unfinished) or drops it (swap finished), so no kill point
    # costs the old pair or lets an export without --overwrite replace it.
    live = tmp_path / "live"
    live.mkdir()
    write_part_maps(live / "maps.npy", _labels(0), **_META)
    old_pair = _pair(live)
    states = _states_at_renames(monkeypatch, live)
    write_part_maps(live / "maps.npy", _labels(1), **_META)
    monkeypatch.undo()
    new_pair = _pair(live)
    states = [s for s in states if any(n.endswith(".old") for n in s)]  # from the first set-aside on
    assert len(states) >= 5  # names reserved, set-asides, both moves in, the unlinks
    for k, state in enumerate(states):
        finished = (state.get("maps.npy"), state.get("maps.json")) == new_pair
        killed = tmp_path / f"killed{k}"
        killed.mkdir()
        for name, data in state.items():
            (killed / name).write_bytes(data)
        partmap_writer.recover_set_aside_pair(killed / "maps.npy")
        assert _pair(killed) == (new_pair if finished else old_pair), k
        assert not any(n.endswith(".old") for n in _files(killed)), k
    # The worst point (both files set aside): the next export without --overwrite is refused.
    assert _export(run, tmp_path / "killed2" / "maps.npy") == 2
    assert _pair(tmp_path / "killed2") == old_pair


def test_temp_files_of_a_killed_export_go_with_the_next_export(run: Path, tmp_path: Path) -> None:
    left = [".maps.npy.k1lled00.tmp", ".maps.json.k1lled00.tmp"]  # what atomic_path names them
    for name in left:
        (tmp_path / name).write_bytes(b"\0" * 64)
    (tmp_path / ".maps.npy.notes").write_text("mine")  # not a temporary name of the export: kept
    assert _export(run, tmp_path / "maps.npy") == 0
    assert set(_files(tmp_path)) == {"maps.npy", "maps.json", ".maps.npy.notes"}


def test_from_masks_interrupted_before_the_swap_keeps_the_old_pair(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tmp_path / "cfg" / "recipe.yaml"
    cfg.parent.mkdir()
    config_lib.dump(config_lib.load(None, _OVERRIDES), cfg)
    out = tmp_path / "out"
    argv = ["parts", "from-masks", "--config", str(cfg), "--split", "train", "--out", str(out / "maps.npy")]
    assert main([*argv, "--grid", "7"]) == 0
    before = _files(out)

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt  # the new array is whole on disk, the manifest not yet written

    monkeypatch.setattr(partmap_writer, "asdict", interrupted)
    assert main([*argv, "--grid", "4", "--overwrite"]) == 130
    assert _files(out) == before


def test_an_out_without_npy_names_the_files_written(run: Path, tmp_path: Path, capsys, caplog) -> None:
    caplog.set_level("INFO")
    assert _export(run, tmp_path / "pe3") == 0
    npy, manifest = tmp_path / "pe3.npy", tmp_path / "pe3.json"
    assert set(_files(tmp_path)) == {npy.name, manifest.name}
    assert f"wrote {npy} and {manifest}:" in capsys.readouterr().out
    logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("wrote")]
    assert logged and all(f"to {npy} and {manifest}" in m for m in logged), logged


def test_an_unfinished_part_learner_exports_with_a_warning(
    run: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from semmae.train.parts import run_parts_train

    stopped = tmp_path / "stopped"
    run_parts_train(config_lib.load(None, _OVERRIDES), stopped, stop_at_step=1)
    with caplog.at_level("WARNING"):
        assert _export(stopped, tmp_path / "early.npy") == 0
    assert "stopped at step 1 of 3: its parts are not the finished ones" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert _export(run, tmp_path / "done.npy") == 0  # a finished learner: no warning
    assert "stopped at step" not in caplog.text
