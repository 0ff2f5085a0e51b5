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

from .config import Section


class DemoSettings(Section):
    """What the demo runs; `icam demo --set key=value` changes one (written to settings.json)."""

    shape: tuple[int, int] = (64, 64)
    subjects: int = Field(600, ge=12)
    width: int = Field(8, ge=4)
    images_per_class: int = Field(4, ge=1)
    lr: float = Field(1e-3, gt=0)
    pretrain_steps: int = Field(900, ge=1, description="ICAM, classification only")
    finetune_steps: int = Field(500, ge=1, description="ICAM-reg: the regression loss added")
    resnet_steps: int = Field(600, ge=1)
    resnet_lr: float = Field(1e-2, gt=0)
    n_samples: int = Field(50, ge=1, description="attribute samples per FA map")
    seed: int = 0


def demo_settings(overrides: list[str]) -> DemoSettings:
    from .config import settings_from

    return settings_from(DemoSettings, overrides, what="demo settings")


def run_demo(out: str | Path, settings: DemoSettings | None = None, log=print, progress: bool = True) -> dict:
    from .baselines.attribution import BaselineModel
    from .benchmark import POSTHOC_LABELS, cohort_overrides, icam_overrides
    from .config import load_config
    from .data.synth_export import write_brain_synth
    from .evaluate import evaluate_outputs
    from .explain import load
    from .inference import attribute_cohort, explain_cohort, explain_interpolation, load_inputs
    from .progress import StepProgress
    from .report.html import build_report
    from .train import train

    settings = settings or DemoSettings()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "settings.json").write_text(settings.model_dump_json(indent=2))
    started = time.perf_counter()
    seconds: dict[str, float] = {}
    stages = ["cohort", "ICAM pretraining (classification)", "ICAM-reg fine-tuning (regression added)",
              "ResNet for the post-hoc baselines", "explanations", "scores and report"]

    def stage(i: int) -> float:
        elapsed = time.perf_counter() - started
        log(f"[{i + 1}/{len(stages)}] {stages[i]}  (elapsed {elapsed / 60:.1f} min)")
        return time.perf_counter()

    t = stage(0)
    csv_path = out / "cohort" / "cohort.csv"
    wanted = {"shape": list(settings.shape), "subjects": settings.subjects, "seed": settings.seed}
    if csv_path.is_file():  # a second demo in the same folder reuses the cohort, if it is the same one
        made = json.loads((out / "cohort" / "synth.json").read_text())
        if {k: made.get(k) for k in wanted} != wanted:
            raise ValueError(f"{out / 'cohort'} holds a cohort made with {({k: made.get(k) for k in wanted})}, "
                             f"not {wanted}: give the demo another --out folder")
    else:
        write_brain_synth(out / "cohort", dims=2, n=settings.subjects, seed=settings.seed, shape=settings.shape)
    seconds["cohort"] = time.perf_counter() - t

    common = cohort_overrides(csv_path, settings.shape, out, settings.seed, "cpu", synthetic=True)
    icam = common + icam_overrides(settings.width, settings.images_per_class, settings.lr)
    t = stage(1)
    pretrained = train(load_config(None, icam + ["loss.regression=0", f"train.steps={settings.pretrain_steps}",
                                                 f"train.validate_every={max(1, settings.pretrain_steps // 3)}",
                                                 "name=icam-pretrain"]),
                       show_progress=progress)
    seconds["pretrain"] = time.perf_counter() - t
    t = stage(2)
    finetuned = train(load_config(None, icam + [f"train.steps={settings.finetune_steps}",
                                                f"train.validate_every={max(1, settings.finetune_steps // 2)}",
                                                "name=icam-reg"]),
                      init_from=pretrained["run_dir"], show_progress=progress)
    seconds["finetune"] = time.perf_counter() - t
    t = stage(3)
    resnet = train(load_config(None, common + ["method=resnet", f"baseline.steps={settings.resnet_steps}",
                                               f"baseline.lr={settings.resnet_lr}", f"baseline.width={settings.width}",
                                               "baseline.validate_every=100000", "name=resnet"]),
                   show_progress=progress)
    seconds["resnet"] = time.perf_counter() - t

    t = stage(4)
    model = load(finetuned["run_dir"], "last")
    test = load_inputs(model, csv_path, "test")
    explained = {"ICAM-reg": out / "explained" / "icam-reg"}
    with StepProgress("maps ICAM-reg", progress, len(test)) as bar:
        explain_cohort(model, test, explained["ICAM-reg"], from_label=True, n_samples=settings.n_samples,
                       seed=settings.seed, figures="outliers", progress=lambda *_: bar.advance())
    first_of_class = {}
    for i in range(len(test)):
        first_of_class.setdefault(int(test[i]["label"]), test.source(i)["file"])
    if 0 in first_of_class and 1 in first_of_class:  # a walk from a young scan to an old one
        explain_interpolation(model, Path(first_of_class[0]), Path(first_of_class[1]), 8, explained["ICAM-reg"])
    for posthoc in ("gradcam", "guided_backprop"):
        name = POSTHOC_LABELS[posthoc]
        baseline = BaselineModel.from_checkpoint(resnet["run_dir"], "last", None, posthoc)
        explained[name] = out / "explained" / posthoc
        with StepProgress(f"maps {name}", progress, len(test)) as bar:
            attribute_cohort(baseline, load_inputs(baseline, csv_path, "test"), explained[name], figures="none",
                             progress=lambda *_: bar.advance())
    seconds["explain"] = time.perf_counter() - t

    t = stage(5)
    scores = {name: evaluate_outputs(folder, csv_path, "test") for name, folder in explained.items()}
    total = time.perf_counter() - started
    report = build_report(out / "report.html", Path(finetuned["run_dir"]), explained, csv_path,
                          title="icam demo: ICAM-reg on synthetic brains",
                          extra_headline=[f"{len(test)} test scans; ICAM-reg trained {settings.pretrain_steps} "
                                          f"iterations for classification, then {settings.finetune_steps} with "
                                          f"the age regression, {settings.images_per_class} scans per class per "
                                          f"batch, {settings.shape[0]}×{settings.shape[1]}, width {settings.width}",
                                          f"demo wall time {total / 60:.1f} min on this machine"])
    seconds["report"] = time.perf_counter() - t
    summary = {"report": str(report), "seconds": {k: round(v, 1) for k, v in seconds.items()},
               "total_minutes": round((time.perf_counter() - started) / 60, 2),
               "validation": finetuned["validation"],
               "test": {name: {"ncc_minus": s["maps"]["minus (class 1 → 0)"]["ncc"]["mean"],
                               "ncc_plus": s["maps"]["plus (class 0 → 1)"]["ncc"]["mean"],
                               **{k: v for k, v in s.get("classification", {}).items() if k in ("accuracy",)},
                               **{k: v for k, v in s.get("regression", {}).items() if k in ("mae", "pearson")}}
                        for name, s in scores.items()}}
    (out / "demo.json").write_text(json.dumps(summary, indent=2))
    return summary
