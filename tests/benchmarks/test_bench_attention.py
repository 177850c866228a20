"""``benchmarks/bench_attention.py``: each form runs the kernel it names; one small run's JSON."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Attention

ROOT = Path(__file__).parents[2]


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    return importlib.import_module("bench_attention")


def test_each_form_runs_the_kernel_and_precision_it_names(bench, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    seen: list[torch.dtype] = []
    fused_kernel = F.scaled_dot_product_attention

    def counting(q: torch.Tensor, *args, **kwargs) -> torch.Tensor:  # noqa: ANN002, ANN003
        seen.append(q.dtype)
        return fused_kernel(q, *args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", counting)
    attn = Attention(16, 2, qkv_bias=True)
    x, grad = torch.randn(2, 5, 16, requires_grad=True), torch.randn(2, 5, 16)
    for form in bench.FORMS:
        seen.clear()
        assert bench._step(attn, x, grad, form, torch.device("cpu")) > 0
        expected = {"fp32": torch.float32, "bf16": torch.bfloat16}[form.split()[1]]
        assert seen == ([expected] if form.startswith("fused") else []), form


def test_a_small_run_prints_and_writes_its_figures(
    bench, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:  # noqa: ANN001
    name = "fmnist_tiny encoder (13 tokens)"
    out = tmp_path / "attention.json"
    result = bench.main(["--reps", "1", "--device", "cpu", "--shapes", name, "--out", str(out)])
    assert json.loads(capsys.readouterr().out) == result == json.loads(out.read_text())
    shape = result["shapes"][name]
    assert list(result["shapes"]) == [name] and set(shape["ms"]) == set(bench.FORMS)
    assert all(ms > 0 for ms in shape["ms"].values())
    ratio = shape["ms"]["unfused bf16"] / shape["ms"]["fused bf16"]
    assert shape["unfused_over_fused_bf16"] == pytest.approx(ratio, abs=0.006)
