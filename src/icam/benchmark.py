"""`icam benchmark`: the paper's comparison on a cohort with known ground truth.

One command writes a brain-synth cohort (or takes yours), trains ICAM (classification), ICAM-reg
(fine-tuned from it with the regression loss), a ResNet for the post-hoc methods, VA-GAN, the
baseline CNN regressor and an independent classifier; explains the test split with every
map-making method; scores them with the same code as `icam evaluate`; and writes the tables:

- Table II: NCC(−), NCC(+), AUROC, AP, Dice (top-k), pointing game, per method;
- Table I: the independent classifier's accuracy per class on real test images and on
  translated ones (ICAM, VA-GAN);
- regression: ICAM-reg vs the baseline CNN (MAE ± sd, RMSE, Pearson, Spearman, R²);
- correlations of ICAM-reg's mean |FA| with the predicted and the true target;
and one figure with the same test subjects side by side (input, ground truth, each map).
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import numpy as np
import torch
from pydantic import Field

from .config import Section, load_config

POSTHOC_LABELS = {"gradcam": "Grad-CAM", "guided_gradcam": "guided Grad-CAM", "guided_backprop": "guided backprop",
                  "integrated_gradients": "integrated gradients", "occlusion": "occlusion"}
# every map-making method by its folder name under maps/ (or explained/), as tables and reports name it;
# in the order reports show them (ICAM-reg first: its run and predictions lead a report)
METHOD_LABELS = {"icam-reg": "ICAM-reg", "icam": "ICAM", **POSTHOC_LABELS, "vagan": "VA-GAN"}


class BenchmarkSettings(Section):
    """What a benchmark run does; presets fill these, ``--set key=value`` changes any."""

    csv: str | None = Field(None, description="your cohort table (with gt_map); none: a brain-synth cohort")
    shape: list[int] = [64, 64]
    subjects: int = Field(600, ge=10)
    seed: int = 0
    width: int = 8
    images_per_class: int = 4
    icam_steps: int = 1200
    icam_reg_steps: int = 600
    icam_lr: float = 1e-3
    resnet_steps: int = 800
    resnet_lr: float = Field(1e-2, description="SGD; the paper's 1e-4 assumes hundreds of epochs")
    cnn_steps: int = 800
    cnn_lr: float = 1e-3
    vagan_steps: int = 400
    vagan_warmup_critic_steps: int = 100
    baseline_batch: int = 16
    n_samples: int = 50
    test_limit: int | None = Field(None, description="explain at most this many test images per method")
    posthoc: list[str] = list(POSTHOC_LABELS)
    figure_subjects: int = 4


PRESETS = {
    "quick": {},
    "paper": {"shape": [128, 128], "subjects": 2000, "width": 16, "images_per_class": 1, "icam_steps": 60000,
              "icam_reg_steps": 20000, "icam_lr": 1e-4, "resnet_steps": 20000, "resnet_lr": 1e-4,
              "cnn_steps": 20000, "cnn_lr": 1e-4, "vagan_steps": 20000, "baseline_batch": 12, "n_samples": 100},
}
# The paper's 3D set-up (128×160×128 volumes): the same schedule as `paper`, on 1,000 subjects.
PRESETS["paper-3d"] = {**PRESETS["paper"], "shape": [128, 160, 128], "subjects": 1000, "baseline_batch": 4}


def settings_for(preset: str, overrides: list[str]) -> BenchmarkSettings:
    from .config import ConfigError, settings_from

    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    return settings_from(BenchmarkSettings, overrides, PRESETS[preset], "benchmark settings")


def cohort_overrides(csv_path: Path, shape, out: Path, seed: int, accelerator: str, synthetic: bool) -> list[str]:
    """The run-config overrides every run of a benchmark or demo shares: its cohort table, run folder and seed."""
    return ["data.kind=csv", f"data.csv={csv_path}", f"data.shape={list(shape)}", f"out_dir={out / 'runs'}",
            f"seed={seed}", f"runtime.accelerator={accelerator}"] + \
        (["data.intensity=none"] if synthetic else [])  # brain-synth files are already in [−1, 1]


def icam_overrides(width: int, images_per_class: int, lr: float) -> list[str]:
    """ICAM's training settings for these short CPU runs (the content discriminator at 0.4× the lr, as the paper)."""
    return [f"model.width={width}", f"train.images_per_class={images_per_class}", f"train.lr={lr}",
            f"train.content_discriminator_lr={lr * 0.4}"]


