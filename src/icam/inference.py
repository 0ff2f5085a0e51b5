"""`icam predict` and `icam explain` on files: inputs preprocessed as in training, outputs
written in each input's own space.

Inputs are a cohort table (CSV, labels optional), read through the run's own column names,
classes and (when the table has no split column) the run's splits.csv, or single NIfTI files;
they go through the run's own preprocessing (orientation, spacing, brain window, shape,
intensities). Every map is written back onto its input's grid (a 2D model's map fills its
slice of the input volume) with a fresh header: the input's affine and qform/sform codes,
float32, the map's own display range and a description of what it is.
"""

from __future__ import annotations

import csv
import json
import math
import tempfile
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .config import CsvData
from .data.brain_synth import DESIGNS
from .data.cohort import Item
from .data.nifti import NiftiCohort, PreprocessingCache, Spatial, fill_cache
from .data.table import UNKNOWN_LABEL, DataError, Problem, probability_columns, read_table, require_split
from .files import write_json
from .model import next_class
from .outputs import write_csv, write_map

if TYPE_CHECKING:  # the explainer calls into this module (preprocess): only its types are needed here
    from .explain import Explainer, Explanation, Refinement


TSNE_MINIMUM = 30  # explained scans a t-SNE of attribute means needs
FIGURE_CHOICES = ("all", "outliers", "none")  # which explained scans get a PNG overlay


def check_figures(figures: str) -> None:
    if figures not in FIGURE_CHOICES:
        raise ValueError(f"figures={figures!r}: expected one of {', '.join(FIGURE_CHOICES)}")


def preprocessing_for(model, csv_path: Path) -> CsvData:
    """The data settings that turn files into what this model was trained on."""
    data = model.config.data if model.config is not None else None
    if data is not None and data.kind == "csv":
        return data.model_copy(update={"csv": str(csv_path), "skip_bad": False, "max_brain_cropped": 1.0,
                                       "augment": data.augment.model_copy(update={"enabled": False})})
    # brain-synth files are already in [−1, 1] and span one field of view at any size (resize, the
    # whole image); squares were min–max scaled per image and have no anatomy to mask
    kind = data.kind if data is not None else None
    return CsvData(csv=str(csv_path), shape=list(model.image_shape),
                   intensity="none" if kind == "brain-synth" else "minmax",
                   fit="resize" if kind == "brain-synth" else "pad_crop",
                   brain_mask="none" if kind in ("brain-synth", "squares") else "auto",
                   slice_axis=DESIGNS[data.design].slice_axis if data is not None and kind == "brain-synth" else 2)


def load_images(model, images: list[Path]) -> NiftiCohort:
    """Single NIfTI files (``--image``, ``--pair``, ``--interpolate``) as a cohort, through the run's
    preprocessing: listed in a temporary table under the run's image column."""
    for image in images:
        if not Path(image).is_file():
            raise FileNotFoundError(f"no such image: {image}")
    with tempfile.TemporaryDirectory(prefix="icam-inputs-") as folder:
        path = Path(folder) / "inputs.csv"
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow([preprocessing_for(model, path).columns.image])
            writer.writerows([[str(Path(image).resolve())] for image in images])
        try:
            return load_inputs(model, path)
        except DataError as e:  # the user's files, not the rows of a table they never wrote
            raise DataError([Problem(None, p.message, p.file or (str(images[p.row - 2]) if p.row else None))
                             for p in e.problems], skippable=False) from None


