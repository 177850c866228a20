"""The fast path: fused (SDPA) attention, in-place compile, host-to-device copies, backend flags."""

from __future__ import annotations

import platform
import statistics
import subprocess
import sys

import pytest
import torch

from semmae import config as config_lib
from semmae import runtime
from semmae.engine.build import build_model
from semmae.masking import build
from semmae.models import build_mae
from semmae.models.encoder import load_encoder
from semmae.models.vit import build_classifier


def test_every_attention_uses_scaled_dot_product_attention() -> None:
    enc, _ = load_encoder("random:mae_debug")
    for model in (build_mae("mae_debug"), build_classifier(enc, 3)):
        attns = [m for m in model.modules() if hasattr(m, "fused_attn")]
        assert len(attns) == sum(1 for n, _ in model.named_modules() if n.endswith(".attn"))
        assert attns and all(m.fused_attn for m in attns)  # F.scaled_dot_product_attention


def _fused(model: torch.nn.Module) -> list[bool]:
    return [m.fused_attn for m in model.modules() if hasattr(m, "fused_attn")]


@pytest.mark.parametrize(
    ("device", "precision", "switched"),
    [("cpu", "bf16", True), ("cpu", "fp32", False), ("cuda", "bf16", False), ("cuda", "fp32", False)],
)
def test_only_bf16_on_a_cpu_leaves_the_fused_attention(device: str, precision: str, switched: bool) -> None:
    model = build_mae("mae_debug")
    assert runtime.configure_attention(model, torch.device(device), precision) is switched
    assert _fused(model) == [not switched] * len(_fused(model)) and _fused(model)


def _loss_and_grads(model: torch.nn.Module, x: torch.Tensor, mask: torch.Tensor, bf16: bool):  # noqa: ANN202
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = model(x, mask).loss
    loss.backward()
    return loss.detach().float(), torch.cat(
        [p.grad.flatten() for p in model.parameters() if p.grad is not None]
    )


def test_the_unfused_bf16_attention_is_as_accurate_as_the_fused_kernel(single_thread: None) -> None:
    """Against the fp32 step, the bf16 step's loss and gradients err no more with the unfused form."""
    torch.manual_seed(0)
    model = build_mae("mae_fmnist_tiny", norm_pix_loss=True)
    x = torch.randn(32, 1, 28, 28)
    mask = build("random", ratio=0.75)(32, model.num_patches, generator=torch.Generator().manual_seed(0))
    loss, grads = _loss_and_grads(model, x, mask, bf16=False)
    errors = {}
    for form in ("fused", "unfused"):
        if form == "unfused":
            assert runtime.configure_attention(model, torch.device("cpu"), "bf16")
        low_loss, low_grads = _loss_and_grads(model, x, mask, bf16=True)
        errors[form] = (
            float((low_loss - loss).abs() / loss),
            float((low_grads - grads).norm() / grads.norm()),
        )
    fused, unfused = errors["fused"], errors["unfused"]
    assert 0 < unfused[1] < 0.05  # bf16 rounds (a vacuous comparison would see zero error)
    assert unfused[0] <= 1.5 * fused[0] + 1e-3 and unfused[1] <= 1.5 * fused[1]


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


# Page faults of "training steps" in a fresh process, one setting at a time. "tensors" (the mmap
# threshold): glibc's starting thresholds are fixed (128 KiB mmap and trim; mallopt parameters -3
# and -1), and each step writes 24 activations of 4 MiB and frees them together; under 128 KiB each
# block is mapped and unmapped again. "top" (the trim threshold): the mmap threshold is fixed at
# 32 MiB and the trim threshold at 128 KiB, and each step writes and frees one 24 MiB block at the
# heap's top, which free() then hands back to the kernel. "keep" calls
# runtime.keep_freed_host_memory() after that set-up. (glibc's defaults move the thresholds as the
# process runs, so they land anywhere between: 5,000 to 16,000 faults per mae_fmnist_tiny step.)
# Each step's faults are printed: the heap may still grow in an early step (PyTorch 2.5 grows it
# once more in the third), so the steady state is the median step.
_STEP_FAULTS = """
import ctypes, resource, sys, torch
from semmae import runtime
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, (ctypes.c_size_t,), (ctypes.c_void_p,)
mode, setting = sys.argv[1:]
assert libc.mallopt(-3, 128 * 1024 if setting == "tensors" else 32 * 2**20) == 1
assert libc.mallopt(-1, 128 * 1024) == 1
if mode == "keep":
    assert runtime.keep_freed_host_memory()
def step():
    if setting == "tensors":
        held = [torch.ones(2**20) for _ in range(24)]
        del held
    else:
        block = libc.malloc(24 * 2**20)
        ctypes.memset(block, 1, 24 * 2**20)
        libc.free(block)
step(), step()  # the heap grows to its size
for _ in range(5):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="sets glibc's malloc; elsewhere it is a no-op")
@pytest.mark.parametrize("setting", ["tensors", "top"])
def test_keeping_freed_memory_ends_the_steps_page_faults(setting: str) -> None:
    def faults(mode: str) -> int:
        """The median step's minor page faults."""
        out = subprocess.run(
            [sys.executable, "-c", _STEP_FAULTS, mode, setting], capture_output=True, text=True, check=True
        )
        return int(statistics.median(int(n) for n in out.stdout.split()))

    # 96 MiB (tensors) or 24 MiB (top) a step faulted in again (24,576 or 6,144 4 KiB pages; fewer
    # where huge pages serve it), against reuse in place (none, or a block of heap growth).
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
