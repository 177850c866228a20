"""Cost of the masking strategies, alone and inside an MAE training step.

Prints one JSON object:

* ``mask_us``: µs per call (median over ``--reps`` calls after warm-up) of every strategy at batch
  ``--batch`` and L in ``--lengths`` (semantic: random labels with K = 6, progress 0.5);
* ``train_step``: median seconds of a ``mae_fmnist_tiny`` training step (mask generation, forward,
  backward, AdamW step) on random 1×28×28 images, with random and with semantic masking timed
  interleaved in one run, and ``semantic_over_random_step_ratio``.

Usage: ``python benchmarks/bench_masking.py [--device cpu|cuda] [--reps 20] [--steps 10] [--threads 1]``.
On a shared CPU timings drift by several percent; only the interleaved ratio is comparable.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch
from measure import sync

from semmae.masking import build
from semmae.models import build_mae

NUM_PARTS = 6


def _median_us(fn: Callable[[], object], reps: int, warmup: int, device: torch.device) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def bench_masks(
    batch: int, lengths: list[int], reps: int, device: torch.device
) -> dict[str, dict[str, float]]:
    """Median µs per mask batch, per strategy and L."""
    out: dict[str, dict[str, float]] = {}
    for name in ("random", "block", "semantic"):
        strategy = build(name, ratio=0.75)
        out[name] = {}
        for length in lengths:
            gen = torch.Generator().manual_seed(0)
            kwargs: dict = {}
            if strategy.requires_parts:
                labels = torch.randint(0, NUM_PARTS, (batch, length), generator=gen).to(device)
                kwargs = dict(part_labels=labels, num_parts=NUM_PARTS, progress=0.5)

            def call(strategy=strategy, length=length, kwargs=kwargs, gen=gen) -> object:  # noqa: ANN001
                return strategy(batch, length, generator=gen, device=device, **kwargs)

            out[name][f"L{length}"] = round(_median_us(call, reps, 3, device), 1)
    return out


def bench_train_step(batch: int, steps: int, warmup: int, device: torch.device) -> dict[str, float]:
    """Median step time with random vs semantic masking, measured interleaved."""
    torch.manual_seed(0)
    model = build_mae("mae_fmnist_tiny").to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1.5e-4, betas=(0.9, 0.95), weight_decay=0.05)
    gen = torch.Generator().manual_seed(1)
    images = torch.rand(batch, 1, 28, 28, generator=gen).to(device)
    length = model.num_patches
    labels = torch.randint(0, NUM_PARTS, (batch, length), generator=gen).to(device)
    strategies = {"random": build("random", ratio=0.75), "semantic": build("semantic", ratio=0.75)}

    def step(name: str, i: int, total: int) -> tuple[float, float]:
        """(step seconds, of which mask generation)."""
        sync(device)
        t0 = time.perf_counter()
        mask = strategies[name](
            batch, length, part_labels=labels, num_parts=NUM_PARTS, progress=i / total,
            generator=torch.Generator().manual_seed(i), device=device,
        )  # fmt: skip
        sync(device)
        t_mask = time.perf_counter() - t0
        loss = model(images, mask).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync(device)
        return time.perf_counter() - t0, t_mask

    times: dict[str, list[tuple[float, float]]] = {"random": [], "semantic": []}
    total = warmup + steps
    for i in range(total):
        order = ("random", "semantic") if i % 2 == 0 else ("semantic", "random")  # cancels drift
        for name in order:
            t = step(name, i, total)
            if i >= warmup:
                times[name].append(t)
    med = {k: statistics.median(t for t, _ in v) for k, v in times.items()}
    mask = {k: statistics.median(m for _, m in v) for k, v in times.items()}
    return {
        "batch": batch,
        "steps_each": steps,
        "random_step_s": round(med["random"], 4),
        "semantic_step_s": round(med["semantic"], 4),
        "semantic_over_random_step_ratio": round(med["semantic"] / med["random"], 4),
        # Less noisy view of the same question: what the mask itself adds to a step.
        "random_mask_ms": round(mask["random"] * 1e3, 3),
        "semantic_mask_ms": round(mask["semantic"] * 1e3, 3),
        "mask_difference_over_step": round((mask["semantic"] - mask["random"]) / med["random"], 5),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=256, help="batch of the mask-only timings")
    parser.add_argument("--lengths", type=int, nargs="+", default=[49, 196, 784])
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--train-batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per strategy")
    parser.add_argument("--warmup-steps", type=int, default=2)
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)  # one thread is far steadier on a shared, busy CPU
    device = torch.device(args.device)
    result: dict[str, object] = {
        "device": str(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "mask_batch": args.batch,
        "mask_us": bench_masks(args.batch, args.lengths, args.reps, device),
    }
    if not args.skip_train:
        result["train_step"] = bench_train_step(args.train_batch, args.steps, args.warmup_steps, device)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
