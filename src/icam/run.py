"""Run folders: everything needed to reproduce and inspect one training run.

<out_dir>/<name>/
  config.yaml        the full resolved config (seed included)
  provenance.json    package versions, git commit, command line, host, start time
  metrics.jsonl      one JSON object per log / validation event
  tensorboard/       every loss term, validation metrics, image grids
  checkpoints/       last.pt, best.pt
  summary.json       final metrics, written when training ends
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import secrets
import subprocess
import sys
import tempfile
import time
import warnings
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .config import BidsData, Config, CsvData, FileData, load_config, to_yaml
from .data import build_cohorts, read_cohort
from .data.table import DataError
from .files import folder_lock, write_json
from .outputs import write_csv

if TYPE_CHECKING:
    from lightning_fabric import Fabric

PACKAGES = ("icam", "torch", "numpy", "lightning-fabric", "pydantic", "monai", "nibabel", "nilearn", "captum")


class MachineError(RuntimeError):
    """The machine cannot do what was asked (an accelerator it lacks): not the input's fault."""


def create_run_dir(out_dir: str | Path, name: str | None = None) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if name:
        path = out_dir / name
        try:
            path.mkdir()
        except FileExistsError:
            raise FileExistsError(f"run folder {path} exists; pick another name or use --resume {path}") from None
        return path
    while True:  # a timestamp plus a random suffix: two runs started in the same second never collide
        path = out_dir / f"{datetime.now():%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue


def git_state(directory: Path) -> dict:
    def git(*args):
        return subprocess.run(["git", "-C", str(directory), *args], capture_output=True, text=True,
                              timeout=10).stdout.strip()
    try:
        commit = git("rev-parse", "HEAD")
    except (OSError, subprocess.SubprocessError):
        return {"commit": None}
    if not commit:
        return {"commit": None}
    return {"commit": commit, "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


def package_versions() -> dict:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return versions


def cpu_model() -> str:
    """The CPU's model name (Linux), which CPU timings are quoted with."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def write_run_files(run_dir: Path, config: Config, extra: dict | None = None) -> None:
    (run_dir / "config.yaml").write_text(to_yaml(config))
    provenance = {
        "seed": config.seed,
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": sys.argv,
        "host": platform.node(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "packages": package_versions(),
        "git": git_state(Path(__file__).resolve().parent),
        **(extra or {}),
    }
    (run_dir / "provenance.json").write_text(json.dumps(provenance, indent=2))


def write_data_files(run_dir: Path, cohorts) -> None:
    """Which rows went to which split (splits.csv), rows left out (excluded.csv), data facts (data.json)."""
    excluded = [{"row": p.row, "file": p.file or "", "reason": p.message} for p in cohorts.excluded]
    for name, records in (("splits.csv", cohorts.assignments), ("excluded.csv", excluded)):
        if records:
            write_csv(run_dir / name, records)
    def facts(dataset) -> dict:
        known = dataset.targets[~dataset.targets.isnan()]
        target = {"known": len(known), "min": float(known.min()), "mean": float(known.mean()),
                  "max": float(known.max())} if len(known) else None
        return {"images": len(dataset), "class_counts": [int(c) for c in dataset.labels.bincount()], "target": target}

    counts = {split: facts(d) for split, d in cohorts.splits.items()}
    (run_dir / "data.json").write_text(json.dumps({"splits": counts, **cohorts.info}, indent=2))


def run_data_config(run_dir: str | Path | None, csv_path: str | Path) -> CsvData | BidsData:
    """How a run reads a cohort table or BIDS dataset (column names, classes): its own data
    section when it was trained on files, else the defaults."""
    config_file = Path(run_dir) / "config.yaml" if run_dir else None
    data = load_config(config_file, saved=True).data if config_file is not None and config_file.is_file() else None
    return (data if isinstance(data, FileData) else CsvData(csv="", shape=[16, 16])).listed_in(csv_path)


def read_run_table(run_dir: str | Path | None, csv_path: str | Path):
    """A cohort table as the run reads it: its column names, classes, and its splits.csv for rows
    without a split. Problems with rows are a DataError."""
    table = read_cohort(run_data_config(run_dir, csv_path), require_label=False, run_dir=run_dir)
    if table.problems:
        raise DataError(table.problems, f"{csv_path}: ", skippable=False)
    return table


def check_writable(folder: str | Path) -> None:
    """Fail before any work when ``folder`` cannot be written: the OSError names it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=folder):
        pass


