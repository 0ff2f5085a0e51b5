"""Seconds for occlusion maps of one scan (one JSON line): icam's setting (positions bounded by
OCCLUSION_POSITIONS, many positions per forward pass) against the paper's block and stride
scaled to the input with one position per pass, timed on its first passes and extrapolated
(the full run takes hours on a CPU). The ResNet is untrained: its cost does not depend on
its weights.
Examples:
  python benchmarks/occlusion.py --shape 64 80 64
  python benchmarks/occlusion.py --shape 128 160 128 --device cuda
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch

from icam.baselines.attribution import occlusion_per_pass, occlusion_positions, occlusion_window, paper_occlusion_window
from icam.baselines.networks import ResNetClassifier
from icam.run import cpu_model


def timed(run, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    run()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main():
    from icam.baselines.attribution import _posthoc

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", type=int, nargs="+", default=[64, 80, 64])
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--baseline-passes", type=int, default=64, help="forward passes timed for the paper's setting")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    device, shape = torch.device(args.device), tuple(args.shape)
    torch.manual_seed(0)
    network = ResNetClassifier(len(shape), 2, 1, args.width).to(device).eval()
    x = torch.rand(1, 1, *shape, device=device) * 2 - 1
    target = torch.zeros(1, dtype=torch.long, device=device)
    window, stride = occlusion_window(shape)
    seconds = timed(lambda: _posthoc(network, "occlusion", x, target), device)
    # the paper's block and stride scaled to this input, one position per pass: time a few passes
    paper_window, paper_stride = paper_occlusion_window(shape)
    paper_positions = occlusion_positions(shape, paper_window, paper_stride)
    with torch.no_grad():
        network(x)  # warm-up
        per_pass = timed(lambda: [network(x) for _ in range(args.baseline_passes)], device) / args.baseline_passes
    print(json.dumps({
        "benchmark": "occlusion", "shape": list(shape), "device": str(device),
        "cpu": cpu_model(), "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "icam": {"window": window, "stride": stride, "positions": occlusion_positions(shape, window, stride),
                 "per_pass": occlusion_per_pass(x),
                 "seconds": round(seconds, 2)},
        "paper_scaled_one_per_pass": {"window": paper_window, "stride": paper_stride, "positions": paper_positions,
                                      "seconds_extrapolated": round(per_pass * (paper_positions + 1), 1)},
        "speedup": round(per_pass * (paper_positions + 1) / seconds, 1) if not math.isclose(seconds, 0) else None}))


if __name__ == "__main__":
    main()
