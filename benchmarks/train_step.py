"""Seconds per training iteration (2×Dc + D + encoders/generator) of icam's Trainer.

Prints one JSON line. Default: the authors' 2D setting (128×128, one image per class per
batch, base width 16, 8×8 attribute latent), fp32 eager and the fastest mode, median of
--iterations after --warmup. ``images_per_s`` counts every image an iteration reads (three
batches). With --max-batch, each mode's batch is doubled until it no longer fits in
--memory-gib of GPU memory (the allocator is capped there, so "fits" is measured, not guessed).
Examples:
  python benchmarks/train_step.py --shape 128 128 --modes fp32 bf16 bf16-cl
  python benchmarks/train_step.py --dims 3 --shape 128 160 128 --accelerator gpu \
      --modes fp32 bf16-cl bf16-cl-ckpt --max-batch --memory-gib 24
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import resource
import statistics
import sys
import time

import torch

from icam.config import load_config
from icam.data import InMemoryCohort, make_squares
from icam.model import build_model
from icam.run import build_fabric, cpu_has_bf16, cpu_model
from icam.train import Trainer

MODES = {
    "fp32": {"runtime.precision": "32-true"},
    "fp32-cl": {"runtime.precision": "32-true", "runtime.channels_last": True},
    "bf16": {"runtime.precision": "bf16-mixed"},
    "bf16-cl": {"runtime.precision": "bf16-mixed", "runtime.channels_last": True},
    "bf16-compile": {"runtime.precision": "bf16-mixed", "runtime.compile": "networks"},
    "bf16-cl-compile": {"runtime.precision": "bf16-mixed", "runtime.channels_last": True,
                        "runtime.compile": "networks"},
    "fp32-compile": {"runtime.precision": "32-true", "runtime.compile": "networks"},
    "fp32-regional": {"runtime.precision": "32-true", "runtime.compile": "regional"},
    "bf16-regional": {"runtime.precision": "bf16-mixed", "runtime.compile": "regional"},
    "bf16-cl-regional": {"runtime.precision": "bf16-mixed", "runtime.channels_last": True,
                         "runtime.compile": "regional"},
    "bf16-regional-graphs": {"runtime.precision": "bf16-mixed", "runtime.compile": "regional",
                             "runtime.compile_mode": "reduce-overhead"},
    "fp32-ckpt": {"runtime.precision": "32-true", "runtime.activation_checkpointing": True},
    "bf16-ckpt": {"runtime.precision": "bf16-mixed", "runtime.activation_checkpointing": True},
    "bf16-cl-ckpt": {"runtime.precision": "bf16-mixed", "runtime.channels_last": True,
                     "runtime.activation_checkpointing": True},
}


def measure(shape, mode, images_per_class, width, warmup, iterations, accelerator, settings=()):
    overrides = [f"model.width={width}", f"train.images_per_class={images_per_class}",
                 f"runtime.accelerator={accelerator}"] + [f"{k}={v}" for k, v in MODES[mode].items()] + list(settings)
    config = load_config(None, overrides)
    fabric = build_fabric(config)
    fabric.seed_everything(0, verbose=False)
    n = max(2 * images_per_class * 3, 8)
    if len(shape) == 2 and shape[0] == shape[1]:
        cohort = make_squares(n, shape[0], 2)
    else:  # any shape: random images, alternating labels
        cohort = InMemoryCohort(torch.rand(n, 1, *shape) * 2 - 1, torch.arange(n) % 2)
    model = build_model(config.model, shape, 2)  # icam's default network, as `icam train` builds it
    trainer = Trainer(config, fabric, model, cohort, None, None, show_progress=False)
    batches = trainer.batches()
    cuda = fabric.device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(warmup + iterations):
        b = next(batches)
        sync()
        t = time.perf_counter()
        trainer.train_step(b)
        sync()
        times.append(time.perf_counter() - t)
    first, times = times[0], times[warmup:]
    median = statistics.median(times)
    result = {"batch": 2 * images_per_class, "median_s": round(median, 4),
              "first_step_s": round(first, 2),  # with compilation, when compiled
              "p10_s": round(sorted(times)[len(times) // 10], 4),
              "p90_s": round(sorted(times)[(len(times) * 9) // 10], 4),
              "images_per_s": round(3 * 2 * images_per_class / median, 2)}
    if cuda:
        result["peak_gpu_allocated_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
        result["peak_gpu_reserved_gib"] = round(torch.cuda.max_memory_reserved() / 2**30, 3)
    return result


def progress(what: str, result) -> None:
    """Each figure as it comes, on stderr: a run cut short still shows what it measured."""
    print(f"{what}: {json.dumps(result)}", file=sys.stderr, flush=True)


def largest_batch(shape, mode, width, warmup, iterations, accelerator, start: int, most: int = 64, settings=()):
    """Double images per class from ``start`` while an iteration fits in the capped GPU memory."""
    fits, per_class = None, start
    while per_class <= most:
        try:
            fits = measure(shape, mode, per_class, width, warmup, iterations, accelerator, settings)
            progress(f"{mode} batch {2 * per_class}", fits)
        except torch.OutOfMemoryError:
            progress(f"{mode} batch {2 * per_class}", "out of memory")
            break
        finally:
            gc.collect()
            torch.cuda.empty_cache()
        per_class *= 2
    return fits


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dims", type=int, choices=(2, 3), default=None, help="checked against --shape")
    p.add_argument("--shape", type=int, nargs="+", default=[128, 128])
    p.add_argument("--modes", nargs="+", default=["fp32", "bf16-cl"], choices=list(MODES))
    p.add_argument("--images-per-class", type=int, default=1)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--iterations", type=int, default=20)
    p.add_argument("--accelerator", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--max-batch", action="store_true", help="also find each mode's largest batch (GPU only)")
    p.add_argument("--memory-gib", type=float, default=24.0, help="GPU memory the largest batch must fit in")
    p.add_argument("--max-batch-modes", nargs="+", default=None, choices=list(MODES),
                   help="modes to find the largest batch of (default: --modes)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a run-config override for every mode, e.g. --set model.upsampling=transposed (repeatable)")
    args = p.parse_args()
    if args.dims is not None and args.dims != len(args.shape):
        p.error(f"--dims {args.dims} but --shape has {len(args.shape)} sides")
    if args.max_batch and args.accelerator == "cpu":
        p.error("--max-batch measures GPU memory: use it with --accelerator gpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    results, skipped = {}, {}
    for mode in args.modes:
        if args.accelerator == "cpu" and "bf16" in mode and not cpu_has_bf16():
            # bf16 is offered only where the CPU has the instructions; elsewhere it takes a slow path
            skipped[mode] = (f"{cpu_model()}: no bf16 instructions (AVX-512 BF16 / "
                             "AMX), where bf16 convolutions run ~17x slower than fp32")
            progress(mode, skipped[mode])
            continue
        results[mode] = measure(tuple(args.shape), mode, args.images_per_class, args.width, args.warmup,
                                args.iterations, args.accelerator, args.set)
        progress(mode, results[mode])
    fastest = min(results, key=lambda m: results[m]["median_s"]) if results else None
    largest = {}
    if args.max_batch:
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, args.memory_gib * 2**30 / total))
        # fewer iterations per probe: the larger batches are slow, and only their fit is in question
        largest = {mode: largest_batch(tuple(args.shape), mode, args.width, 2, 5, args.accelerator,
                                       start=args.images_per_class, settings=args.set)
                   for mode in args.max_batch_modes or args.modes}
    line = {
        "benchmark": "train_step", "shape": args.shape, "images_per_class": args.images_per_class,
        "width": args.width, "settings": args.set, "iteration": "2xDc + D + E/G (three batches)",
        "modes": results, "fastest": fastest, "skipped": skipped,
        "speedup_fastest_vs_fp32": (round(results["fp32"]["median_s"] / results[fastest]["median_s"], 2)
                                    if "fp32" in results else None),
        "largest_batch_within_gib": {"memory_gib": args.memory_gib, "modes": largest} if largest else None,
        "device": torch.cuda.get_device_name(0) if args.accelerator != "cpu" and torch.cuda.is_available() else None,
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
        "cpu": cpu_model(),
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "cudnn_tf32_convolutions": torch.backends.cudnn.allow_tf32,  # PyTorch's default: fp32 convs run in TF32
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_bf16_kernels": cpu_has_bf16(),
    }
    print(json.dumps(line))


if __name__ == "__main__":
    main()
