"""GPU check: the CUDA tests and ViT-B/16 training throughput on one GPU, in at most 8 minutes.

Writes one JSON object (``--out``, default ``results/gpu_check_<gpu-name>.json``):

- ``packages``: the versions of the libraries the check and the tests import (None: missing).
- ``cuda_tests``: ``pytest -m "" -k cuda`` over the test files that mention CUDA (passed /
  failed / skipped, and the output's tail when anything failed).
- ``matmul``: the GPU's measured bf16 matmul peak (TFLOP/s), the denominator of every MFU.
- ``pretrain``: img/s of ``semmae pretrain``'s own loop (``run_pretrain``) on ViT-B/16 MAE at
  224 in bf16, batch 256 (halved until it fits), with random and with semantic masking, each
  with ``train.compile`` off and on; FLOPs per image counted with ``torch.utils.flop_counter``,
  MFU, and the peak memory of each run. The data are in-memory toy-parts images (with their
  oracle part maps for semantic masking), drawn once and shared by every run
  (``toy_sets_drawn``), so the loop's GPU augmentation is timed but no file decoding.
- ``finetune``: img/s of the ViT-B/16 classifier's training step (the fine-tune trainer's step,
  layer-decay AdamW, bf16).
- ``loader``: img/s pretraining's image-folder loader delivers from a few hundred JPEGs of
  ImageNet's typical size and weight (500 x 375, about 104 KiB) on the usable cores; the same
  with ``data.decode=device`` (workers read bytes, each batch is decoded with nvJPEG and cropped
  on the GPU); and ``torchvision.io.decode_jpeg(device="cuda")`` alone: which keeps up.
- ``targets``: pass/fail of pretraining >= 4,000 img/s (H100/H200 class) and semantic/random
  <= 1.02.

Each section has its own time budget; a section out of time records what it measured so far,
and one that fails records its error and lets the next one run. The JSON is written again after
every section, so a check cut short still leaves what it measured.
``--smoke`` runs the same code paths on the CPU with a tiny model in seconds, for the test suite
(there the compiled runs set ``train.compile`` but TorchDynamo is disabled: compiling would take
minutes on a CPU).

    python benchmarks/gpu_check.py [--smoke] [--out FILE]
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import re
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from check_env import cuda_tests, package_versions
from check_spec import FULL, SMOKE, Section, Spec, failure, usable_cores
from gpu_loader import loader_section
from measure import flop_counter, log_clock, matmul_peak, sync

from semmae import config as config_lib
from semmae import runtime
from semmae.data import synthetic
from semmae.engine.optim import adamw
from semmae.masking import build as build_masking
from semmae.models import build_mae
from semmae.models.encoder import load_encoder
from semmae.models.vit import build_classifier, layer_decay_groups
from semmae.train.finetune import make_loss
from semmae.train.pretrain import run_pretrain

ROOT = Path(__file__).resolve().parents[1]
TARGET_IMG_S = 4000.0  # ViT-B/16 MAE pretraining on an H100/H200-class GPU (~22% MFU)
TARGET_SEMANTIC_OVER_RANDOM = 1.02  # semantic masking may cost at most 2% of the step
COMPILED_RUN_MIN_S = 75.0  # a compiled run starts only with this much of the section left


def _classifier_step(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    opt: torch.optim.Optimizer,
    loss_fn: torch.nn.Module,
    device: torch.device,
    precision: str,
) -> None:
    """One fine-tuning optimiser step as the fine-tune trainer takes it (autocast forward, fp32 loss)."""
    with runtime.autocast(device, precision):
        logits = model(x)
    loss_fn(logits.float(), y).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def _free(device: torch.device) -> None:
    """Release the last run's GPU memory so the next one starts from the same state."""
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: torch.device) -> float:
    """Peak allocated GPU memory since the last reset, or this process's peak RSS on the CPU."""
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)  # KiB on Linux