def finished_summary(run_dir: str | Path, steps: int) -> dict | None:
    """The summary of a run that already trained ``steps`` steps (resuming it has nothing to do)."""
    path = Path(run_dir) / "summary.json"
    summary = json.loads(path.read_text()) if path.is_file() else None
    if summary and summary.get("finished") and summary.get("step", 0) >= steps:
        # the folder given, not the one the summary was written in (a copied run folder)
        return {**summary, "run_dir": str(run_dir), "already_finished": True}
    return None


def run_lock(run_dir: Path):
    """Hold the run folder while training in it: a second process (two --resume) is refused
    instead of interleaving metrics and checkpoints. The lock goes with the process."""
    return folder_lock(Path(run_dir), f"another icam process is training in {run_dir}; wait for it to finish "
                                      "(or stop it) before resuming")


def record_resume(run_dir: Path, step: int) -> None:
    """Append to provenance.json that (and how, from which code) the run was continued."""
    path = run_dir / "provenance.json"
    provenance = json.loads(path.read_text()) if path.exists() else {}
    provenance.setdefault("resumed", []).append({
        "at_step": step, "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": sys.argv, "git": git_state(Path(__file__).resolve().parent)})
    write_json(path, provenance)


class MetricsLog:
    """Appends one JSON object per line to metrics.jsonl."""

    def __init__(self, path: Path):
        self.path = path

    def write(self, record: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps({"time": round(time.time(), 3), **record}) + "\n")


def read_json(path: Path) -> dict:
    """A JSON file a run or output folder may or may not hold ({} when absent)."""
    return json.loads(path.read_text()) if path.is_file() else {}


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def cpu_has_bf16() -> bool:
    """Whether this CPU has bf16 instructions (AVX-512 BF16 or AMX), which bf16 convolutions need to pay."""
    return torch.ops.mkldnn._is_mkldnn_bf16_supported()


def warn_if_slow_bf16() -> None:
    """bf16 on a CPU without bf16 instructions: say that it will be slow, and what to use instead."""
    if not cpu_has_bf16():
        warnings.warn(f"this CPU ({cpu_model()}) has no bf16 instructions (AVX-512 BF16 / AMX): bf16 convolutions "
                      "fall back to a slow path here (measured 17x slower than float32); use 32-true",
                      stacklevel=3)


def build_fabric(config: Config) -> Fabric:
    """The Fabric of ``config.runtime`` (accelerator, devices, precision), for ICAM and the baselines alike."""
    from lightning_fabric import Fabric  # here, not at the top: a second of importing that only training needs
    from lightning_fabric.utilities.exceptions import MisconfigurationException

    rt = config.runtime
    if rt.precision.startswith("bf16") and rt.accelerator == "cpu":
        warn_if_slow_bf16()
    torch.backends.cudnn.benchmark = rt.cudnn_benchmark
    try:
        return Fabric(accelerator=rt.accelerator, devices=rt.devices, num_nodes=rt.num_nodes, precision=rt.precision)
    except (RuntimeError, ValueError, MisconfigurationException) as e:  # "No supported gpu backend found!"
        raise MachineError(f"runtime.accelerator={rt.accelerator}, devices={rt.devices}: {e} (this machine: "
                           f"{torch.cuda.device_count()} CUDA devices; --accelerator auto uses what there is)") from e


def start_run(config: Config, fabric: Fabric, resume: str | Path | None = None,
              extra_provenance: dict | None = None):
    """What every training run does first: seed, build the cohorts (rank 0 fills any cache
    first), and create (or reopen, to resume) the run folder with its provenance and data files.
    Returns (cohorts, run folder, validation set or None when the split is empty)."""
    if fabric.device.type == "cpu" and fabric.world_size > 1:
        # processes on one machine share its cores: oversubscribed threads spin and everything crawls
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // (fabric.world_size // config.runtime.num_nodes)))
    fabric.seed_everything(config.seed, verbose=False)
    if not fabric.is_global_zero:
        fabric.barrier()
    cohorts = build_cohorts(config.data, config.seed)
    if fabric.is_global_zero:
        fabric.barrier()
    if resume is not None:
        run_dir = Path(resume)
    else:
        created = str(create_run_dir(config.out_dir, config.name)) if fabric.is_global_zero else ""
        run_dir = Path(fabric.broadcast(created))  # rank 0's folder on every rank
        if fabric.is_global_zero:
            write_run_files(run_dir, config, extra_provenance)
            write_data_files(run_dir, cohorts)
    val_set = cohorts["val"] if len(cohorts["val"]) else None
    if val_set is None and fabric.is_global_zero:
        warnings.warn("the validation split is empty: no validation metrics and no model selection", stacklevel=2)
    return cohorts, run_dir, val_set
