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
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field
from torch.utils.data import DataLoader

from .baselines.attribution import BaselineModel
from .config import (
    Config,
    ConfigError,
    Reference,
    Sampling,
    Section,
    build_config,
    merge_trees,
    parse_overrides,
    settings_from,
)
from .data.synth_export import write_brain_synth, write_squares
from .errors import UserError
from .evaluate import evaluate_outputs, prediction_metrics
from .explain import Explainer, Refinement
from .inference import FigureChoice, explain_cohort, predict_or_attribute
from .intervals import mean_sd
from .methods import METHOD_LABELS, POSTHOC_LABELS
from .metrics import Direction
from .model import next_class
from .outputs import ExplanationFolder
from .progress import StepProgress
from .report.figures import DPI, gallery_figure, pyplot
from .scans import load_inputs
from .validation import content_class_accuracy, summarise, validation_statistics


class BenchmarkSettings(Section):
    """What a benchmark run does; presets fill these, ``--set key=value`` changes any."""

    csv: str | None = Field(None, description="your cohort table (with gt_map); none: a synthetic cohort")
    cohort: Literal["brain-synth", "brain-deep", "squares"] = Field(
        "brain-synth", description="the synthetic cohort written when csv is none: brain-synth (axial 2D slices or "
                                   "3D volumes; age; ventricles, cortex, lesions), brain-deep (coronal slices of "
                                   "another pixel size; a score; deep grey matter, lesions, a diffuse change) or "
                                   "squares (the VA-GAN/ICAM boxes, 2D, a score thresholded at 0.5)")
    shape: list[int] | None = Field(None, description="the model's input shape; none: 64x64 (brain-synth, "
                                                      "squares) or 64x80 (brain-deep); your table needs one")
    subjects: int = Field(600, ge=10)
    seed: int = 0
    width: int = 8
    images_per_class: int = 4
    icam_steps: int = 1200
    icam_reg_steps: int = 600
    icam_lr: float = 1e-3
    icam_validations: int = Field(1, ge=1, description="validation passes in each ICAM run; the best checkpoint "
                                                      "(train.selection: MAE for ICAM-reg) is the one explained")
    icam_set: list[str] = Field([], description="run-config overrides for both ICAM runs, e.g. "
                                                "['train.ema_decay=0.999'] (what the ablation bench varies)")
    resnet_steps: int = Field(2000, description="at most; each baseline stops when its validation metric is flat")
    resnet_lr: float = Field(1e-2, description="SGD; the paper's 1e-4 assumes hundreds of epochs")
    cnn_steps: int = 2000
    cnn_lr: float = 1e-3
    baseline_validate_every: int = Field(100, ge=1)
    baseline_patience: int | None = Field(6, ge=1, description="validations without a new best before a baseline "
                                                               "stops (its best checkpoint is used)")
    vagan_steps: int = 400
    vagan_warmup_critic_steps: int = 100
    baseline_batch: int = 16
    n_samples: int = 50
    reference: Reference = Field(
        "input", description="what ICAM's translations are compared with in its maps (the paper: the input)")
    sampling: Sampling | None = Field(
        None, description="how ICAM's attributes are drawn for its maps and Table I: prior (the paper) or "
                          "counterfactual (only what the prediction heads read; the rest is the scan's own); none: "
                          "each run's model.attribute_sampling")
    refine_steps: int = Field(0, ge=0, description="test-time content refinement of ICAM's maps: Adam steps per scan "
                                                  "(0: none)")
    min_probability: float = Field(0.9, gt=0, lt=1, description="rejection-sampling threshold of ICAM's samples, "
                                                                 "maps and Table I (the authors' code: 0.9)")
    translations_per_image: int = Field(10, ge=1, description="Table I: translations of each test image judged")
    test_limit: int | None = Field(None, description="explain at most this many test images per method")
    posthoc: list[str] = Field(default_factory=lambda: list(POSTHOC_LABELS))
    figure_subjects: int = 4

    @property
    def image_shape(self) -> list[int]:
        """``shape``, else the synthetic cohort's quick-preset shape (a table needs ``shape``)."""
        if self.shape is not None:
            return list(self.shape)
        if self.csv is not None:
            raise UserError("a benchmark on your table needs the model's input shape: --set shape=[128,128]")
        return [64, 80] if self.cohort == "brain-deep" else [64, 64]