def load_inputs(model, csv_path: Path, split: str | None = None) -> NiftiCohort:
    """Read, check and preprocess the listed files (labels and targets optional), through the
    run's column names, classes, splits and preprocessing."""
    data = preprocessing_for(model, csv_path)
    run_dir = getattr(model, "run_dir", None)
    table = read_table(csv_path, data, require_label=False, run_dir=run_dir)
    rows, problems = table.rows, table.problems
    for warning in table.warnings:
        warnings.warn(f"{csv_path}: {warning}", stacklevel=2)
    if split is not None:
        rows = require_split(table, split, csv_path)
        if not rows:
            raise ValueError(f"{csv_path}: no rows in split {split!r}")
    cache = PreprocessingCache(data.cache_dir, Spatial.of(data))
    entries, file_problems = fill_cache(cache, rows, data.preprocess_workers)
    problems += file_problems
    if problems:
        raise DataError(problems, f"{csv_path}: ", skippable=False)
    saved = data.intensity_range
    if data.intensity == "cohort" and saved is None and run_dir is not None and (run_dir / "data.json").is_file():
        saved = json.loads((run_dir / "data.json").read_text()).get("intensity_range") or None
    range_ = (float(saved[0]), float(saved[1])) if saved else None
    if data.intensity == "cohort" and range_ is None:
        raise ValueError("this run scales intensities with a cohort-wide range, which is in its run folder's "
                         "data.json (intensity_range): load the model from its run folder")
    dataset = NiftiCohort(rows, entries, data, intensity_range=range_)
    dataset.model_fingerprint = getattr(model, "fingerprint", "")  # maps written from it carry it (aux_file)
    return dataset


class Scan:
    """One file as the model sees it, and the way back to the file's grid (``model.preprocess``)."""

    def __init__(self, dataset: NiftiCohort):
        self.dataset = dataset
        self.item = dataset[0]

    @property
    def image(self):
        """(1, 1, *shape): the preprocessed, scaled image."""
        return self.item["image"][None]

    @property
    def mask(self):
        """(1, 1, *shape): the brain mask (the table's, or the foreground mask), or None."""
        return self.item["mask"][None] if "mask" in self.item else None

    def write(self, array, path: str | Path, description: str = "icam map", display: str = "symmetric") -> Path:
        """A map of this scan (tensor or array of the model's shape) on the file's grid, as NIfTI."""
        volume = np.asarray(array.detach().cpu() if hasattr(array, "detach") else array, dtype=np.float32)
        return write_map(volume.reshape(volume.shape[-len(self.dataset.image_shape):]), self.dataset, 0, Path(path),
                         description, display)


def output_id(dataset: NiftiCohort, i: int) -> str:
    source = dataset.source(i)
    stem = source.id
    if source.slice is not None and dataset.config.slices_per_subject > 1:
        stem += f"_slice{source.slice}"
    return stem


def _brain_mask(item: Item) -> np.ndarray:
    """The item's brain mask (the table's or the foreground mask), else every voxel."""
    return item["mask"][0].numpy() if "mask" in item else np.ones(item["image"].shape[1:], dtype=np.float32)


def _write_mask(item: Item, dataset: NiftiCohort, i: int, out: Path) -> None:
    """The brain mask the maps were masked and scored with, on the input's grid (once per scan)."""
    if "mask" in item:
        write_map(item["mask"][0].numpy(), dataset, i, out / "maps" / f"{output_id(dataset, i)}_mask.nii.gz",
                  "icam brain mask (table or foreground)", "range", mode="nearest")


def _run_facts(model) -> dict:
    """Which model made the outputs: its checkpoint step and run folder (evaluate and the report
    read the run's column names, classes and splits from there)."""
    run_dir = getattr(model, "run_dir", None)
    return {**model.checkpoint_info, "run_dir": str(Path(run_dir).resolve()) if run_dir else None}


def class_name(names: list[str], label: int, raw: str = "") -> str:
    """A class index as outputs write it; an unknown one as the table wrote it (MCI), or empty."""
    return names[label] if 0 <= label < len(names) else raw


