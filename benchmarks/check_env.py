"""What the GPU check records of its machine: the libraries' versions and the CUDA tests' outcome."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from check_spec import Section, Spec, tail

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("timm", "torchvision", "numpy", "pillow", "safetensors", "tensorboard", "scipy",
            "scikit-learn", "matplotlib", "pytest", "tqdm", "pyyaml")  # fmt: skip


def package_versions() -> dict[str, str | None]:
    """Installed versions of :data:`PACKAGES` (None where one is missing)."""
    from importlib import metadata

    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def cuda_test_files(paths: tuple[str, ...]) -> list[str]:
    """The test files under ``paths`` that mention CUDA (collecting the rest would cost time and
    fail where a library only they import is missing)."""
    files = []
    for path in paths:
        found = [ROOT / path] if (ROOT / path).is_file() else sorted((ROOT / path).rglob("test_*.py"))
        files += [str(f.relative_to(ROOT)) for f in found if "cuda" in f.read_text().lower()]
    return files


def cuda_tests(spec: Spec, budget: Section) -> dict[str, Any]:
    """Run the CUDA-parametrised tests (``-k cuda``, slow ones included) in a subprocess."""
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-m",
        "",
        "-k",
        "cuda",
        "-p",
        "no:cacheprovider",
        "--continue-on-collection-errors",
        *cuda_test_files(spec.test_paths),
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=max(1.0, budget.left())
        )
    except subprocess.TimeoutExpired as exc:
        partial = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        return {
            "command": " ".join(cmd[2:]), "timed_out": True, "seconds": round(time.perf_counter() - t0, 1),
            "passed_before_timeout": partial.count("."), "failed_before_timeout": partial.count("F"),
        }  # fmt: skip
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", summary)}
    result = {
        "command": " ".join(cmd[2:]), "timed_out": False, "exit_code": proc.returncode,
        "passed": counts.get("passed", 0), "failed": counts.get("failed", 0) + counts.get("error", 0)
        + counts.get("errors", 0), "skipped": counts.get("skipped", 0), "summary": summary,
        "seconds": round(time.perf_counter() - t0, 1),
    }  # fmt: skip
    if proc.returncode != 0:  # what failed, and why, without a second run
        result.update(stdout_tail=tail(proc.stdout, 40), stderr_tail=tail(proc.stderr))
    return result
