"""Seconds per scan for mean + variance FA maps (one JSON line).

For N attribute samples per scan: rejection sampling (one batched classifier call per
round), one content encoding, and N decodings in chunks. The figure should grow linearly in
N; the acceptance rate is reported beside it. The model is untrained (timing only: the
network's cost does not depend on its weights), min_probability 0.9 as in the paper.
Examples:
  python benchmarks/explain.py --shape 128 128 --width 16 8 --samples 25 50 100
  python benchmarks/explain.py --shape 128 160 128 --device cuda
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from icam.config import load_config
from icam.explain import Explainer
from icam.model import build_model
from icam.run import cpu_model


def seconds_per_scan(explainer: Explainer, shape, n_samples: int, repeats: int, device) -> tuple[float, float]:
    x = torch.rand(1, 1, *shape, device=device) * 2 - 1
    explainer.explain(x, n_samples=min(n_samples, 8), min_probability=0.9)  # warm-up
    times, acceptance = [], []
    for r in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        explanation = explainer.explain(x, n_samples=n_samples, min_probability=0.9, seed=r)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        acceptance.append(explanation.acceptance_rate)
    return statistics.median(times), statistics.mean(acceptance)


def key(n_samples: int, precision: str) -> str:
    """A figure's name in the line: the sample count, and the precision unless 32-true."""
    return str(n_samples) if precision == "32-true" else f"{n_samples} {precision}"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", type=int, nargs="+", default=[128, 128])
    p.add_argument("--width", type=int, nargs="+", default=[16, 8])
    p.add_argument("--samples", type=int, nargs="+", default=[25, 50, 100])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--precision", nargs="+", default=["32-true"], choices=["32-true", "bf16-mixed"],
                   help="how the translations are decoded (each one measured)")
    args = p.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    results = {}
    for width in args.width:
        model = build_model(load_config(None, [f"model.width={width}"]).model, tuple(args.shape), 2)
        explainer = Explainer(model, device=device, channels_last=args.channels_last)
        per_n = {}
        for n in args.samples:
            for precision in args.precision:
                explainer.precision = precision
                seconds, acceptance = seconds_per_scan(explainer, args.shape, n, args.repeats, device)
                per_n[key(n, precision)] = {"seconds_per_scan": round(seconds, 4),
                                            "acceptance_rate": round(acceptance, 4)}
        times = [per_n[key(n, args.precision[0])]["seconds_per_scan"] for n in args.samples]
        slope = (times[-1] - times[0]) / (args.samples[-1] - args.samples[0]) if len(times) > 1 else None
        results[f"width{width}"] = {"by_samples": per_n,
                                    "seconds_per_extra_sample": round(slope, 5) if slope is not None else None}
    print(json.dumps({"benchmark": "explain", "shape": args.shape, "device": str(device),
                      "processor": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model(),
                      "channels_last": args.channels_last, "threads": torch.get_num_threads(),
                      "torch": torch.__version__, "results": results}))


if __name__ == "__main__":
    main()