def predict_rows(model, dataset: NiftiCohort, batch_size: int = 16) -> list[dict]:
    """One record per item: the prediction (class probabilities and/or regressed target, as the
    model makes them), with the table's label and target when known."""
    from torch.utils.data import DataLoader

    names = model.class_names
    records, index = [], 0
    for batch in DataLoader(dataset, batch_size=batch_size):
        prediction = model.predict(batch["image"])
        for j in range(len(batch["image"])):
            source = dataset.source(index)
            target = float(batch["target"][j])
            record = {"id": output_id(dataset, index), "row": source.row, "file": source.file,
                      "slice": "" if source.slice is None else source.slice,
                      "label": class_name(names, int(batch["label"][j]), source.raw_label),
                      # float32 in the batch: 7 digits are the table's value (45.951, not 45.95100021)
                      "target": "" if math.isnan(target) else float(f"{target:.7g}")}
            if prediction is not None and prediction.probabilities is not None:
                record["predicted_class"] = names[int(prediction.predicted_class[j])]
                record.update({column: round(float(p), 5) for column, p in
                               zip(probability_columns(names), prediction.probabilities[j])})
            if prediction is not None and prediction.target is not None and model.regressing:
                record["predicted_target"] = round(float(prediction.target[j]), 4)
            records.append(record)
            index += 1
    return records


