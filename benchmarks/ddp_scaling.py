"""DDP scaling: training throughput on 1, 2, … devices of one node, through the real CLI.

Each device count runs ``icam train --devices N`` (Lightning Fabric DDP; every rank takes its
own shard of the class-balanced stream, so the global batch grows with N) on random volumes
or squares, and the seconds per step are read from the run's metrics between the middle and
the last step (start-up and warm-up left out). Scaling efficiency = throughput(N) /
(N × throughput(1)). Prints one JSON line. Examples:
  python benchmarks/ddp_scaling.py --accelerator gpu --devices 1 2 4 8 --dims 3 --image-size 64
  python benchmarks/ddp_scaling.py --accelerator cpu --devices 1 2 --steps 40   # gloo, a smoke run
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path


def seconds_per_step(run_dir: Path, steps: int) -> float:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    times = {r["step"]: r["time"] for r in records if r["split"] == "train"}
    middle = min((s for s in times if s >= steps // 2), default=None)
    if middle is None or middle == steps:
        raise SystemExit(f"too few logged steps in {run_dir}: raise --steps or lower --log-every")
    return (times[steps] - times[middle]) / (steps - middle)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", type=int, nargs="+", default=[1, 2])
    p.add_argument("--accelerator", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--dims", type=int, choices=(2, 3), default=2)
    p.add_argument("--image-size", type=int, default=64, help="side of the squares benchmark's images")
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--images-per-class", type=int, default=1, help="per device")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--precision", default="32-true")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="more config overrides")
    p.add_argument("--out", default=None, help="keep the run folders (devices-N) here; default: a temporary folder")
    args = p.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as temporary:
        out = args.out or temporary
        for n in args.devices:
            overrides = [f"data.spatial_dims={args.dims}", f"data.image_size={args.image_size}",
                         f"model.width={args.width}", f"train.images_per_class={args.images_per_class}",
                         f"train.log_every={args.log_every}", "train.validate_every=100000",
                         "train.image_every=100000", "train.checkpoint_every=100000", *args.overrides]
            command = [sys.executable, "-m", "icam", "train", "-q", "--accelerator", args.accelerator,
                       "--devices", str(n),
                       "--precision", args.precision, "--steps", str(args.steps), "--out", out,
                       "--name", f"devices-{n}"] + [a for o in overrides for a in ("--set", o)]
            subprocess.run(command, check=True)
            step_s = seconds_per_step(Path(out) / f"devices-{n}", args.steps)
            images = 3 * 2 * args.images_per_class * n
            results[n] = {"seconds_per_step": round(step_s, 4), "images_per_s": round(images / step_s, 2),
                          "command": command[1:]}  # after the interpreter: what reproduces the run
            if n > 1:  # 0 when DDP kept every rank's weights identical
                summary = json.loads((Path(out) / f"devices-{n}" / "summary.json").read_text())
                results[n]["rank_max_abs_weight_difference"] = summary["rank_max_abs_weight_difference"]
    base = results[min(results)]["images_per_s"] / min(results)
    for n, r in results.items():
        r["efficiency"] = round(r["images_per_s"] / (n * base), 3)
    print(json.dumps({"benchmark": "ddp_scaling", "accelerator": args.accelerator, "dims": args.dims,
                      "image_size": args.image_size, "width": args.width,
                      "images_per_class_per_device": args.images_per_class, "precision": args.precision,
                      "devices": results}))


if __name__ == "__main__":
    main()