def _step(log, message: str) -> float:
    log(message)
    return time.perf_counter()


def run_benchmark(settings: BenchmarkSettings, out: str | Path, log=print, device: str = "cpu") -> dict:
    from .baselines.attribution import BaselineModel
    from .data.synth_export import write_brain_synth
    from .evaluate import evaluate_outputs
    from .explain import load
    from .inference import attribute_cohort, explain_cohort, load_inputs
    from .train import train

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "settings.json").write_text(settings.model_dump_json(indent=2))
    timings: dict[str, float] = {}
    started = _step(log, "cohort")
    if settings.csv is None:
        write_brain_synth(out / "cohort", dims=len(settings.shape), n=settings.subjects, seed=settings.seed,
                          shape=tuple(settings.shape))
        csv_path = out / "cohort" / "cohort.csv"
    else:
        csv_path = Path(settings.csv)
    timings["cohort"] = time.perf_counter() - started
    accelerator = "gpu" if device.startswith("cuda") else "cpu"
    data = cohort_overrides(csv_path, settings.shape, out, settings.seed, accelerator, settings.csv is None)
    icam_common = data + icam_overrides(settings.width, settings.images_per_class, settings.icam_lr) + \
        ["train.validate_every=100000", "train.image_every=100000", "train.checkpoint_every=100000"]
    baseline_common = data + [f"baseline.width={settings.width}", f"baseline.batch_size={settings.baseline_batch}",
                              "baseline.validate_every=100000"]
    runs = {}

    def trained(name, overrides, **kwargs):
        t = _step(log, f"training {name}")
        summary = train(load_config(None, overrides + [f"name={name}"]), show_progress=False, **kwargs)
        timings[f"train {name}"] = time.perf_counter() - t
        runs[name] = summary["run_dir"]
        return summary

    trained("icam", icam_common + [f"train.steps={settings.icam_steps}", "loss.regression=0",
                                   f"train.validate_every={settings.icam_steps}"])
    trained("icam-reg", icam_common + [f"train.steps={settings.icam_reg_steps}",
                                       f"train.validate_every={settings.icam_reg_steps}"], init_from=runs["icam"])
    trained("resnet", baseline_common + ["method=resnet", f"baseline.steps={settings.resnet_steps}",
                                         f"baseline.lr={settings.resnet_lr}"])
    trained("cnn-regressor", baseline_common + ["method=cnn-regressor", f"baseline.steps={settings.cnn_steps}",
                                                f"baseline.lr={settings.cnn_lr}"])
    trained("cnn-classifier", baseline_common + ["method=cnn-classifier", f"baseline.steps={settings.cnn_steps}",
                                                 f"baseline.lr={settings.cnn_lr}"])
    trained("vagan", baseline_common + ["method=vagan", f"baseline.steps={settings.vagan_steps}",
                                        f"baseline.warmup_critic_steps={settings.vagan_warmup_critic_steps}"])

    maps_dirs, evaluations = {}, {}
    for name in ("icam", "icam-reg"):
        t = _step(log, f"explaining with {name}")
        model = load(runs[name], "last", device)
        explain_cohort(model, load_inputs(model, csv_path, "test"), out / "maps" / name, from_label=True,
                       n_samples=settings.n_samples, seed=settings.seed, limit=settings.test_limit, figures="none")
        maps_dirs[name] = out / "maps" / name
        timings[f"explain {name}"] = time.perf_counter() - t
    for posthoc in settings.posthoc:
        t = _step(log, f"explaining with {POSTHOC_LABELS[posthoc]}")
        model = BaselineModel.from_checkpoint(runs["resnet"], "last", device, posthoc)
        attribute_cohort(model, load_inputs(model, csv_path, "test"), out / "maps" / posthoc,
                         limit=settings.test_limit, figures="none")
        maps_dirs[posthoc] = out / "maps" / posthoc
        timings[f"explain {posthoc}"] = time.perf_counter() - t
    t = _step(log, "explaining with VA-GAN")
    vagan = BaselineModel.from_checkpoint(runs["vagan"], "last", device)
    attribute_cohort(vagan, load_inputs(vagan, csv_path, "test"), out / "maps" / "vagan", limit=settings.test_limit,
                     figures="none")
    maps_dirs["vagan"] = out / "maps" / "vagan"
    timings["explain vagan"] = time.perf_counter() - t
    for name, folder in maps_dirs.items():
        evaluations[name] = evaluate_outputs(folder, csv_path, "test")
    cnn = BaselineModel.from_checkpoint(runs["cnn-regressor"], "last", device)
    from .inference import predict_rows, write_csv

    write_csv(out / "maps" / "cnn-regressor-predictions.csv", predict_rows(cnn, load_inputs(cnn, csv_path, "test")))

    t = _step(log, "translation success and tables")
    translation = _translation_success(runs, csv_path, settings, device)
    timings["translation"] = time.perf_counter() - t
    tables = _write_tables(out, evaluations, translation, out / "maps" / "cnn-regressor-predictions.csv")
    _comparison_figure(out, maps_dirs, csv_path, settings.figure_subjects)
    result = {"settings": settings.model_dump(), "runs": runs, "tables": tables,
              "seconds": {k: round(v, 1) for k, v in timings.items()}}
    (out / "benchmark.json").write_text(json.dumps(result, indent=2, default=str))
    return result