def attribute_cohort(model, dataset: NiftiCohort, out: Path, *, figures: str = "all", limit: int | None = None,
                     progress=None) -> dict:
    """A baseline's maps (``model.attribute``: a post-hoc method on a classifier, or VA-GAN) for
    each input, written like ICAM's (``maps/<id>_fa_mean.nii.gz``), so ``icam evaluate`` scores
    them the same way. Post-hoc maps explain each scan's table label (its prediction when
    unlabelled); VA-GAN's map is its one translation, class 1 → 0."""
    from .report.figures import explanation_figure

    check_figures(figures)
    for folder in ("maps", "figures"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    records = predict_rows(model, dataset)
    count = len(dataset) if limit is None else min(limit, len(dataset))
    started = time.perf_counter()
    for i in range(count):
        item = dataset[i]
        label = int(item["label"])
        fa = model.attribute(item["image"], target=None if label == UNKNOWN_LABEL else label)[0, 0].cpu().numpy()
        ident = output_id(dataset, i)
        write_map(fa, dataset, i, out / "maps" / f"{ident}_fa_mean.nii.gz", f"icam {model.name} map")
        mask = _brain_mask(item)
        _write_mask(item, dataset, i, out)
        records[i]["mean_abs_fa"] = float(np.abs(fa)[mask > 0].mean())
        if figures == "all":
            gt = item["gt_map"][0].numpy() if "gt_map" in item else None
            explanation_figure(out / "figures" / f"{ident}_fa.png", item["image"][0].numpy(), fa, None, mask,
                               f"{ident}: {model.name} map", gt, affine=dataset.item_affine(i))
        if progress:
            progress(i + 1, count)
    write_csv(out / "predictions.csv", records)
    summary = {"method": model.name, "run": _run_facts(model), "inputs": len(dataset), "explained": count,
               "seconds_per_scan": round((time.perf_counter() - started) / max(1, count), 3),
               **_cohort_analyses(records, records[:count], False, model.class_names)}
    write_json(out / "summary.json", summary)
    return summary


def explain_pair(explainer: Explainer, a: Path, b: Path, out: Path) -> list[Path]:
    """Scan a with b's attribute and b with a's: translations and FA maps in each input's space."""
    from .report.figures import explanation_figure

    dataset = load_images(explainer, [a, b])
    first, second = dataset[0], dataset[1]
    result = explainer.pair(first["image"], second["image"])
    ids = [output_id(dataset, 0), output_id(dataset, 1)]
    written = []
    for i, (other, translated, fa) in enumerate(((ids[1], result.a_as_b, result.fa_a),
                                                 (ids[0], result.b_as_a, result.fa_b))):
        stem = f"{ids[i]}_with_{other}"
        fa_np = fa[0, 0].cpu().numpy()
        written.append(write_map(translated[0, 0].cpu().numpy(), dataset, i, out / f"{stem}_translated.nii.gz",
                                 f"icam translation with the attribute of {other}", "range"))
        written.append(write_map(fa_np, dataset, i, out / f"{stem}_fa.nii.gz", f"icam FA map, attribute of {other}"))
        item = (first, second)[i]
        written.append(explanation_figure(out / f"{stem}_fa.png", item["image"][0].numpy(), fa_np, None,
                                          _brain_mask(item), f"{ids[i]} with the attribute of {other}",
                                          map_title="FA of this one translation", affine=dataset.item_affine(i)))
    return written


def explain_interpolation(explainer: Explainer, a: Path, b: Path, steps: int, out: Path) -> list[Path]:
    """The walk from a's attribute to b's on a's content: one translated image per step, a strip, a table."""
    from .report.figures import interpolation_strip

    dataset = load_images(explainer, [a, b])
    first = dataset[0]
    walk = explainer.interpolate(first["image"], dataset[1]["image"], steps)
    stem = f"{output_id(dataset, 0)}_to_{output_id(dataset, 1)}"
    written = [write_map(walk.images[k, 0].cpu().numpy(), dataset, 0, out / f"{stem}_step{k:02d}.nii.gz",
                         f"icam interpolation step {k} of {steps}", "range") for k in range(steps)]
    records = [{"step": k, "weight": round(float(walk.weights[k]), 4),
                **{column: round(float(p), 5) for column, p in
                   zip(probability_columns(explainer.class_names), walk.probabilities[k])},
                **({"predicted_target": round(float(walk.targets[k]), 4)} if explainer.regressing else {})}
               for k in range(steps)]
    written.append(write_csv(out / f"{stem}_interpolation.csv", records))
    written.append(interpolation_strip(out / f"{stem}_interpolation.png", walk.images[:, 0].cpu().numpy(),
                                       walk.fa_maps[:, 0].cpu().numpy(), _brain_mask(first),
                                       walk.probabilities.cpu().numpy(),
                                       walk.targets.cpu().numpy() if explainer.regressing else None,
                                       f"{output_id(dataset, 0)}: attribute from its own to that of "
                                       f"{output_id(dataset, 1)}", explainer.class_names, dataset.item_affine(0)))
    return written


def explain_cohort(explainer: Explainer, dataset: NiftiCohort, out: Path, *, target_class: int | None = None,
                   from_label: bool = False, n_samples: int = 100, min_probability: float | None = 0.9,
                   seed: int = 0, reconstruction: bool = False, figures: str = "all", limit: int | None = None,
                   outliers: int = 5, reference: str = "input", native_intensity: bool = False,
                   refinement: Refinement | None = None, sampling: str | None = None, progress=None,
                   collect: list[Explanation] | None = None) -> dict:
    """Maps, figures (``figures``: all, outliers or none), predictions and the cohort analyses for
    every item of ``dataset``. ``native_intensity``: the translations in the inputs' own intensity
    units instead of the model's [−1, 1]. ``sampling``: how the attributes are drawn
    (``model.SAMPLINGS``; None: the run's own). ``refinement``: fit each scan's content code first
    (``explain.Refinement``); the summary gives its seconds per scan and the decoder's error
    before and after. ``collect``: a list each scan's Explanation is appended to (a single
    file's, ``Explainer.explain_file``; a cohort's would fill the memory).
    ``from_label``: translate each scan from its table label to the next class (the other one
    for K = 2), as scoring against ground-truth maps needs, instead of from the prediction.

    Per scan: compute (:func:`_explain_scan`), write the maps (:func:`write_scan_maps`), add
    its numbers to its predictions row, draw it if chosen; then the cohort's summary."""
    from .report.figures import explanation_figure

    for folder in (out, out / "maps", out / "figures"):
        folder.mkdir(parents=True, exist_ok=True)
    records = predict_rows(explainer, dataset)
    chosen, drawn = _chosen_inputs(records, limit, outliers, figures)
    sampling = sampling or explainer.sampling
    options = {"n_samples": n_samples, "min_probability": min_probability, "seed": seed, "reference": reference,
               "refinement": refinement, "sampling": sampling}
    # what the cohort summary needs of each scan (not its maps: a cohort of volumes would fill the memory)
    attributes, acceptance, refined, started = [], [], [], time.perf_counter()
    for done, i in enumerate(chosen, 1):
        item = dataset[i]
        explanation, source_class = _explain_scan(explainer, item, target_class, from_label, options)
        mean, mask = explanation.mean[0, 0].cpu().numpy(), _brain_mask(item)
        target_name = _target_name(explainer, explanation)
        write_scan_maps(explanation, dataset, i, out / "maps" / output_id(dataset, i),
                        f"{source_class}->{target_name}, {n_samples} samples", native_intensity)
        if explanation.refinement is not None:
            refined.append(explanation.refinement)
        _write_mask(item, dataset, i, out)
        records[i].update({"target_class": target_name, "mean_abs_fa": float(np.abs(mean)[mask > 0].mean()),
                           "acceptance_rate": round(explanation.acceptance_rate, 4),
                           "fallback": explanation.fallback})
        if reconstruction:
            records[i]["reconstruction_mean_abs_fa"] = _write_reconstruction_map(
                explainer, explanation, item, dataset, i, out, options)
        if i in drawn:
            explanation_figure(out / "figures" / f"{output_id(dataset, i)}_fa.png", item["image"][0].numpy(), mean,
                               explanation.var[0, 0].cpu().numpy(), mask,
                               _figure_title(explainer, explanation, item, records[i], output_id(dataset, i)),
                               item["gt_map"][0].numpy() if "gt_map" in item else None,
                               affine=dataset.item_affine(i))
        attributes.append(explanation.prediction.attribute_mean[0].cpu().numpy())
        if collect is not None:
            collect.append(explanation)
        acceptance.append((explanation.acceptance_rate, explanation.fallback))
        if progress:
            progress(done, len(chosen))
    write_csv(out / "predictions.csv", records)
    summary = {
        "run": _run_facts(explainer), "classes": explainer.class_names, "inputs": len(dataset),
        "explained": len(chosen), "n_samples": n_samples, "min_probability": min_probability, "seed": seed,
        "reference": reference, "translation": explainer.model.translation, "sampling": sampling,
        "precision": explainer.precision,
        "refinement": _refinement_summary(refinement, refined),
        "target_class": "the next class after the label" if from_label else target_class if target_class is not None
        else "the most probable other class",
        "seconds_per_scan": round((time.perf_counter() - started) / max(1, len(chosen)), 3),
        **_cohort_summary(records, chosen, attributes, acceptance, explainer, out, outliers, seed)}
    write_json(out / "summary.json", summary)
    return summary


def _refinement_summary(refinement: Refinement | None, records: list) -> dict | None:
    """What test-time refinement asked for and did, over the explained scans: its share of the
    seconds per scan (the rest is what explaining costs without it), steps taken, and the
    decoder's mean absolute error before and after."""
    if refinement is None:
        return None
    mean = (lambda values: round(float(np.mean(values)), 4)) if records else (lambda values: None)
    return {"asked": {"steps": refinement.steps, "seconds_per_scan": refinement.seconds, "lr": refinement.lr},
            "seconds_per_scan": mean([r.seconds for r in records]), "steps": mean([r.steps for r in records]),
            "reconstruction_l1_before": mean([r.l1_before for r in records]),
            "reconstruction_l1_after": mean([r.l1_after for r in records])}


def _chosen_inputs(records: list[dict], limit: int | None, outliers: int, figures: str) -> tuple[list[int], set[int]]:
    """Which inputs to explain (at most ``limit``: the worst-predicted ones first, so the outlier
    gallery has maps, then the first others) and which of those to draw (``figures``)."""
    check_figures(figures)
    budget = len(records) if limit is None else min(limit, len(records))
    worst = [r["row"] for r in _outliers(records, outliers)]
    first = [i for i, r in enumerate(records) if r["row"] in worst][:budget]
    chosen = sorted(first + [i for i in range(len(records)) if i not in first][: budget - len(first)])
    drawn = set(chosen) if figures == "all" else {i for i in chosen if records[i]["row"] in worst} \
        if figures == "outliers" else set()
    return chosen, drawn


def _explain_scan(explainer: Explainer, item: Item, target_class: int | None, from_label: bool,
                  options: dict) -> tuple[Explanation, str]:
    """One scan's explanation and the name of the class it is translated from: its label's (with
    ``from_label``, towards the next class) or its predicted one (towards ``target_class``, or
    the most probable other class)."""
    label = int(item["label"])
    own_class = label if from_label and label != UNKNOWN_LABEL else None
    target = target_class if own_class is None else next_class(own_class, explainer.model.num_classes)
    explanation = explainer.explain(item["image"], target=target, own_class=own_class, **options)
    source = own_class if own_class is not None else int(explanation.prediction.predicted_class[0])
    return explanation, explainer.class_names[source]


def _target_name(explainer: Explainer, explanation: Explanation) -> str:
    return explainer.class_names[int(explanation.target_class[0])]


def write_scan_maps(explanation: Explanation, dataset: NiftiCohort, i: int, stem: Path, direction: str,
                    native_intensity: bool = False) -> None:
    """Item ``i``'s mean and variance FA maps and mean translation (``<stem>_fa_mean.nii.gz``, …)
    on its input's own grid; the description says what made them (``Explanation.recipe``:
    "residual vs input, refined 50"; NIfTI keeps 80 characters, so it comes first) and
    ``direction`` ("AD->CN, 100 samples")."""
    write_map(explanation.mean[0, 0].cpu().numpy(), dataset, i, Path(f"{stem}_fa_mean.nii.gz"),
              f"icam FA mean, {explanation.recipe}: {direction}")
    write_map(explanation.var[0, 0].cpu().numpy(), dataset, i, Path(f"{stem}_fa_var.nii.gz"),
              f"icam FA variance, {explanation.recipe}: {direction}", "range")
    translated = explanation.translated[0, 0].cpu().numpy()
    write_map(dataset.denormalise(translated, i) if native_intensity else translated, dataset, i,
              Path(f"{stem}_translated.nii.gz"),
              f"icam mean translation {direction}" + (", input units" if native_intensity else ""), "range")


def _write_reconstruction_map(explainer: Explainer, explanation: Explanation, item: Item, dataset: NiftiCohort,
                              i: int, out: Path, options: dict) -> float:
    """The model's noise floor: the map of the scan translated to its own predicted class,
    written beside its other maps; returns its mean |FA| in the brain."""
    own = explainer.explain(item["image"], target=int(explanation.prediction.predicted_class[0]), **options)
    own_mean = own.mean[0, 0].cpu().numpy()
    write_map(own_mean, dataset, i, out / "maps" / f"{output_id(dataset, i)}_reconstruction_fa_mean.nii.gz",
              f"icam mean FA map to its own class, {options['n_samples']} samples")
    return float(np.abs(own_mean)[_brain_mask(item) > 0].mean())


def _figure_title(explainer: Explainer, explanation: Explanation, item: Item, record: dict, ident: str) -> str:
    """What the explanation figure says of its scan: the prediction, what is known, the translation."""
    names, p = explainer.class_names, explanation.prediction
    known = ([record["label"]] if record["label"] != "" else []) + \
        ([f"target {float(item['target']):.1f}"] if not math.isnan(float(item["target"])) else [])
    return (f"{ident}: predicted {names[int(p.predicted_class[0])]} (p {float(p.probabilities[0].max()):.2f})"
            + (f", target {float(p.target[0]):.1f}" if explainer.regressing else "")
            + (f"; true {', '.join(known)}" if known else "")
            + f"; translated to {_target_name(explainer, explanation)}, {explanation.n_samples} samples")


def _cohort_summary(records: list[dict], chosen: list[int], attributes: list[np.ndarray],
                    acceptance: list[tuple[float, bool]], explainer: Explainer, out: Path, outliers: int,
                    seed: int) -> dict:
    """The cohort's figures of the explained scans (``chosen``, with their attribute means and
    (acceptance rate, fallback)): acceptance, the analyses, the t-SNE of the attribute means
    (enough scans only) and the outlier table (regression)."""
    names, explained = explainer.class_names, [records[i] for i in chosen]
    summary = {"mean_acceptance_rate": round(float(np.mean([rate for rate, _ in acceptance])), 4)
               if acceptance else None,
               "scans_with_fallback": sum(fallback for _, fallback in acceptance),
               **_cohort_analyses(records, explained, explainer.regressing, names)}
    if len(chosen) >= TSNE_MINIMUM:  # fewer points make a t-SNE picture of noise (perplexity ~ n / 3)
        from .report.figures import tsne_figure

        labels = np.array([r["label"] if r["label"] in names else r["predicted_class"] for r in explained])
        targets = np.array([r["target"] if r["target"] != "" else np.nan for r in explained], dtype=float)
        tsne_figure(out / "figures" / "tsne.png", np.stack(attributes), labels, targets, seed)
        summary["tsne"] = "figures/tsne.png"
    outlier_rows = _outliers(records, outliers)
    if outlier_rows:
        write_csv(out / "outliers.csv", outlier_rows)
        summary["outliers"] = [{"id": r["id"], "error": r["error"], "figure": f"figures/{r['id']}_fa.png"}
                               for r in outlier_rows]
    return summary


FA_CORRELATION_GROUPS = {
    "pooled": "every explained scan, both directions",
    "upper_class_translated_down": "scans of the highest class translated to a lower one (the paper's analysis: "
                                   "old subjects made young)",
}


def _cohort_analyses(records: list[dict], explained: list[dict], regressing: bool, names: list[str]) -> dict:
    """Prediction quality over every input with a known label/target; how the FA magnitude of
    the explained ones relates to the predicted and the true target, over all of them (pooled)
    and, as in the paper, over the scans of the highest class translated down."""
    from scipy import stats

    result: dict[str, Any] = {}
    labelled = [r for r in records if r["label"] in names and "predicted_class" in r]
    if labelled:
        result["accuracy"] = round(float(np.mean([r["label"] == r["predicted_class"] for r in labelled])), 4)
    if not regressing:
        return result
    known = [r for r in records if r["target"] != ""]
    if known:
        errors = np.array([r["predicted_target"] - r["target"] for r in known])
        result["mae"] = round(float(np.abs(errors).mean()), 4)
    top = names[-1]  # the paper's analysis: the highest class (old) translated to a lower one
    groups = {"pooled": explained,
              "upper_class_translated_down": [
                  r for r in explained if r.get("target_class", top) != top
                  and (r["label"] if r["label"] in names else r["predicted_class"]) == top]}
    correlations: dict[str, dict] = {}
    for group, members in groups.items():
        magnitude = np.array([r["mean_abs_fa"] for r in members])
        for name, values in (("predicted_target", [r["predicted_target"] for r in members]),
                             ("true_target", [r["target"] if r["target"] != "" else np.nan for r in members])):
            against = np.asarray(values, dtype=float)
            ok = np.isfinite(against)
            if ok.sum() >= 3 and np.ptp(against[ok]) > 0 and np.ptp(magnitude[ok]) > 0:
                pearson = stats.pearsonr(magnitude[ok], against[ok])
                spearman = stats.spearmanr(magnitude[ok], against[ok])
                correlations.setdefault(group, {"scans": FA_CORRELATION_GROUPS[group]})[name] = {
                    "pearson_r": round(float(pearson[0]), 4), "pearson_p": float(pearson[1]),
                    "spearman_rho": round(float(spearman[0]), 4), "spearman_p": float(spearman[1]),
                    "n": int(ok.sum())}
    if correlations:
        result["mean_abs_fa_vs_target"] = correlations
    return result


def _outliers(records: list[dict], k: int) -> list[dict]:
    """The k largest |predicted − true| targets (regression runs with known targets), with the error."""
    known = [dict(r, error=round(r["predicted_target"] - r["target"], 4)) for r in records
             if r.get("predicted_target") is not None and r["target"] != ""]
    return sorted(known, key=lambda r: -abs(r["error"]))[:k]
