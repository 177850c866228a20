"""Process-level plumbing: device choice, seeding, autocast, torch.distributed helpers.

Everything here is a no-op or a cheap query in a single CPU process, so library code can call it
unconditionally. Under ``torchrun`` (``RANK``/``WORLD_SIZE`` in the environment) :func:`distributed_session`
starts a process group: gloo on CPU, nccl on CUDA.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import os
import platform
import random
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from semmae import __version__
from semmae.errors import ConfigError


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> ``cuda`` if available else ``cpu``; ``cuda`` -> this rank's CUDA device; others as given."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available; use train.device=cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and dev.index is not None and int(os.environ.get("LOCAL_WORLD_SIZE", 1)) > 1:
        raise ConfigError(
            f"train.device={name} would put every process of this node on one GPU; under torchrun use "
            "train.device=cuda (each process takes the GPU of its LOCAL_RANK)"
        )
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local_rank() % torch.cuda.device_count())
    if dev.type == "cuda":  # the current device: the CUDA generator a checkpoint saves is this one's
        torch.cuda.set_device(dev)
    return dev


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch global generators (the engine also uses explicit generators)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def step_generator(seed: int, *keys: int) -> torch.Generator:
    """A CPU generator seeded by ``(seed, *keys)``: the same keys give the same stream.

    The engine derives one per (step, rank), so a resumed run draws exactly the masks and crops
    an uninterrupted one would.
    """
    mixed = seed
    for k in keys:
        mixed = (mixed * 1_000_003 + int(k) + 0x9E3779B9) % (2**63 - 1)
    return torch.Generator().manual_seed(mixed)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bf16 matrix instructions (AVX-512 BF16 or AMX); Linux only, else True."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return True
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[None]:
    """bf16 autocast on ``device`` when ``precision == "bf16"``, else a null context."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def configure_attention(model: torch.nn.Module, device: torch.device, precision: str) -> bool:
    """Choose the attention path of ``model``'s timm blocks for training on ``device`` at ``precision``.

    timm's ``Attention`` runs either torch's fused kernel (``F.scaled_dot_product_attention``) or
    its own unfused form (two matmuls and a softmax), by its ``fused_attn`` attribute. On a CPU
    the fused kernel's backward is several times slower in bf16 than in fp32, which held a bf16
    training step of ``mae_fmnist_tiny`` to about 1.1x an fp32 one. Under bf16 the unfused form
    makes a whole attention block (projections included) 1.3-3.6x faster than the fused kernel at
    the MAE presets' token counts (13-197; ``benchmarks/bench_attention.py``). It rounds q·kᵀ to
    bf16 before the softmax: at initialisation a step errs as much as with the fused kernel (the
    linear layers' rounding dominates); with sharp attention its error can be ~30% larger. So on a CPU under bf16 the unfused form is
    chosen; everywhere else the model is left as built (the fused kernel: flash attention on a
    GPU, and in fp32 the arithmetic the parity tests pin; unfused fp32 is slower too).

    Args:
        model: any module; its submodules with a ``fused_attn`` attribute (timm's attention) are set.
        device: where the model trains.
        precision: ``fp32`` or ``bf16``.

    Returns:
        Whether anything was switched to the unfused form.
    """
    if device.type != "cpu" or precision != "bf16":
        return False
    switched = False
    for module in model.modules():
        if getattr(module, "fused_attn", False):
            module.fused_attn = False
            switched = True
    return switched


@contextlib.contextmanager
def seeded_global_rngs(seed: int, device: torch.device | None = None) -> Iterator[None]:
    """Seed Python's, NumPy's and torch's global generators with ``seed`` for a block; restore after.

    For libraries that draw from the global generators (timm's Mixup, RandAugment, random
    erasing): seeding them from a per-batch or per-image key keeps a run a pure function of its
    seed, and restoring them keeps everything else's draws unchanged. ``device``: a CUDA device
    whose generator is forked too.
    """
    py_state, np_state = random.getstate(), np.random.get_state()
    devices = [device] if device is not None and device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        seed_everything(seed)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


# glibc <malloc.h> mallopt parameters, and the largest mmap threshold glibc accepts (64-bit).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_MAX = 32 * 2**20
_MALLOC_ENV = ("GLIBC_TUNABLES", "MALLOC_")  # a user's own malloc settings, which win