def mae_flops_per_image(spec: Spec, device: torch.device) -> float:
    """FLOPs of one MAE forward + backward per image at mask ratio 0.75 (flop counter, batch 2)."""
    model = build_mae(spec.model, img_size=spec.image_size, in_chans=3, norm_pix_loss=True).to(device)
    x = torch.randn(2, 3, spec.image_size, spec.image_size, device=device)
    gen = torch.Generator().manual_seed(0)
    mask = build_masking("random", ratio=0.75)(2, model.num_patches, generator=gen, device=device)
    with flop_counter() as counter, runtime.autocast(device, spec.precision):
        model(x, mask).loss.backward()
    return counter.get_total_flops() / 2


class ToyImagesOnce:
    """Within ``with``: ``make_toy_parts`` memoised on its arguments; ``drawn`` counts real drawings.

    Every pretraining run of this check (and its oracle part maps) reads the same toy images, and
    drawing 4,096 of them at 224 pixels takes about 40 s on two cores: five drawings would spend
    most of the section's budget. The function is replaced in its own module, where the toy-parts
    loader looks it up at each call, so every caller shares one drawing (the loader clones what
    it takes).
    """

    def __init__(self) -> None:
        self.original = synthetic.make_toy_parts
        self.cache: dict[tuple[int, int, int, int], tuple[Any, ...]] = {}
        self.drawn = 0

    def __call__(self, n: int, image_size: int = 32, in_chans: int = 1, seed: int = 0) -> tuple[Any, ...]:
        key = (n, image_size, in_chans, seed)
        if key not in self.cache:
            self.cache.clear()  # one set at a time
            self.cache[key] = self.original(n, image_size, in_chans, seed)
            self.drawn += 1
        return self.cache[key]

    def __enter__(self) -> ToyImagesOnce:
        synthetic.make_toy_parts = self
        return self

    def __exit__(self, *exc: object) -> None:
        synthetic.make_toy_parts = self.original
        self.cache.clear()


def pretrain_config(
    spec: Spec, device: torch.device, batch: int, masking: str, compile_: bool, parts: Path | None
):  # noqa: ANN201
    """The run's config: toy-parts at the spec's size, one epoch long enough for every window.

    The image count does not follow a halved batch, so the oracle part maps made once still fit.
    """
    steps = spec.window * (spec.windows + 1)
    overrides = [
        "data.name=toy_parts", f"data.image_size={spec.image_size}", "data.in_chans=3",
        f"data.toy_size={spec.batch * (steps + 1)}", f"model.name={spec.model}", f"masking.name={masking}",
        f"train.batch_size={batch}", f"train.max_steps={steps}", f"train.log_every={spec.window}",
        f"train.precision={spec.precision}", f"train.device={device}", f"train.compile={str(compile_).lower()}",
        "train.progress_bar=false", "train.knn_every_epochs=-1", "train.image_every_epochs=0",
        "train.ckpt_every_steps=0", "train.warmup_epochs=0",
    ]  # fmt: skip
    if parts is not None:
        overrides.append(f"masking.parts={parts}")
    return config_lib.load(None, overrides)


def time_pretrain(spec: Spec, device: torch.device, masking: str, compile_: bool, parts: Path | None) -> dict:
    """img/s of ``run_pretrain`` after its first (warm-up, compile) window; batch halved on OOM."""
    batch = spec.batch
    while batch >= 1:
        _free(device)
        cfg = pretrain_config(spec, device, batch, masking, compile_, parts)
        try:
            with tempfile.TemporaryDirectory() as tmp, log_clock() as marks:
                t0 = time.perf_counter()
                run_pretrain(cfg, Path(tmp) / "run")
                wall = time.perf_counter() - t0
        except torch.OutOfMemoryError:
            batch //= 2
            continue
        (s0, w0, _), (s1, w1, _) = marks[0], marks[-1]
        return {
            "batch": batch, "img_per_s": round((s1 - s0) * batch / (w1 - w0), 1),
            "steps_timed": s1 - s0, "run_wall_s": round(wall, 1), "peak_memory_gib": peak_memory_gib(device),
        }  # fmt: skip
    return {"error": "out of memory even at batch 1"}


