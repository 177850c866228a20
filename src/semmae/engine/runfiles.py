"""What the toolkit writes into run directories, and how a directory is recognised as a run.

:mod:`semmae.engine.rundir` deletes only what these rules call the toolkit's: its files at any
level of a run tree, its single-kind sub-directories, part maps with their manifests, stage
directories, temp files of atomic writes and the folder an ``--overwrite`` moves a run into.
"""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path

from semmae import config as config_lib
from semmae.config_checks import read_recipe
from semmae.engine.lock import LOCK_NAME, may_be_held_elsewhere
from semmae.errors import RunDirError, SemmaeError
from semmae.file_kinds import is_part_map_manifest

MARKER = ".semmae-run"
# Files the toolkit writes at any level of a run tree (run, pipeline, study and stage directories).
RUN_FILES = frozenset({
    MARKER, LOCK_NAME, "config.yaml", "metrics.jsonl", "summary.json", "results.jsonl", "DONE.json",
    "PARTIAL.json", "partseg.json", "eval.json", "report.md", "report.html", "study.json", "study.md",
    "study.html",
})  # fmt: skip
EPOCH_CHECKPOINT = re.compile(r"epoch_(\d{4,})\.pt")  # what the loop keeps every N epochs
# Sub-directories holding only files of one kind: their names, as full-match regular expressions.
FILE_DIRS: dict[str, tuple[str, ...]] = {
    "checkpoints": (r"last\.pt", EPOCH_CHECKPOINT.pattern, r"nonfinite\.pt"),  # a user's copy is not ours
    "tb": (r"events\.out\.tfevents\..+",),
    "images": (r".+\.png",),
    "figures": (r".+\.png",),
}
# Sub-directories of pipelines and studies (stages, the study's shared prefix and its runs).
STAGE_DIRS = frozenset({"mae", "parts", "export", "semmae", "eval", "prefix", "runs"})
# Part-map files the pipeline and study write (an interrupted export may lack its manifest).
PART_MAP_NAMES = frozenset({"parts_train.npy", "parts_test.npy", "oracle_train.npy"})
TEMP_PATTERN = ".*.tmp"  # atomic writes: ``.NAME.<random>.tmp`` next to NAME
# An old part-map file a swap killed midway left set aside (semmae.data.partmap_writer).
SET_ASIDE_PATTERN = re.compile(r"\..+\.(npy|json)\.[a-z0-9_]{8}\.old")
# ``--overwrite`` moves a run's entries here first, so a refused removal leaves the run whole.
TRASH_PREFIX = ".semmae-overwrite."
TRASH_PATTERN = TRASH_PREFIX + "*.tmp"
# Evidence that a directory without a marker is a run written before markers existed.
_LEGACY_EVIDENCE = ("metrics.jsonl", "checkpoints", "DONE.json", "summary.json", *sorted(STAGE_DIRS))


def _known_file(path: Path) -> bool:
    name = path.name
    if name in RUN_FILES or fnmatch.fnmatch(name, TEMP_PATTERN) or SET_ASIDE_PATTERN.fullmatch(name):
        return True
    if name.endswith(".npy"):
        return name in PART_MAP_NAMES or is_part_map_manifest(path.with_suffix(".json"))
    return name.endswith(".json") and is_part_map_manifest(path)


def kept_epoch_checkpoints(folder: Path) -> list[Path]:
    """The ``epoch_NNNN.pt`` files the loop kept in the checkpoint folder ``folder``, by epoch
    (a user's ``epoch_best.pt`` is not one of them)."""
    if not folder.is_dir():
        return []
    kept = [(int(m.group(1)), p) for p in folder.iterdir() if (m := EPOCH_CHECKPOINT.fullmatch(p.name))]
    return [p for _, p in sorted(kept)]


def stray_file(folder: Path) -> Path | None:
    """The first entry of a :data:`FILE_DIRS` folder that is not a plain file of its kind or a temp file."""
    names = FILE_DIRS[folder.name]
    for sub in sorted(folder.iterdir()):
        ours = is_temp(sub) or any(re.fullmatch(p, sub.name) for p in names)
        if sub.is_symlink() or not sub.is_file() or not ours:
            return sub
    return None


