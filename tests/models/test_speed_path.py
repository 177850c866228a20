"""The fast path: fused (SDPA) attention, in-place compile, host-to-device copies, backend flags."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest
import torch

from semmae import config as config_lib
from semmae import runtime
from semmae.engine.build import build_model
from semmae.models import build_mae
from semmae.models.encoder import load_encoder
from semmae.models.vit import build_classifier


def test_every_attention_uses_scaled_dot_product_attention() -> None:
    enc, _ = load_encoder("random:mae_debug")
    for model in (build_mae("mae_debug"), build_classifier(enc, 3)):
        attns = [m for m in model.modules() if hasattr(m, "fused_attn")]
        assert len(attns) == sum(1 for n, _ in model.named_modules() if n.endswith(".attn"))
        assert attns and all(m.fused_attn for m in attns)  # F.scaled_dot_product_attention


def test_compile_keeps_state_dict_names() -> None:
    eager = build_model(config_lib.load(None, ["model.name=mae_debug"]))
    compiled = build_model(config_lib.load(None, ["model.name=mae_debug", "train.compile=true"]))
    assert eager._compiled_call_impl is None and compiled._compiled_call_impl is not None
    assert list(compiled.state_dict()) == list(eager.state_dict())  # checkpoints load into either


def test_to_device_on_cpu_is_the_same_tensor() -> None:
    x = torch.arange(6)
    assert runtime.to_device(x, torch.device("cpu")) is x


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_to_device_cuda_copies_exactly() -> None:
    x = torch.randint(0, 255, (4, 3, 8, 8), dtype=torch.uint8)
    y = runtime.to_device(x, torch.device("cuda"))
    assert y.is_cuda and torch.equal(y.cpu(), x)


def test_on_cpu_backends_stay_and_freed_memory_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    monkeypatch.setattr(runtime, "keep_freed_host_memory", lambda: calls.append(1) or True)
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.benchmark)
    runtime.configure_backends(torch.device("cpu"))  # as the training loop calls it
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.benchmark) == before
    assert calls == [1]


# Page faults of four "training steps" in a fresh process: each step writes 24 activations of 4 MiB
# and frees them together. The process first fixes glibc's starting thresholds (128 KiB mmap and
# trim; mallopt parameters -3 and -1), under which the freed memory goes back to the kernel every
# step; "keep" then calls runtime.keep_freed_host_memory(). (glibc's defaults move the thresholds as
# the process runs, so they land anywhere between the two: 5,000 to 16,000 faults per
# mae_fmnist_tiny step.)
_STEP_FAULTS = """
import ctypes, resource, sys, torch
from semmae import runtime
assert ctypes.CDLL(None).mallopt(-3, 128 * 1024) == 1 and ctypes.CDLL(None).mallopt(-1, 128 * 1024) == 1
if sys.argv[1] == "keep":
    assert runtime.keep_freed_host_memory()
def step():
    held = [torch.ones(2**20) for _ in range(24)]
    del held
step(), step()  # the heap grows to its size
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="sets glibc's malloc; elsewhere it is a no-op")
def test_keeping_freed_memory_ends_the_steps_page_faults() -> None:
    def faults(mode: str) -> int:
        out = subprocess.run(
            [sys.executable, "-c", _STEP_FAULTS, mode], capture_output=True, text=True, check=True
        )
        return int(out.stdout.split()[-1])

    # 96 MiB a step faulted in again (24,576 4 KiB pages; fewer where huge pages serve it), against
    # reuse in place (at most a block or two of heap growth).
    assert faults("return") >= 20 * (faults("keep") + 1)


def test_keeping_freed_memory_is_a_no_op_off_glibc_or_under_a_users_malloc_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(runtime.platform, "libc_ver", lambda: ("", ""))
    assert runtime.keep_freed_host_memory() is False
    monkeypatch.undo()
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")
    assert runtime.keep_freed_host_memory() is False


@pytest.mark.parametrize("threshold", [-1, 2**31, 2**32])
def test_a_trim_threshold_mallopt_cannot_take_is_refused(threshold: int) -> None:
    with pytest.raises(ValueError, match="trim_threshold"):
        runtime.keep_freed_host_memory(threshold)