def pretrain_section(spec: Spec, device: torch.device, budget: Section, peak_tflops: float) -> dict[str, Any]:
    """Random and semantic masking, compile off and on, while the budget lasts."""
    flops = mae_flops_per_image(spec, device)
    out: dict[str, Any] = {
        "model": spec.model,
        "image_size": spec.image_size,
        "gflop_per_image": round(flops / 1e9, 2),
    }
    with tempfile.TemporaryDirectory() as tmp, ToyImagesOnce() as toys:
        from semmae.parts.export import maps_from_masks

        parts = Path(tmp) / "oracle_train.npy"
        grid = build_mae(spec.model, img_size=spec.image_size).grid[0]
        maps_from_masks(
            pretrain_config(spec, device, spec.batch, "random", False, None), "train", grid, parts
        )
        for compile_ in (False, True):
            for masking in ("random", "semantic"):
                key = f"{masking}_{'compiled' if compile_ else 'eager'}"
                if budget.over or (compile_ and not spec.smoke and budget.left() < COMPILED_RUN_MIN_S):
                    out[key] = {"skipped": f"section time budget spent ({budget.left():.0f} s left)"}
                    continue
                try:
                    run = time_pretrain(
                        spec, device, masking, compile_, parts if masking == "semantic" else None
                    )
                except Exception as exc:  # noqa: BLE001 - one failed run must not lose the others
                    run = failure(exc)
                if "img_per_s" in run:
                    mfu = run["img_per_s"] * flops / (peak_tflops * 1e12)
                    run["mfu"] = float(f"{mfu:.4g}")  # significant digits: a CPU's smoke MFU is tiny
                out[key] = run
    out["toy_sets_drawn"] = toys.drawn  # 1: the runs and the part maps shared one drawing
    return out


