"""Seconds per training iteration (2×Dc + D + encoders/generator) of icam's Trainer.

Prints one JSON line. Default: the authors' 2D setting (128×128, one image per class per
batch, base width 16, 8×8 attribute latent), fp32 eager and the fastest mode, median of
--iterations after --warmup. Example:
  python benchmarks/train_step.py --shape 128 128 --modes fp32 bf16 bf16-cl
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import time

import torch

from icam.config import load_config
from icam.data import InMemoryCohort, make_squares
from icam.model import ICAM
from icam.train import Trainer, build_fabric

MODES = {
    "fp32": {"runtime.precision": "32-true"},
    "fp32-cl": {"runtime.precision": "32-true", "runtime.channels_last": True},
    "bf16": {"runtime.precision": "bf16-mixed"},
    "bf16-cl": {"runtime.precision": "bf16-mixed", "runtime.channels_last": True},
    "bf16-compile": {"runtime.precision": "bf16-mixed", "runtime.compile": True},
    "bf16-cl-compile": {"runtime.precision": "bf16-mixed", "runtime.channels_last": True, "runtime.compile": True},
    "fp32-compile": {"runtime.precision": "32-true", "runtime.compile": True},
}


def measure(shape, mode, images_per_class, width, warmup, iterations, accelerator):
    overrides = [f"model.width={width}", f"train.images_per_class={images_per_class}",
                 f"runtime.accelerator={accelerator}"] + [f"{k}={v}" for k, v in MODES[mode].items()]
    config = load_config(None, overrides)
    fabric = build_fabric(config)
    fabric.seed_everything(0, verbose=False)
    dims = len(shape)
    n = 2 * images_per_class * 3
    if dims == 2 and shape[0] == shape[1]:
        cohort = make_squares(max(n, 8), shape[0], 2)
    else:  # any shape: random images, alternating labels
        cohort = InMemoryCohort(torch.rand(max(n, 8), 1, *shape) * 2 - 1, torch.arange(max(n, 8)) % 2)
    model = ICAM(shape, 2, 1, width)
    trainer = Trainer(config, fabric, model, cohort, None, None, show_progress=False)
    batches = trainer.batches()
    sync = torch.cuda.synchronize if fabric.device.type == "cuda" else (lambda: None)
    if fabric.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(warmup + iterations):
        b = next(batches)
        sync()
        t = time.perf_counter()
        trainer.train_step(b)
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    result = {"median_s": round(statistics.median(times), 4), "p10_s": round(sorted(times)[len(times) // 10], 4),
              "p90_s": round(sorted(times)[(len(times) * 9) // 10], 4),
              "images_per_s": round(3 * 2 * images_per_class / statistics.median(times), 2)}
    if fabric.device.type == "cuda":
        result["peak_gpu_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    return result


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", type=int, nargs="+", default=[128, 128])
    p.add_argument("--modes", nargs="+", default=["fp32", "bf16-cl"], choices=list(MODES))
    p.add_argument("--images-per-class", type=int, default=1)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--iterations", type=int, default=20)
    p.add_argument("--accelerator", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results = {mode: measure(tuple(args.shape), mode, args.images_per_class, args.width, args.warmup,
                             args.iterations, args.accelerator) for mode in args.modes}
    fastest = min(results, key=lambda m: results[m]["median_s"])
    line = {
        "benchmark": "train_step", "shape": args.shape, "images_per_class": args.images_per_class,
        "width": args.width, "iteration": "2xDc + D + E/G (three batches)",
        "modes": results, "fastest": fastest,
        "speedup_fastest_vs_fp32": (round(results["fp32"]["median_s"] / results[fastest]["median_s"], 2)
                                    if "fp32" in results else None),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_bf16_kernels": torch.ops.mkldnn._is_mkldnn_bf16_supported(),
    }
    print(json.dumps(line))


if __name__ == "__main__":
    main()