def first_foreign_entry(path: Path) -> Path | None:
    """The first entry under the directory ``path`` that the toolkit does not write, or None.

    Symbolic links are always foreign: deleting through one could reach anywhere.
    """
    for entry in sorted(path.iterdir()):
        if entry.is_symlink():
            return entry
        if entry.is_dir():
            if entry.name in FILE_DIRS:
                found = stray_file(entry)
            elif (
                entry.name in STAGE_DIRS
                or is_trash(entry)
                or path.name == "runs"
                or (entry / MARKER).is_file()
            ):
                found = first_foreign_entry(entry)
            else:
                return entry
            if found is not None:
                return found
            continue
        if not (entry.is_file() and _known_file(entry)):
            return entry
    return None


def is_toolkit_dir(path: Path) -> bool:
    """A run directory: the marker, or (written before markers existed) a run's files beside a
    ``config.yaml`` that is a whole resolved semmae config, as runs save it."""
    if (path / MARKER).is_file():
        return True
    if not any((path / name).exists() for name in _LEGACY_EVIDENCE):
        return False
    return is_resolved_config(path / "config.yaml")


def is_resolved_config(path: Path) -> bool:
    """Whether ``path`` holds every section of a semmae config and loads as one (names alone are
    not enough: a user's own ``config.yaml`` beside a ``summary.json`` is not a run)."""
    if not path.is_file():
        return False
    try:
        tree = read_recipe(path)
        if not isinstance(tree, dict) or set(tree) != set(config_lib.Config().to_dict()):
            return False
        config_lib.validate(config_lib.from_dict(tree))
    except (SemmaeError, ValueError):
        return False
    return True


def is_trash(path: Path) -> bool:
    return fnmatch.fnmatch(path.name, TRASH_PATTERN) and path.is_dir() and not path.is_symlink()


def is_temp(path: Path) -> bool:
    return fnmatch.fnmatch(path.name, TEMP_PATTERN) and path.is_file() and not path.is_symlink()


# Written before a run's first checkpoint: a run's logs, and a study's table (empty, its budget on record).
EARLY_LOGS = ("metrics.jsonl", "tb", "images", "study.json", "study.md", "study.html")


def early_log(entry: Path) -> bool:
    """A log a run writes before its first checkpoint: ``metrics.jsonl``, ``tb/``, ``images/``, and
    the table a study writes as it starts."""
    if entry.is_symlink() or entry.name not in EARLY_LOGS:
        return False
    if entry.is_file():
        return True
    return stray_file(entry) is None


def only_a_failed_start(path: Path) -> bool:
    """True when ``path`` holds nothing worth keeping: a start that died before its first checkpoint.

    That is the marker, the lock, the toolkit's own ``config.yaml`` and early logs (both only with
    the marker), sub-directories that are empty or hold only stale temp files, and stale temp files.
    """
    marked = (path / MARKER).is_file()
    for entry in path.iterdir():
        if entry.name in (MARKER, LOCK_NAME) or is_temp(entry):
            continue
        if marked and (entry.name == "config.yaml" or early_log(entry)):
            continue
        if entry.is_dir() and not entry.is_symlink() and all(is_temp(e) for e in entry.iterdir()):
            continue
        return False
    return True


def refuse_occupied_out(path: Path) -> None:
    """Refuse ``path`` as a new run's ``--out`` (no ``--resume``, no ``--overwrite``) unless it is
    missing, empty or only a failed start (:func:`only_a_failed_start`). Reads files only, imports
    no torch: commands call it before loading heavy libraries.

    Raises:
        RunDirError: naming the flag that would help, or, for a folder that holds no semmae run,
            the first entry semmae did not write.
    """
    if not path.is_dir() or may_be_held_elsewhere(path) or only_a_failed_start(path):
        return  # a live holder: the run-directory check names it once loaded
    foreign = first_foreign_entry(path)
    name = repr(str(foreign.relative_to(path))) if foreign is not None else ""
    if is_toolkit_dir(path) and foreign is None:
        raise RunDirError(
            f"output directory {str(path)!r} is not empty; pass --resume to continue it or "
            "--overwrite to replace it"
        )
    if is_toolkit_dir(path):  # --overwrite would refuse: it deletes nothing semmae did not write
        raise RunDirError(
            f"output directory {str(path)!r} holds a semmae run and {name}, which semmae did not write; "
            "pass --resume to continue the run, or choose another --out"
        )
    first = f" ({name} is not semmae's)" if foreign is not None else ""
    raise RunDirError(
        f"output directory {str(path)!r} is not empty and holds no semmae run{first}; choose another --out"
    )