@torch.no_grad()
def _translation_success(runs: dict, csv_path: Path, settings: BenchmarkSettings, device) -> dict:
    """Paper Table I: the independent classifier (trained on real training images only) on real
    test images, and on their translations to the other class (one seeded sample each for ICAM,
    x + M(x) of the class-1 images for VA-GAN): the share it assigns to the intended class."""
    from torch.utils.data import DataLoader

    from .baselines.attribution import BaselineModel
    from .explain import load
    from .inference import load_inputs

    judge = BaselineModel.from_checkpoint(runs["cnn-classifier"], "last", device)
    icam_model = load(runs["icam"], "last", device)
    vagan = BaselineModel.from_checkpoint(runs["vagan"], "last", device)
    dataset = load_inputs(judge, csv_path, "test")
    hits = {key: [] for key in ("real", "icam", "vagan")}
    generator = torch.Generator(device=icam_model.device).manual_seed(settings.seed)
    for batch in DataLoader(dataset, batch_size=32):
        x, labels = batch["image"], batch["label"]
        hits["real"] += list(zip(labels.tolist(), (judge.predict(x).predicted_class.cpu() == labels).tolist()))
        other = 1 - labels
        translated = icam_model.model.translate(icam_model._to(x), other.to(icam_model.device), min_probability=0.9,
                                                generator=generator)
        hits["icam"] += list(zip(labels.tolist(),
                                 (judge.predict(translated.contiguous()).predicted_class.cpu() == other).tolist()))
        diseased = labels == 1
        if diseased.any():
            y = vagan._to(x[diseased]) + vagan.attribute(x[diseased])
            hits["vagan"] += [(1, bool(h)) for h in (judge.predict(y).predicted_class.cpu() == 0).tolist()]
    table = {}
    for key, pairs in hits.items():
        for k in (0, 1):
            chosen = [h for label, h in pairs if label == k]
            table[f"{key} class {k}"] = (float(np.mean(chosen)), len(chosen)) if chosen else (None, 0)
    return table


def _fmt(metric: dict | None) -> str:
    if not metric or metric.get("mean") is None:
        return "–"
    return f"{metric['mean']:.3f} ± {metric['sd']:.3f}"


