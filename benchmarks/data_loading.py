"""Volumes per second from disk to the device: icam's preprocessing cache versus decoding
and preprocessing every ``.nii.gz`` each time it is read.

Writes --n synthetic head-like volumes (a smooth ellipsoid of tissue in a zero background,
int16 like most scanner output) as .nii.gz, then times a DataLoader pass over them both ways,
with the same batch, workers and pinned memory, up to the copy onto the device. Prints one
JSON line; with --step-seconds (a training iteration's time, from train_step.py) it also says
whether each path keeps up with the rate a training step consumes (three batches per step).
Example:
  python benchmarks/data_loading.py --shape 128 160 128 --n 32 --workers 0 4 8 --accelerator gpu
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from icam.config import CsvData
from icam.data import load_file_cohorts
from icam.data.nifti import Spatial, preprocess


def head_like(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Smooth random tissue inside an ellipsoid, zero outside (so it compresses like a scan)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 1, *[max(2, s // 8) for s in shape], generator=g)
    tissue = F.interpolate(coarse, size=shape, mode="trilinear", align_corners=False)[0, 0]
    axes = torch.meshgrid(*[torch.linspace(-1, 1, s) for s in shape], indexing="ij")
    inside = sum((a / 0.85) ** 2 for a in axes) <= 1
    volume = (tissue * 800 + 200 + torch.randn(shape, generator=g) * 20) * inside
    return volume.round().to(torch.int16).numpy()


def write_cohort(folder: Path, shape: tuple[int, ...], n: int) -> Path:
    import nibabel as nib

    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        path = folder / "images" / f"sub-{i:04d}.nii.gz"
        nib.save(nib.Nifti1Image(head_like(shape, i), np.diag([1.2, 1.2, 1.2, 1.0])), str(path))
        rows.append({"image": f"images/sub-{i:04d}.nii.gz", "label": i % 2, "split": "train"})
    table = folder / "cohort.csv"
    with table.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return table


class DecodeEveryTime(Dataset):
    """What the cache saves: nibabel decode + MONAI reorient/fit + normalisation on every read."""

    def __init__(self, files: list[Path], data_config):
        self.files, self.spatial = files, Spatial.of(data_config)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        volume = preprocess(self.files[i], self.spatial)[0]
        lo, hi = float(volume.min()), float(volume.max())  # data.intensity=minmax, the default
        return {"image": torch.from_numpy(np.clip((volume - lo) / max(hi - lo, 1e-12), 0, 1) * 2 - 1)[None]}


def volumes_per_second(dataset, batch: int, workers: int, device: torch.device, passes: int) -> float:
    cuda = device.type == "cuda"
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers, pin_memory=cuda,
                        persistent_workers=workers > 0, generator=torch.Generator().manual_seed(0))
    for b in loader:  # first pass: start the workers, fault the files into the page cache
        b["image"].to(device, non_blocking=True)
    if cuda:
        torch.cuda.synchronize()
    start, count = time.perf_counter(), 0
    for _ in range(passes):
        for b in loader:
            b["image"].to(device, non_blocking=True)
            count += len(b["image"])
    if cuda:
        torch.cuda.synchronize()
    return count / (time.perf_counter() - start)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", type=int, nargs=3, default=[128, 160, 128])
    p.add_argument("--n", type=int, default=32, help="volumes written")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    p.add_argument("--passes", type=int, default=2, help="timed passes over the volumes")
    p.add_argument("--accelerator", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--step-seconds", type=float, default=None, help="a training iteration's seconds")
    p.add_argument("--images-per-class", type=int, default=1, help="of that training iteration")
    p.add_argument("--folder", default=None, help="where to write the volumes (default: a temporary folder)")
    args = p.parse_args()
    device = torch.device("cuda" if args.accelerator == "gpu" else "cpu")
    shape = tuple(args.shape)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.folder or tmp)
        started = time.perf_counter()
        table = write_cohort(folder, shape, args.n)
        write_s = time.perf_counter() - started
        config = CsvData(csv=str(table), shape=list(shape), cache_dir=str(folder / "cache"),
                          preprocess_workers=max(args.workers))
        started = time.perf_counter()
        cached = load_file_cohorts(config, seed=0)["train"]  # decodes every file once into the cache
        fill_s = time.perf_counter() - started
        decoding = DecodeEveryTime([folder / "images" / f"sub-{i:04d}.nii.gz" for i in range(args.n)], config)
        rates = {}
        for workers in args.workers:
            rates[f"workers_{workers}"] = {
                "cache_volumes_per_s": round(volumes_per_second(cached, args.batch, workers, device, args.passes), 2),
                "nii_gz_volumes_per_s": round(volumes_per_second(decoding, args.batch, workers, device,
                                                                 args.passes), 2)}
        line = {"benchmark": "data_loading", "shape": list(shape), "volumes": args.n, "batch": args.batch,
                "device": str(device),
                "file_mb": round(os.path.getsize(folder / "images" / "sub-0000.nii.gz") / 1e6, 2),
                "cache_entry_mb": round(np.prod(shape) * 4 / 1e6, 2), "write_seconds": round(write_s, 1),
                "cache_fill_seconds": round(fill_s, 1), "cache_fill_workers": max(args.workers), "rates": rates,
                "cpu_count": os.cpu_count(), "page_cache": "warm (the files were just written or read)",
                "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)}
        if args.step_seconds:
            needed = 3 * 2 * args.images_per_class / args.step_seconds
            best = {k: max(r[k] for r in rates.values()) for k in ("cache_volumes_per_s", "nii_gz_volumes_per_s")}
            line["training_needs_volumes_per_s"] = round(needed, 2)
            line["keeps_up"] = {k: v >= needed for k, v in best.items()}
        print(json.dumps(line))


if __name__ == "__main__":
    main()