def keep_freed_host_memory(trim_threshold: int = 2**30) -> bool:
    """Let glibc's malloc reuse freed tensor memory instead of returning it to the kernel.

    PyTorch's CPU tensors are plain malloc/free. Under glibc's defaults much of what a training
    step frees (its activations and gradients) goes back to the kernel and returns in the next
    step as fresh pages, each zero-filled on a page fault: 5,000–16,000 faults per
    ``mae_fmnist_tiny`` step on this project's machine. Serving blocks under 32 MiB (glibc's
    ceiling) from the heap and trimming the heap only past ``trim_threshold`` of free memory at its
    top keeps that memory in the process for the next step, as jemalloc or tcmalloc would. The
    arithmetic is untouched, so results do not change. The cost: the process may hold freed heap
    memory up to its peak use rather than return it. Settings are per process; data-loader
    workers started by fork inherit them. A user's own ``GLIBC_TUNABLES`` or ``MALLOC_*``
    environment settings are left in charge.

    Args:
        trim_threshold: free memory at the top of the heap that glibc keeps (bytes, < 2**31).

    Returns:
        Whether the settings took: False where the C library is not glibc (macOS, musl) or the
        environment sets malloc's tunables.

    Raises:
        ValueError: ``trim_threshold`` outside [0, 2**31).
    """
    if not 0 <= trim_threshold < 2**31:  # mallopt takes a C int
        raise ValueError(f"trim_threshold must be in [0, 2**31), got {trim_threshold}")
    if platform.libc_ver()[0] != "glibc" or any(k.startswith(_MALLOC_ENV) for k in os.environ):
        return False
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    took = mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX) == 1
    return mallopt(_M_TRIM_THRESHOLD, trim_threshold) == 1 and took


def configure_backends(device: torch.device) -> None:
    """Fast settings for training on ``device``; none of them changes a result on the CPU.

    Everywhere: :func:`keep_freed_host_memory`. On CUDA, as timm's training script sets them:
    TF32 matmuls and convolutions (Ampere and newer; ~2x fp32 matmul throughput, the precision of
    bf16 autocast's accumulations anyway) and ``cudnn.benchmark`` (input shapes are fixed during
    training, so autotuning pays once).
    """
    keep_freed_host_memory()
    if device.type != "cuda":
        return
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy a host tensor to ``device`` without blocking the host where that is possible.

    To CUDA the copy goes from pinned (page-locked) memory with ``non_blocking=True``, so the
    host prepares the next batch while the copy runs; a tensor a ``DataLoader(pin_memory=True)``
    already pinned is not copied twice. To the CPU the tensor is returned as is.

    Args:
        tensor: any tensor on the host (e.g. (B, C, H, W) uint8 images).
        device: where it is needed.

    Returns:
        The same data on ``device``.
    """
    if device.type != "cuda" or tensor.device.type != "cpu":
        return tensor.to(device)
    if not tensor.is_pinned():
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else int(os.environ.get("RANK", 0))


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def is_main() -> bool:
    """True on rank 0 (and in a single process)."""
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean of ``t`` over ranks (identity in one process)."""
    if not is_distributed():
        return t
    t = t.clone()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t / world_size()


def broadcast_object(obj: object) -> object:
    """Send rank 0's picklable ``obj`` to every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_object(obj: object) -> list[object]:
    """Every rank's ``obj``, in rank order (``[obj]`` in one process)."""
    if not is_distributed():
        return [obj]
    out: list[object] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


@contextlib.contextmanager
def distributed_session(device: torch.device) -> Iterator[bool]:
    """Join the torchrun process group if launched by torchrun (and not yet in it), leave it afterwards."""
    started = not is_distributed() and int(os.environ.get("WORLD_SIZE", 1)) > 1
    if started:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    try:
        yield is_distributed()
    finally:
        if started and is_distributed():
            dist.destroy_process_group()


def _git_commit() -> str | None:
    """Short commit of the source tree this package runs from (``+dirty`` when modified), or None."""
    here = Path(__file__).resolve().parent
    # --exclude='*': no tag names, only the short commit, as ``git rev-parse --short HEAD`` gives it.
    command = ["git", "-C", str(here), "describe", "--always", "--dirty=+dirty", "--exclude=*"]
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def describe_device() -> str:
    """The accelerator's name, or ``CPU (arch ISA, N threads)`` (the ISA where torch names one).

    The ISA is the instruction set torch's CPU kernels run with (``AVX2``, ``AVX512``, ...): CPU
    speed figures from machines of one architecture differ mostly by it.
    """
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    isa = torch.backends.cpu.get_cpu_capability()  # "DEFAULT" where torch has no vector ISA to name
    arch = platform.machine() if isa == "DEFAULT" else f"{platform.machine()} {isa}"
    return f"CPU ({arch}, {torch.get_num_threads()} threads)"


def provenance() -> dict[str, Any]:
    """What produced a result: semmae version and git commit, torch version, device, UTC time."""
    return {
        "semmae": __version__,
        "git": _git_commit(),
        "torch": torch.__version__,
        "device": describe_device(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