def finetune_section(spec: Spec, device: torch.device, budget: Section) -> dict[str, Any]:
    """img/s of the classifier's training step on a fixed batch (batch halved on OOM)."""
    enc, _ = load_encoder(f"random:{spec.model}")
    if enc.img_size != spec.image_size or enc.in_chans != 3:
        from semmae.models.vit_encoder import ViTEncoder

        enc = ViTEncoder.from_arch({**enc.arch, "img_size": spec.image_size, "in_chans": 3})
    model = build_classifier(enc.to(device), 1000).train()
    groups = layer_decay_groups(model, depth=enc.depth, layer_decay=0.75, weight_decay=0.05)
    opt = adamw(groups, 1e-3, (0.9, 0.999))
    loss_fn = make_loss(config_lib.Config(), None)
    batch = spec.batch
    while batch >= 1:
        _free(device)
        x = torch.randn(batch, 3, spec.image_size, spec.image_size, device=device)
        y = torch.randint(0, 1000, (batch,), device=device)
        try:
            times = []
            for i in range(spec.ft_steps + 2):
                sync(device)
                t = time.perf_counter()
                _classifier_step(model, x, y, opt, loss_fn, device, spec.precision)
                sync(device)
                if i >= 2:
                    times.append(time.perf_counter() - t)
                if budget.over and times:
                    break
        except torch.OutOfMemoryError:
            batch //= 2
            continue
        times.sort()
        return {
            "model": f"vit from {spec.model}", "batch": batch, "img_per_s": round(batch / times[len(times) // 2], 1),
            "steps_timed": len(times), "peak_memory_gib": peak_memory_gib(device),
        }  # fmt: skip
    return {"error": "out of memory even at batch 1"}


def targets(result: dict[str, Any]) -> dict[str, Any]:
    """Pass/fail of each target from the measured figures (None where a figure is missing)."""
    pre = result.get("pretrain", {})
    rates = {k: v.get("img_per_s") for k, v in pre.items() if isinstance(v, dict)}
    best_random = max((rates.get(k) or 0) for k in ("random_eager", "random_compiled")) or None
    ratio = None
    for mode in ("compiled", "eager"):  # the setting a user would train with: compiled if it ran
        r, s = rates.get(f"random_{mode}"), rates.get(f"semantic_{mode}")
        if r and s:
            ratio = round(r / s, 3)  # time per image, semantic over random
            break
    loader = result.get("loader", {}).get("loader_img_per_s")
    on_device = result.get("loader", {}).get("device_decode_loader_img_per_s")
    return {
        "pretrain_img_per_s": {"min": TARGET_IMG_S, "value": best_random,
                               "pass": None if best_random is None else best_random >= TARGET_IMG_S},
        "semantic_over_random_time": {"max": TARGET_SEMANTIC_OVER_RANDOM, "value": ratio,
                                      "pass": None if ratio is None else ratio <= TARGET_SEMANTIC_OVER_RANDOM},
        "cpu_jpeg_loader_keeps_up": {"value": loader, "needs": best_random,
                                     "pass": None if not (loader and best_random) else loader >= best_random},
        "device_decode_loader_keeps_up": {"value": on_device, "needs": best_random,
                                          "pass": None if not (on_device and best_random) else on_device >= best_random},
    }  # fmt: skip


def run_check(
    spec: Spec, device: torch.device, smoke: bool, save: Callable[[dict[str, Any]], None] = lambda r: None
) -> dict[str, Any]:
    """Every section in order; returns the JSON-ready result, also handed to ``save`` after each."""
    t0 = time.perf_counter()
    runtime.configure_backends(device)
    if smoke:  # compiling takes minutes on a CPU: the compiled runs go through train.compile, eagerly
        torch._dynamo.config.disable = True
    result: dict[str, Any] = {
        "gpu": runtime.describe_device(), "device": str(device), "smoke": smoke, "cpu_cores": usable_cores(),
        "torch": torch.__version__, "cuda": torch.version.cuda, "packages": package_versions(),
    }  # fmt: skip
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        result.update(
            gpu_memory_gib=round(props.total_memory / 2**30, 1), capability=f"{props.major}.{props.minor}"
        )
    save(result)
    try:
        result["cuda_tests"] = cuda_tests(spec, Section(spec.budgets["cuda_tests"]))
    except Exception as exc:  # noqa: BLE001 - e.g. pytest missing: the measurements still run
        result["cuda_tests"] = failure(exc)
    save(result)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32  # CPU bf16 may be emulated
    try:
        peak = matmul_peak(dtype, device, n=spec.matmul_n, reps=5)[0] / 1000
        result["matmul"] = {"dtype": str(dtype).removeprefix("torch."), "n": spec.matmul_n,
                            "peak_tflop_s": round(peak, 3)}  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - the rest runs; MFU is then unknown
        peak, result["matmul"] = math.nan, failure(exc)
    save(result)
    sections = {
        "pretrain": lambda budget: pretrain_section(spec, device, budget, peak),
        "finetune": lambda budget: finetune_section(spec, device, budget),
        "loader": lambda budget: loader_section(spec, device, budget),
    }
    for i, (name, section) in enumerate(sections.items()):
        later = sum(spec.budgets[k] for k in list(sections)[i + 1 :])
        seconds = min(spec.budgets[name], spec.total_s - (time.perf_counter() - t0) - later)
        t = time.perf_counter()
        try:
            result[name] = section(Section(seconds))
        except Exception as exc:  # noqa: BLE001 - the next section still runs
            result[name] = failure(exc)
        result[name]["seconds"] = round(time.perf_counter() - t, 1)
        _free(device)
        save(result)
    result["targets"] = targets(result)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    result["provenance"] = runtime.provenance()
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--smoke", action="store_true", help="tiny model on the CPU, seconds (for the test suite)"
    )
    ap.add_argument("--device", default="cuda:0", help="the GPU to check (ignored with --smoke)")
    ap.add_argument("--out", help="JSON file (default results/gpu_check_<gpu-name>.json)")
    args = ap.parse_args()
    if not args.smoke and not torch.cuda.is_available():
        print("gpu_check: error: no CUDA GPU visible; run with --smoke to check the code paths on the CPU",
              file=sys.stderr)  # fmt: skip
        return 2
    device = torch.device("cpu") if args.smoke else torch.device(args.device)
    name = re.sub(r"[^A-Za-z0-9]+", "_", runtime.describe_device()).strip("_").lower()
    out = Path(args.out or ROOT / "results" / f"gpu_check_{'smoke' if args.smoke else name}.json")
    out.parent.mkdir(parents=True, exist_ok=True)

    def save(partial: dict[str, Any]) -> None:
        out.write_text(json.dumps({**partial, "complete": False}, indent=2) + "\n")

    result = run_check(SMOKE if args.smoke else FULL, device, args.smoke, save)
    result["complete"] = True
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