PRESETS = {
    "quick": {},
    "paper": {"shape": [128, 128], "subjects": 2000, "width": 16, "images_per_class": 1, "icam_steps": 60000,
              "icam_reg_steps": 20000, "icam_lr": 1e-4, "resnet_steps": 20000, "resnet_lr": 1e-4,
              "cnn_steps": 20000, "cnn_lr": 1e-4, "baseline_validate_every": 500, "vagan_steps": 20000,
              "baseline_batch": 12, "n_samples": 100},
}
# The paper's 3D set-up (128×160×128 volumes): the same schedule as `paper`, on 1,000 subjects.
PRESETS["paper-3d"] = {**PRESETS["paper"], "shape": [128, 160, 128], "subjects": 1000, "baseline_batch": 4}


def settings_for(preset: str, overrides: list[str]) -> BenchmarkSettings:
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    return settings_from(BenchmarkSettings, overrides, PRESETS[preset], "benchmark settings")


class BenchmarkRun:
    """One benchmark folder: its cohort, its runs (``runs/<name>``), maps (``maps/<name>``) and
    timings, with one method per stage, so `icam benchmark` and the ablation bench
    (benchmarks/quality.py) train, explain and score the same way."""

    def __init__(self, settings: BenchmarkSettings, out: str | Path, log=print, device: str = "cpu",
                 progress: bool = False):
        self.settings, self.out, self.log, self.device = settings, Path(out), log, device
        self.progress = progress  # progress bars while training
        self.out.mkdir(parents=True, exist_ok=True)
        self.runs: dict[str, str] = {}
        self.seconds: dict[str, float] = {}
        self.csv_path = Path(settings.csv) if settings.csv else self.out / "cohort" / "cohort.csv"

    @contextmanager
    def _timed(self, key: str, message: str):
        """Logs ``message``, then adds the block's wall time to ``seconds[key]``."""
        self.log(message)
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[key] = round(self.seconds.get(key, 0) + time.perf_counter() - started, 1)

    def write_cohort(self) -> Path:
        """The synthetic cohort (once per folder), unless the settings name a table. A folder that
        holds a cohort made with other settings is refused rather than mixed."""
        s = self.settings
        shape = s.image_shape
        wanted = {"generator": s.cohort, "shape": shape, "subjects": s.subjects, "seed": s.seed}
        made_file = self.csv_path.parent / "synth.json"
        if s.csv is None and self.csv_path.is_file() and made_file.is_file():
            made = json.loads(made_file.read_text())
            made = {**{k: made.get(k) for k in wanted}, "shape": made.get("shape", [made.get("size")] * 2)}
            if made != wanted:
                raise UserError(f"{self.csv_path.parent} holds a cohort made with {made}, not {wanted}: give "
                                 "another --out folder")
        if s.csv is None and not self.csv_path.is_file():
            with self._timed("cohort", f"cohort ({s.cohort})"):
                if s.cohort == "squares":
                    if len(shape) != 2 or shape[0] != shape[1]:
                        raise UserError(f"squares are square 2D images; shape {shape} is not")
                    write_squares(self.csv_path.parent, s.subjects, shape[0], s.seed)
                else:
                    write_brain_synth(self.csv_path.parent, dims=len(shape), n=s.subjects, seed=s.seed,
                                      shape=tuple(shape), design=s.cohort)
        return self.csv_path

    def run_config(self, name: str, *stages: dict) -> Config:
        """The config of one run: what every run of this folder shares (its cohort table, run
        folder, seed, device), then each stage's sections. Values go in as they are, typed: a
        text override would be read as YAML, where a folder named 'study #2' loses its tail."""
        s = self.settings
        synthetic, anatomy = s.csv is None, s.csv is not None or s.cohort != "squares"
        made = self.csv_path.parent / "synth.json"  # a synthetic cohort's slices may be cut across another axis
        slice_axis = json.loads(made.read_text()).get("slice_axis") if synthetic and made.is_file() else None
        tree = {"name": name, "seed": s.seed, "out_dir": str(self.out / "runs"),
                "runtime": {"accelerator": "gpu" if self.device.startswith("cuda") else "cpu"},
                "data": {"kind": "csv", "csv": str(self.csv_path), "shape": s.image_shape,
                         **({"intensity": "none"} if synthetic else {}),  # synthetic files are already in [−1, 1]
                         **({"slice_axis": slice_axis} if slice_axis is not None else {}),
                         **({} if anatomy else {"brain_mask": "none"})}}  # squares have no brain to mask
        for stage in stages:
            tree = merge_trees(tree, stage)
        return build_config(tree, f"the benchmark's {name} run")

    def _train(self, config: Config, **kwargs) -> str:
        with self._timed(f"train {config.name}", f"training {config.name}"):
            from .train import train  # here: training's imports (Fabric, torch._dynamo) cost every command a second

            summary = train(config, show_progress=self.progress, **kwargs)
        assert summary is not None  # one process: the main one
        self.runs[str(config.name)] = summary["run_dir"]
        return summary["run_dir"]

    def train_icam(self, prefix: str = "") -> tuple[str, str]:
        """ICAM (classification), then ICAM-reg fine-tuned from it with the regression loss. The
        content discriminator learns at 0.4× the lr, as in the paper; ``icam_set`` comes last."""
        s = self.settings

        def icam_stage(steps: int, **loss) -> dict:
            return {"model": {"width": s.width}, "loss": loss,
                    "train": {"images_per_class": s.images_per_class, "lr": s.icam_lr,
                              "content_discriminator_lr": s.icam_lr * 0.4, "steps": steps,
                              "validate_every": max(1, steps // s.icam_validations),
                              "image_every": 100000, "checkpoint_every": 100000}}
        variant = parse_overrides(list(s.icam_set))
        icam = self._train(self.run_config(f"{prefix}icam", icam_stage(s.icam_steps, regression=0), variant))
        icam_reg = self._train(self.run_config(f"{prefix}icam-reg", icam_stage(s.icam_reg_steps), variant),
                               init_from=icam)
        return icam, icam_reg

    def train_baseline(self, method: str) -> str:
        """A baseline, trained until its validation metric is flat (at most its step budget)."""
        s = self.settings
        steps, lr = {"resnet": (s.resnet_steps, s.resnet_lr), "vagan": (s.vagan_steps, None)}.get(
            method, (s.cnn_steps, s.cnn_lr))
        baseline: dict[str, float | None] = {"width": s.width, "batch_size": s.baseline_batch, "steps": steps,
                    "validate_every": s.baseline_validate_every, "patience": s.baseline_patience}
        if lr is not None:
            baseline["lr"] = lr
        if method == "vagan":  # its validation is the maps' NCC: once, at the end
            baseline.update(warmup_critic_steps=s.vagan_warmup_critic_steps, validate_every=steps)
        return self._train(self.run_config(method, {"method": method, "baseline": baseline}))

    def _bar(self, name: str, total: int):
        return StepProgress(f"maps {name}", self.progress, total)

    def explain_icam(self, name: str, folder: str | None = None, figures: FigureChoice = "none") -> Path:
        """Mean FA maps of the test split, each scan translated from its label to the next class."""
        s = self.settings
        out = self.out / "maps" / (folder or name)
        with self._timed(f"explain {folder or name}", f"explaining with {folder or name}"):
            model = Explainer.from_checkpoint(self.runs[name], "best", self.device)
            test = load_inputs(model, self.csv_path, "test")
            with self._bar(METHOD_LABELS.get(name, name), len(test)) as bar:
                explain_cohort(model, test, ExplanationFolder(out), from_label=True, n_samples=s.n_samples,
                               min_probability=s.min_probability, seed=s.seed, limit=s.test_limit,
                               figures=figures, reference=s.reference, sampling=s.sampling,
                               refinement=Refinement(s.refine_steps) if s.refine_steps else None,
                               progress=lambda *_: bar.advance())
        return out

    def explain_baseline(self, method: str, posthoc: str | None = None) -> Path:
        """A baseline's maps of the test split (a post-hoc method on the ResNet, or VA-GAN), or,
        for the CNNs, their predictions (``maps/<method>/predictions.csv``)."""
        name = posthoc or method
        out = self.out / "maps" / name
        with self._timed(f"explain {name}", f"explaining with {METHOD_LABELS.get(name, name)}"):
            model = BaselineModel.from_checkpoint(self.runs[method], "best", self.device, posthoc)
            dataset = load_inputs(model, self.csv_path, "test")
            with self._bar(METHOD_LABELS.get(name, name), len(dataset)) as bar:
                predict_or_attribute(model, dataset, ExplanationFolder(out), limit=self.settings.test_limit,
                                     figures="none", progress=lambda *_: bar.advance())
        return out

    def score(self, folder: Path) -> dict:
        """The maps and predictions in ``folder`` against the test split's ground truth."""
        if not ExplanationFolder.at(folder).has_maps():  # predictions only
            return prediction_metrics(ExplanationFolder.at(folder).predictions)
        return evaluate_outputs(folder, self.csv_path, "test")

    def diagnostics(self, run: str) -> dict:
        """What a map of this ICAM run is made of, on the test split: per direction, the NCC of the
        translation's own change (against the translation to the scan's own attribute) and of the
        decoder's error |G(z_c, mu) − x| (the floor an image translation's map stands on), the
        decoder's L1 error; and content leakage, a probe's accuracy reading the class from z_c
        (``validation.content_class_accuracy``; chance is the goal). The benchmark's samples and seed."""
        s = self.settings
        with self._timed("diagnostics", f"map diagnostics of {Path(run).name}"):
            model = Explainer.from_checkpoint(run, "best", self.device)
            test = load_inputs(model, self.csv_path, "test")
            stats = validation_statistics(model.model, test, batch_size=32, fa_samples=s.n_samples,
                                          min_probability=s.min_probability, seed=s.seed,
                                          sampling=s.sampling or model.sampling,
                                          regressing=model.regressing, device=model.device)
            metrics = summarise(stats, model.regressing)
            metrics["content_class_accuracy"] = content_class_accuracy(
                model.model, load_inputs(model, self.csv_path, "train"), test, device=model.device, seed=s.seed)
        return metrics

    @torch.no_grad()
    def translation_success(self, icam_runs: dict[str, str], vagan: str | None = None) -> dict:
        """Paper Table I: the independent classifier (trained on real training images only) on
        real test images, and on their translations to the next class (``translations_per_image``
        seeded samples each for ICAM; x + M(x) of the class-1 images for VA-GAN): the share it
        assigns to the intended class, per source class, as (share, judged images)."""

        s = self.settings
        with self._timed("translation", "translation success (Table I)"):
            judge = BaselineModel.from_checkpoint(self.runs["cnn-classifier"], "best", self.device)
            models = {key: Explainer.from_checkpoint(run, "best", self.device) for key, run in icam_runs.items()}
            vagan_model = BaselineModel.from_checkpoint(vagan, "best", self.device) if vagan else None
            dataset = load_inputs(judge, self.csv_path, "test")
            hits: dict[str, list] = {key: [] for key in ("real", *models, *(["vagan"] if vagan else []))}
            k = judge.num_classes
            for key, model in models.items():
                generator = torch.Generator(device=model.device).manual_seed(s.seed)
                for batch in DataLoader(dataset, batch_size=32):
                    x = model.as_input(batch["image"].repeat_interleave(s.translations_per_image, 0))
                    labels = batch["label"].repeat_interleave(s.translations_per_image)
                    target = next_class(labels, k)
                    translated = model.model.translate(x, target.to(model.device), min_probability=s.min_probability,
                                                       generator=generator, sampling=s.sampling or model.sampling,
                                                       regressing=model.regressing)
                    judged = judge.predict(translated.contiguous()).predicted_class.cpu() == target
                    hits[key] += list(zip(labels.tolist(), judged.tolist()))
            for batch in DataLoader(dataset, batch_size=32):
                x, labels = batch["image"], batch["label"]
                hits["real"] += list(zip(labels.tolist(), (judge.predict(x).predicted_class.cpu() == labels).tolist()))
                diseased = labels == 1
                if vagan_model is not None and diseased.any():
                    y = vagan_model.as_input(x[diseased]) + vagan_model.attribute(x[diseased])
                    hits["vagan"] += [(1, bool(h)) for h in (judge.predict(y).predicted_class.cpu() == 0).tolist()]
        table = {}
        for key, pairs in hits.items():
            for c in range(k):
                chosen = [h for label, h in pairs if label == c]
                table[f"{key} class {c}"] = (float(np.mean(chosen)), len(chosen)) if chosen else (None, 0)
        return table


def headline(evaluations: dict, predictions: dict, translation: dict, diagnostics: dict) -> dict:
    """The figures a reader checks first, flat: ICAM-reg against the dedicated networks (the ResNet's
    accuracy, the CNN regressor's MAE), ICAM-reg's NCC both ways and its AUROC, and Table I (class 0
    is "young", class 1 "old" in brain-synth): the judge on real images and on ICAM-reg's
    translations; then what its maps are made of (``BenchmarkRun.diagnostics``): the translation's
    own change, the decoder's error, and how much class the content code carries."""
    icam_reg = evaluations["icam-reg"]

    def value(metrics: dict | None, key: str):
        return None if not metrics or metrics.get(key) is None else round(float(metrics[key]), 4)

    def table1(key: str):
        share = translation.get(key, (None, 0))[0]
        return None if share is None else round(share, 4)

    return {
        "icam_reg_accuracy": value(icam_reg.get("classification"), "accuracy"),
        "resnet_accuracy": value(predictions.get("resnet", {}).get("classification"), "accuracy"),
        "icam_reg_mae": value(icam_reg.get("regression"), "mae"),
        "cnn_mae": value(predictions.get("cnn-regressor", {}).get("regression"), "mae"),
        "ncc_minus": value(icam_reg["maps"][Direction.MINUS]["ncc"], "mean"),
        "ncc_plus": value(icam_reg["maps"][Direction.PLUS]["ncc"], "mean"),
        "table1_real_young": table1("real class 0"),
        "table1_real_old": table1("real class 1"),
        "table1_young_to_old": table1("icam-reg class 0"),
        "table1_old_to_young": table1("icam-reg class 1"),
        "auroc": value(icam_reg["maps"]["all"]["auroc"], "mean"),
        **{key: value(diagnostics, key) for key in DIAGNOSTICS},
    }


# what headline takes from BenchmarkRun.diagnostics
DIAGNOSTICS = ("translation_ncc_minus", "translation_ncc_plus", "floor_ncc_minus", "floor_ncc_plus", "floor_l1",
               "content_class_accuracy")


def run_benchmark(settings: BenchmarkSettings, out: str | Path, log=print, device: str = "cpu") -> dict:
    bench = BenchmarkRun(settings, out, log, device)
    out = bench.out
    (out / "settings.json").write_text(settings.model_dump_json(indent=2))
    csv_path = bench.write_cohort()
    bench.train_icam()
    for method in ("resnet", "cnn-regressor", "cnn-classifier", "vagan"):
        bench.train_baseline(method)

    maps_dirs = {name: bench.explain_icam(name) for name in ("icam", "icam-reg")}
    maps_dirs.update({posthoc: bench.explain_baseline("resnet", posthoc) for posthoc in settings.posthoc})
    maps_dirs["vagan"] = bench.explain_baseline("vagan")
    evaluations = {name: bench.score(folder) for name, folder in maps_dirs.items()}
    # the dedicated networks' own predictions on the test split (Table II's accuracy column, the regression table)
    predictions = {method: bench.score(bench.explain_baseline(method)) for method in ("resnet", "cnn-regressor")}
    translation = bench.translation_success({"icam": bench.runs["icam"], "icam-reg": bench.runs["icam-reg"]},
                                            bench.runs["vagan"])
    diagnostics = bench.diagnostics(bench.runs["icam-reg"])
    tables = _write_tables(out, evaluations, predictions, translation, diagnostics)
    _comparison_figure(out, maps_dirs, csv_path, settings.figure_subjects)
    result = {"settings": settings.model_dump(),
              "headline": headline(evaluations, predictions, translation, diagnostics),
              "runs": bench.runs, "tables": tables, "seconds": bench.seconds}
    (out / "benchmark.json").write_text(json.dumps(result, indent=2, default=str))
    return result


def _fmt(metric: dict | None) -> str:
    if not metric or metric.get("mean") is None:
        return "–"
    return mean_sd(metric["mean"], metric["sd"])


def _write_table(out: Path, name: str, header: list[str], rows: list[list], note: str) -> str:
    with (out / f"{name}.csv").open("w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    def cells(row: list) -> str:  # a | inside a cell (|G(z_c, mu) − x|) is escaped, or it splits the cell
        return "| " + " | ".join(str(c).replace("|", r"\|") for c in row) + " |"
    lines = [cells(header), "|" + "---|" * len(header), *map(cells, rows)]
    text = "\n".join(lines) + f"\n\n{note}\n"
    (out / f"{name}.md").write_text(text)
    return text


def _write_tables(out: Path, evaluations: dict, predictions: dict, translation: dict, diagnostics: dict) -> dict:
    out = out / "results"
    out.mkdir(exist_ok=True)
    resnet_accuracy = predictions.get("resnet", {}).get("classification", {}).get("accuracy")
    rows = []
    for key, evaluation in evaluations.items():
        maps = evaluation["maps"]
        plus = maps[Direction.PLUS]  # None: a method that translates one way (scored by icam evaluate)
        plus_ncc = None if plus is None else plus["ncc"]
        accuracy = (evaluation.get("classification", {}).get("accuracy") if key.startswith("icam") else
                    resnet_accuracy if key in POSTHOC_LABELS else None)
        rows.append([METHOD_LABELS[key], _fmt(maps[Direction.MINUS]["ncc"]), _fmt(plus_ncc)] +
                    [_fmt(maps["all"][m]) for m in ("auroc", "ap", "dice_topk", "pointing")] +
                    ["–" if accuracy is None else f"{accuracy:.3f}"])
    tables = {"table2_maps": _write_table(
        out, "table2_maps", ["method", "NCC(−)", "NCC(+)", "AUROC", "AP", "Dice top-k", "pointing",
                             "accuracy of the explained model"], rows,
        "Mean ± sd over test subjects, each against its own ground-truth map, inside the brain mask. NCC(−): class "
        "1 → 0; NCC(+): class 0 → 1 (VA-GAN translates one way only). AUROC/AP/Dice/pointing over both directions "
        "(VA-GAN: class 1). Post-hoc maps explain each scan's own class, on the ResNet (trained until its "
        "validation accuracy was flat; its best checkpoint), whose test accuracy is the last column.")}
    header = ["images", "class 0 (young)", "class 1 (old)"]

    def cell(key: str, k: int) -> str:
        share, n = translation.get(f"{key} class {k}", (None, 0))
        return "–" if share is None else f"{share:.3f} (n {n})"
    rows = [[label] + [cell(key, k) for k in (0, 1)]
            for key, label in (("real", "real test images"), ("icam", "ICAM translations"),
                               ("icam-reg", "ICAM-reg translations"), ("vagan", "VA-GAN translations"))]
    tables["table1_translation"] = _write_table(
        out, "table1_translation", header, rows,
        "Accuracy of an independent classifier (attribute-encoder architecture, trained on real training images) "
        "on real test images, and the share of translations of test images to the other class it assigns to that "
        "class (several seeded translations per image; n counts translations); columns are the source class.")
    regression_rows = []
    for label, m in (("ICAM-reg", evaluations.get("icam-reg", {}).get("regression")),
                     ("baseline CNN", predictions.get("cnn-regressor", {}).get("regression"))):
        if m:
            regression_rows.append([label, mean_sd(m["mae"], m["mae_sd"]), f"{m['rmse']:.3f}",
                                    f"{m.get('pearson', float('nan')):.3f}", f"{m.get('spearman', float('nan')):.3f}",
                                    f"{m['r2']:.3f}"])
    tables["regression"] = _write_table(out, "regression", ["method", "MAE ± sd", "RMSE", "Pearson", "Spearman", "R²"],
                                        regression_rows, "Test split, target in its own units.")
    def score(key: str) -> str:
        return "–" if diagnostics.get(key) is None else f"{diagnostics[key]:.3f}"
    icam_reg_maps = evaluations["icam-reg"]["maps"]
    parts = [["ICAM-reg map (as explained)", _fmt(icam_reg_maps[Direction.MINUS]["ncc"]),
              _fmt(icam_reg_maps[Direction.PLUS]["ncc"])],
             ["its translation's own change (against the translation to its own attribute)",
              score("translation_ncc_minus"), score("translation_ncc_plus")],
             [f"the decoder's error |G(z_c, mu) − x| (mean {score('floor_l1')} in the brain)",
              score("floor_ncc_minus"), score("floor_ncc_plus")]]
    tables["map_parts"] = _write_table(
        out, "map_parts", ["map", "NCC(−)", "NCC(+)"], parts,
        "What ICAM-reg's maps are made of, on the test split. A map that scores no better than the decoder's error "
        "shows where the decoder fails to reproduce the scan, not the class change; a residual translation "
        "(model.translation=residual) leaves that error out of the map. Content leakage: a probe fitted on the "
        f"training images' content codes reads the class of the test scans with accuracy "
        f"{score('content_class_accuracy')} (chance is the goal).")
    summary = json.loads((out.parent / "maps" / "icam-reg" / "summary.json").read_text())
    correlation_rows = [[group.replace("_", " "), target.replace("_", " "),
                         f"{c['pearson_r']:.3f} (p {c['pearson_p']:.2g})",
                         f"{c['spearman_rho']:.3f} (p {c['spearman_p']:.2g})", c["n"]]
                        for group, by_target in summary.get("mean_abs_fa_vs_target", {}).items()
                        for target, c in by_target.items() if target != "scans"]
    tables["correlations"] = _write_table(
        out, "correlations", ["scans", "ICAM-reg mean abs(FA) vs", "Pearson r", "Spearman ρ", "n"], correlation_rows,
        "Mean |FA| inside the brain against the target. Pooled: every test scan, both directions; upper class "
        "translated down: the old scans made young, the paper's analysis (paper: predicted 0.306 > true 0.255).")
    (out / "results.md").write_text("\n\n".join(f"## {k}\n\n{v}" for k, v in tables.items()))
    return tables


def _comparison_figure(out: Path, maps_dirs: dict, csv_path: Path, subjects: int) -> Path | None:
    """The same test subjects side by side: input, ground truth and each method's map (the
    report's gallery, as a PNG beside the tables)."""
    fig = gallery_figure(csv_path, {METHOD_LABELS[k]: folder for k, folder in maps_dirs.items()}, subjects)
    if fig is None:
        return None
    path = out / "results" / "comparison.png"
    fig.suptitle("Test subjects (red brighter, blue darker): the ground truth and ICAM share one symmetric colour "
                 "range, every other map has its own; VA-GAN maps class 1 → 0 only", fontsize=10)
    fig.savefig(path, dpi=DPI)
    pyplot().close(fig)
    return path