def _write_table(out: Path, name: str, header: list[str], rows: list[list], note: str) -> str:
    with (out / f"{name}.csv").open("w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    text = "\n".join(lines) + f"\n\n{note}\n"
    (out / f"{name}.md").write_text(text)
    return text


def _write_tables(out: Path, evaluations: dict, translation: dict, cnn_predictions: Path) -> dict:
    from .evaluate import regression_metrics

    out = out / "results"
    out.mkdir(exist_ok=True)
    rows = []
    for key, evaluation in evaluations.items():
        maps = evaluation["maps"]
        plus = "–" if key == "vagan" else _fmt(maps["plus (class 0 → 1)"]["ncc"])  # VA-GAN: one direction
        scope = maps["minus (class 1 → 0)"] if key == "vagan" else maps["all"]
        rows.append([METHOD_LABELS[key], _fmt(maps["minus (class 1 → 0)"]["ncc"]), plus] +
                    [_fmt(scope[m]) for m in ("auroc", "ap", "dice_topk", "pointing")])
    tables = {"table2_maps": _write_table(
        out, "table2_maps", ["method", "NCC(−)", "NCC(+)", "AUROC", "AP", "Dice top-k", "pointing"], rows,
        "Mean ± sd over test subjects, each against its own ground-truth map, inside the brain mask. NCC(−): class "
        "1 → 0; NCC(+): class 0 → 1 (VA-GAN translates one way only). AUROC/AP/Dice/pointing over both directions "
        "(VA-GAN: class 1). Post-hoc maps explain each scan's own class.")}
    header = ["images", "class 0 (young)", "class 1 (old)"]
    rows = [[label] + [("–" if translation[f"{key} class {k}"][0] is None else
                        f"{translation[f'{key} class {k}'][0]:.3f} (n {translation[f'{key} class {k}'][1]})")
                       for k in (0, 1)]
            for key, label in (("real", "real test images"), ("icam", "ICAM translations"),
                               ("vagan", "VA-GAN translations"))]
    tables["table1_translation"] = _write_table(
        out, "table1_translation", header, rows,
        "Accuracy of an independent classifier (attribute-encoder architecture, trained on real training images) "
        "on real test images, and the share of translated test images it assigns to the intended class; columns "
        "are the source class.")
    regression_rows = []
    icam_reg = evaluations.get("icam-reg", {}).get("regression")
    records = list(csv.DictReader(cnn_predictions.open()))
    cnn = regression_metrics(np.array([float(r["target"]) for r in records]),
                             np.array([float(r["predicted_target"]) for r in records]))
    for label, m in (("ICAM-reg", icam_reg), ("baseline CNN", cnn)):
        if m:
            regression_rows.append([label, f"{m['mae']:.3f} ± {m['mae_sd']:.3f}", f"{m['rmse']:.3f}",
                                    f"{m.get('pearson', float('nan')):.3f}", f"{m.get('spearman', float('nan')):.3f}",
                                    f"{m['r2']:.3f}"])
    tables["regression"] = _write_table(out, "regression", ["method", "MAE ± sd", "RMSE", "Pearson", "Spearman", "R²"],
                                        regression_rows, "Test split, target in its own units.")
    summary = json.loads((out.parent / "maps" / "icam-reg" / "summary.json").read_text())
    correlation_rows = [[name.replace("_", " "), f"{c['pearson_r']:.3f} (p {c['pearson_p']:.2g})",
                         f"{c['spearman_rho']:.3f} (p {c['spearman_p']:.2g})", c["n"]]
                        for name, c in summary.items() if name.startswith("mean_abs_fa_vs")]
    tables["correlations"] = _write_table(out, "correlations", ["ICAM-reg mean abs(FA) vs", "Pearson r", "Spearman ρ",
                                                                "n"], correlation_rows,
                                          "Mean |FA| inside the brain against the target (paper: predicted > true).")
    (out / "results.md").write_text("\n\n".join(f"## {k}\n\n{v}" for k, v in tables.items()))
    return tables


def _comparison_figure(out: Path, maps_dirs: dict, csv_path: Path, subjects: int) -> Path | None:
    """The same test subjects side by side: input, ground truth and each method's map (the
    report's gallery, as a PNG beside the tables)."""
    from .report.figures import _pyplot, gallery_figure

    fig = gallery_figure(csv_path, {METHOD_LABELS[k]: folder for k, folder in maps_dirs.items()}, subjects)
    if fig is None:
        return None
    path = out / "results" / "comparison.png"
    fig.suptitle("Test subjects (red brighter, blue darker): the ground truth and ICAM share one symmetric colour "
                 "range, every other map has its own; VA-GAN maps class 1 → 0 only", fontsize=9)
    fig.savefig(path, dpi=90)
    _pyplot().close(fig)
    return path
