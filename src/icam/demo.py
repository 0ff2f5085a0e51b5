"""`icam demo`: the main job end to end, in minutes, on a laptop.

A 2D brain-synth cohort → ICAM-reg (classification pretraining, then regression fine-tuning)
→ a ResNet for the post-hoc baselines → explanations of the test scans (ICAM's mean and
variance maps, Grad-CAM, guided backprop) → scores against the ground truth → an HTML report.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from pydantic import Field

from .comparison import BenchmarkRun, BenchmarkSettings
from .config import Section, settings_from
from .explain import Explainer
from .inference import explain_interpolation
from .methods import METHOD_LABELS
from .metrics import Direction
from .outputs import ExplanationFolder
from .report.html import build_report
from .scans import load_inputs


class DemoSettings(Section):
    """What the demo runs; `icam demo --set key=value` changes one (written to settings.json)."""

    shape: tuple[int, int] = (64, 64)
    subjects: int = Field(600, ge=12)
    width: int = Field(8, ge=4)
    images_per_class: int = Field(4, ge=1)
    lr: float = Field(1e-3, gt=0)
    pretrain_steps: int = Field(900, ge=1, description="ICAM, classification only")
    finetune_steps: int = Field(500, ge=1, description="ICAM-reg: the regression loss added")
    resnet_steps: int = Field(2000, ge=1, description="at most: the ResNet stops when its validation accuracy is flat")
    resnet_lr: float = Field(1e-2, gt=0)
    n_samples: int = Field(50, ge=1, description="attribute samples per FA map")
    seed: int = 0


def demo_settings(overrides: list[str]) -> DemoSettings:
    return settings_from(DemoSettings, overrides, what="demo settings")


def run_demo(out: str | Path, settings: DemoSettings | None = None, log=print, progress: bool = True) -> dict:
    settings = settings or DemoSettings()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "settings.json").write_text(settings.model_dump_json(indent=2))
    # the benchmark's stages and recipe, with the demo's lengths; training curves get a few validations
    bench = BenchmarkRun(BenchmarkSettings(
        shape=list(settings.shape), subjects=settings.subjects, seed=settings.seed, width=settings.width,
        images_per_class=settings.images_per_class, icam_lr=settings.lr, icam_steps=settings.pretrain_steps,
        icam_reg_steps=settings.finetune_steps, resnet_steps=settings.resnet_steps, resnet_lr=settings.resnet_lr,
        n_samples=settings.n_samples, icam_validations=3), out, log=lambda message: None, progress=progress)
    started = time.perf_counter()
    stages = ["cohort", "ICAM pretraining (classification) and ICAM-reg fine-tuning (regression added)",
              "ResNet for the post-hoc baselines", "explanations", "scores and report"]

    def stage(i: int) -> None:
        log(f"[{i + 1}/{len(stages)}] {stages[i]}  (elapsed {(time.perf_counter() - started) / 60:.1f} min)")

    stage(0)
    csv_path = bench.write_cohort()
    stage(1)
    _, icam_reg = bench.train_icam()
    stage(2)
    bench.train_baseline("resnet")

    stage(3)
    explained = {"ICAM-reg": bench.explain_icam("icam-reg", figures="outliers")}
    model = Explainer.from_checkpoint(icam_reg, "best", "cpu")
    test = load_inputs(model, csv_path, "test")
    first_of_class: dict[int, str] = {}
    for i in range(len(test)):
        first_of_class.setdefault(int(test[i]["label"]), test.source(i).file)
    if 0 in first_of_class and 1 in first_of_class:  # a walk from a young scan to an old one
        explain_interpolation(model, Path(first_of_class[0]), Path(first_of_class[1]), 8,
                              ExplanationFolder(explained["ICAM-reg"]))
    for posthoc in ("gradcam", "guided_backprop"):
        explained[METHOD_LABELS[posthoc]] = bench.explain_baseline("resnet", posthoc)

    stage(4)
    scores = {name: bench.score(folder) for name, folder in explained.items()}
    total = time.perf_counter() - started
    report = build_report(out / "report.html", Path(icam_reg), explained, csv_path,
                          title="icam demo: ICAM-reg on synthetic brains",
                          extra_headline=[f"{len(test)} test scans; ICAM-reg trained {settings.pretrain_steps} "
                                          f"iterations for classification, then {settings.finetune_steps} with "
                                          f"the age regression, {settings.images_per_class} scans per class per "
                                          f"batch, {settings.shape[0]}×{settings.shape[1]}, width {settings.width}",
                                          f"demo wall time {total / 60:.1f} min on this machine"])
    summary = {"report": str(report), "seconds": bench.seconds,
               "total_minutes": round((time.perf_counter() - started) / 60, 2),
               "validation": json.loads((Path(icam_reg) / "summary.json").read_text())["validation"],
               "test": {name: {"ncc_minus": s["maps"][Direction.MINUS]["ncc"]["mean"],
                               "ncc_plus": s["maps"][Direction.PLUS]["ncc"]["mean"],
                               **{k: v for k, v in s.get("classification", {}).items() if k in ("accuracy",)},
                               **{k: v for k, v in s.get("regression", {}).items() if k in ("mae", "pearson")}}
                        for name, s in scores.items()}}
    (out / "demo.json").write_text(json.dumps(summary, indent=2))
    return summary

