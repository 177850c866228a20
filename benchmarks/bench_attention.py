"""timm's attention block, fused (``F.scaled_dot_product_attention``) against unfused, fp32 and bf16.

``runtime.configure_attention`` trains with timm's unfused attention on a CPU under bf16 autocast;
this script measures why. For each shape the MAE presets train at, it times one timm ``Attention``
module's forward + backward (qkv and output projections included, as a step runs them) in four
forms, interleaved rep by rep so a shared machine's drift hits all alike: fused and unfused, each
in fp32 and under bf16 autocast. Prints (and with ``--out`` writes) one JSON object: per shape the
median ms of each form, ``bf16_over_fp32`` per form (above 1: bf16 is slower), and
``unfused_over_fused_bf16`` (below 1: the unfused form is faster in bf16).

    python benchmarks/bench_attention.py [--reps 7] [--device cpu] [--out results/bench_attention.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from measure import sync
from timm.models.vision_transformer import Attention

from semmae import runtime

# name -> (batch, tokens, width, heads): the token counts a 75%-masked MAE step attends over.
SHAPES: dict[str, tuple[int, int, int, int]] = {
    "fmnist_tiny encoder (13 tokens)": (128, 13, 192, 3),
    "fmnist_tiny decoder (50 tokens)": (128, 50, 128, 4),
    "vit_base_patch16 encoder (50 tokens)": (32, 50, 768, 12),
    "vit_base_patch16 decoder (197 tokens)": (32, 197, 512, 16),
}
FORMS = ("fused fp32", "unfused fp32", "fused bf16", "unfused bf16")


def _step(attn: Attention, x: torch.Tensor, grad: torch.Tensor, form: str, device: torch.device) -> float:
    """Seconds of one forward + backward of ``attn`` in ``form``."""
    attn.fused_attn = form.startswith("fused")
    precision = form.split()[1]
    sync(device)
    t = time.perf_counter()
    with runtime.autocast(device, precision):
        out = attn(x)
    out.backward(grad.to(out.dtype))
    sync(device)
    return time.perf_counter() - t


def time_shape(
    batch: int, tokens: int, width: int, heads: int, reps: int, device: torch.device
) -> dict[str, Any]:
    """Median ms of each form at one shape, and the ratios between them."""
    torch.manual_seed(0)
    attn = Attention(width, heads, qkv_bias=True).to(device)
    x = torch.randn(batch, tokens, width, device=device, requires_grad=True)
    grad = torch.randn(batch, tokens, width, device=device)
    times: dict[str, list[float]] = {form: [] for form in FORMS}
    for rep in range(reps + 1):  # the first pass warms every form up
        for form in FORMS:
            seconds = _step(attn, x, grad, form, device)
            if rep:
                times[form].append(seconds)
    ms = {form: round(1000 * statistics.median(t), 2) for form, t in times.items()}
    return {
        "batch": batch, "tokens": tokens, "width": width, "heads": heads, "ms": ms,
        "bf16_over_fp32": {
            kind: round(ms[f"{kind} bf16"] / ms[f"{kind} fp32"], 2) for kind in ("fused", "unfused")
        },
        "unfused_over_fused_bf16": round(ms["unfused bf16"] / ms["fused bf16"], 2),
        "unfused_over_fused_fp32": round(ms["unfused fp32"] / ms["fused fp32"], 2),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark (``argv``: command-line arguments, default ``sys.argv``); the result printed."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=7, help="timed passes over the four forms per shape")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--shapes", nargs="*", choices=sorted(SHAPES), help="a subset (default: all)")
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args(argv)
    if args.reps < 1:
        ap.error("--reps must be at least 1")
    device = runtime.resolve_device(args.device)
    result: dict[str, Any] = {
        "device": str(device),
        "threads": torch.get_num_threads(),
        "cpu_native_bf16": runtime.cpu_has_native_bf16(),
        "shapes": {name: time_shape(*SHAPES[name], args.reps, device) for name in args.shapes or SHAPES},
        "provenance": runtime.provenance(),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return result


if __name__ == "__main__":
    main()
