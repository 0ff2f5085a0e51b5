"""`icam predict` and `icam explain` on a cohort: every input predicted, the chosen ones
explained (ICAM's translations, or a baseline's maps), written into an explanation folder
(``outputs.ExplanationFolder``) with the cohort's analyses; pairs and interpolations. One file
at a time (reading through the run's preprocessing, naming, writing maps on each file's grid)
is ``scans``."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

import numpy as np
from torch.utils.data import DataLoader

from .data.nifti import NiftiCohort
from .data.table import UNKNOWN_LABEL, probability_columns
from .errors import UserError
from .files import write_json
from .loaded_run import LoadedRun
from .model import next_class
from .outputs import ExplanationFolder, write_csv, write_map
from .predictions import PredictionRecord, known_target, write_predictions
from .report.figures import TSNE_MINIMUM, explanation_figure, interpolation_strip, tsne_figure
from .scans import brain_mask, load_images, output_id, write_mask, write_scan_map, write_scan_maps

if TYPE_CHECKING:
    from .config import Reference, Sampling
    from .data.cohort import Item
    from .explain import Explainer, Explanation, Refinement

FigureChoice = Literal["all", "outliers", "none"]  # which explained scans get a PNG overlay
FIGURE_CHOICES: tuple[str, ...] = get_args(FigureChoice)


def check_figures(figures: str) -> None:
    if figures not in FIGURE_CHOICES:
        raise UserError(f"figures={figures!r}: expected one of {', '.join(FIGURE_CHOICES)}")


def _run_facts(model: LoadedRun) -> dict:
    """Which model made the outputs: its checkpoint step and run folder (evaluate and the report
    read the run's column names, classes and splits from there)."""
    return {**model.checkpoint_info, "run_dir": str(model.run_dir.resolve()) if model.run_dir else None}


def class_name(names: list[str], label: int, raw: str = "") -> str | None:
    """A class index as outputs write it; an unknown one as the table wrote it (MCI), or None."""
    return names[label] if 0 <= label < len(names) else raw or None


def predict_rows(model: LoadedRun, dataset: NiftiCohort, batch_size: int = 16) -> list[PredictionRecord]:
    """One record per item: the prediction (class probabilities and/or regressed target, as the
    model makes them), with the table's label and target when known."""
    names = model.class_names
    records, index = [], 0
    for batch in DataLoader(dataset, batch_size=batch_size):
        prediction = model.predict(batch["image"])
        for j in range(len(batch["image"])):
            source = dataset.source(index)
            target = known_target(float(batch["target"][j]))
            record = PredictionRecord(
                output_id(dataset, index), source.row, source.file, source.slice,
                class_name(names, int(batch["label"][j]), source.raw_label),
                # float32 in the batch: 7 digits are the table's value (45.951, not 45.95100021)
                None if target is None else float(f"{target:.7g}"))
            if prediction is not None and prediction.probabilities is not None:
                assert prediction.predicted_class is not None  # a classifier's prediction has both
                record.predicted_class = names[int(prediction.predicted_class[j])]
                record.probabilities = {n: round(float(p), 5) for n, p in zip(names, prediction.probabilities[j])}
            if prediction is not None and prediction.target is not None and model.regressing:
                record.predicted_target = round(float(prediction.target[j]), 4)
            records.append(record)
            index += 1
    return records


def attribute_cohort(model: LoadedRun, dataset: NiftiCohort, folder: ExplanationFolder, *,
                     figures: FigureChoice = "all", limit: int | None = None, progress=None) -> dict:
    """A baseline's maps (``model.attribute``: a post-hoc method on a classifier, or VA-GAN) for
    each input, written like ICAM's (``maps/<id>_fa_mean.nii.gz``), so ``icam evaluate`` scores
    them the same way. Post-hoc maps explain each scan's table label (its prediction when
    unlabelled); VA-GAN's map is its one translation, class 1 → 0."""
    check_figures(figures)
    folder.create()
    records = predict_rows(model, dataset)
    count = len(dataset) if limit is None else min(limit, len(dataset))
    started = time.perf_counter()
    for i in range(count):
        item = dataset[i]
        label = int(item["label"])
        fa = model.attribute(item["image"], target=None if label == UNKNOWN_LABEL else label)[0, 0].cpu().numpy()
        ident = output_id(dataset, i)
        write_scan_map(folder, dataset, i, "fa_mean", fa, f"icam {model.name} map", model.fingerprint,
                       {"Description": f"{model.name} map", "Method": model.name})
        mask = brain_mask(item)
        write_mask(folder, item, dataset, i, model.fingerprint)
        records[i].mean_abs_fa = float(np.abs(fa)[mask > 0].mean())
        if figures == "all":
            gt = item["gt_map"][0].numpy() if "gt_map" in item else None
            explanation_figure(folder.figure(ident), item["image"][0].numpy(), fa, None, mask,
                               f"{ident}: {model.name} map", gt, affine=dataset.item_affine(i))
        if progress:
            progress(i + 1, count)
    write_predictions(folder.predictions, records)
    summary = {"method": model.name, "run": _run_facts(model), "inputs": len(dataset), "explained": count,
               "seconds_per_scan": round((time.perf_counter() - started) / max(1, count), 3),
               **_cohort_analyses(records, records[:count], False, model.class_names)}
    write_json(folder.summary, summary)
    return summary


def predict_or_attribute(model: LoadedRun, dataset: NiftiCohort, folder: ExplanationFolder, *,
                         figures: FigureChoice = "all", limit: int | None = None, progress=None) -> None:
    """A baseline's explanation folder: its maps when it makes them, else its predictions only."""
    if model.makes_maps:
        attribute_cohort(model, dataset, folder, figures=figures, limit=limit, progress=progress)
    else:  # no maps/: a folder of predictions only
        folder.root.mkdir(parents=True, exist_ok=True)
        write_predictions(folder.predictions, predict_rows(model, dataset))


def explain_pair(explainer: Explainer, a: Path, b: Path, folder: ExplanationFolder) -> list[Path]:
    """Scan a with b's attribute and b with a's: translations and FA maps in each input's space."""
    dataset = load_images(explainer, [a, b])
    first, second = dataset[0], dataset[1]
    result = explainer.pair(first["image"], second["image"])
    ids = [output_id(dataset, 0), output_id(dataset, 1)]
    written = []
    for i, (other, translated, fa) in enumerate(((ids[1], result.a_as_b, result.fa_a),
                                                 (ids[0], result.b_as_a, result.fa_b))):
        stem = folder.root / f"{ids[i]}_with_{other}"
        fa_np = fa[0, 0].cpu().numpy()
        written.append(write_map(translated[0, 0].cpu().numpy(), dataset, i, Path(f"{stem}_translated.nii.gz"),
                                 f"icam translation with the attribute of {other}", explainer.fingerprint, "range"))
        written.append(write_map(fa_np, dataset, i, Path(f"{stem}_fa.nii.gz"), f"icam FA map, attribute of {other}",
                                 explainer.fingerprint))
        item = (first, second)[i]
        written.append(explanation_figure(Path(f"{stem}_fa.png"), item["image"][0].numpy(), fa_np, None,
                                          brain_mask(item), f"{ids[i]} with the attribute of {other}",
                                          map_title="FA of this one translation", affine=dataset.item_affine(i)))
    return written


def explain_interpolation(explainer: Explainer, a: Path, b: Path, steps: int, folder: ExplanationFolder
                          ) -> list[Path]:
    """The walk from a's attribute to b's on a's content: one translated image per step, a strip, a table."""
    dataset = load_images(explainer, [a, b])
    first = dataset[0]
    walk = explainer.interpolate(first["image"], dataset[1]["image"], steps)
    stem = folder.root / f"{output_id(dataset, 0)}_to_{output_id(dataset, 1)}"
    written = [write_map(walk.images[k, 0].cpu().numpy(), dataset, 0, Path(f"{stem}_step{k:02d}.nii.gz"),
                         f"icam interpolation step {k} of {steps}", explainer.fingerprint, "range")
               for k in range(steps)]
    records = [{"step": k, "weight": round(float(walk.weights[k]), 4),
                **{column: round(float(p), 5) for column, p in
                   zip(probability_columns(explainer.class_names), walk.probabilities[k])},
                **({"predicted_target": round(float(walk.targets[k]), 4)} if explainer.regressing else {})}
               for k in range(steps)]
    written.append(write_csv(Path(f"{stem}_interpolation.csv"), records))
    written.append(interpolation_strip(Path(f"{stem}_interpolation.png"), walk.images[:, 0].cpu().numpy(),
                                       walk.fa_maps[:, 0].cpu().numpy(), brain_mask(first),
                                       walk.probabilities.cpu().numpy(),
                                       walk.targets.cpu().numpy() if explainer.regressing else None,
                                       f"{output_id(dataset, 0)}: attribute from its own to that of "
                                       f"{output_id(dataset, 1)}", explainer.class_names, dataset.item_affine(0)))
    return written


def explain_cohort(explainer: Explainer, dataset: NiftiCohort, folder: ExplanationFolder, *,
                   target_class: int | None = None, from_label: bool = False, n_samples: int = 100,
                   min_probability: float | None = 0.9, seed: int = 0, reconstruction: bool = False,
                   figures: FigureChoice = "all", limit: int | None = None, outliers: int = 5,
                   reference: Reference = "input", native_intensity: bool = False,
                   refinement: Refinement | None = None, sampling: Sampling | None = None, progress=None) -> dict:
    """Maps, figures (``figures``: all, outliers or none), predictions and the cohort analyses for
    every item of ``dataset``. ``native_intensity``: the translations in the inputs' own intensity
    units instead of the model's [−1, 1]. ``sampling``: how the attributes are drawn (None: the
    run's own). ``refinement``: fit each scan's content code first (``explain.Refinement``); the
    summary gives its seconds per scan and the decoder's error before and after.
    ``from_label``: translate each scan from its table label to the next class (the other one
    for K = 2), as scoring against ground-truth maps needs, instead of from the prediction.

    Per scan: compute (:func:`_explain_scan`), write the maps (``scans.write_scan_maps``), add
    its numbers to its predictions row, draw it if chosen; then the cohort's summary."""
    folder.create()
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
        mean, mask = explanation.mean[0, 0].cpu().numpy(), brain_mask(item)
        target_name = _target_name(explainer, explanation)
        write_scan_maps(folder, dataset, i, explanation.scan_maps(source_class, target_name), explainer.fingerprint,
                        native_intensity)
        if explanation.refinement is not None:
            refined.append(explanation.refinement)
        write_mask(folder, item, dataset, i, explainer.fingerprint)
        record = records[i]
        record.target_class, record.mean_abs_fa = target_name, float(np.abs(mean)[mask > 0].mean())
        record.acceptance_rate, record.fallback = round(explanation.acceptance_rate, 4), explanation.fallback
        if reconstruction:
            record.reconstruction_mean_abs_fa = _write_reconstruction_map(
                explainer, explanation, item, dataset, i, folder, options)
        if i in drawn:
            explanation_figure(folder.figure(output_id(dataset, i)), item["image"][0].numpy(), mean,
                               explanation.var[0, 0].cpu().numpy(), mask,
                               _figure_title(explainer, explanation, item, record, output_id(dataset, i)),
                               item["gt_map"][0].numpy() if "gt_map" in item else None,
                               affine=dataset.item_affine(i))
        attributes.append(explanation.prediction.attribute_mean[0].cpu().numpy())
        acceptance.append((explanation.acceptance_rate, explanation.fallback))
        if progress:
            progress(done, len(chosen))
    write_predictions(folder.predictions, records)
    summary = {
        "run": _run_facts(explainer), "classes": explainer.class_names, "inputs": len(dataset),
        "explained": len(chosen), "n_samples": n_samples, "min_probability": min_probability, "seed": seed,
        "reference": reference, "translation": explainer.model.translation, "sampling": sampling,
        "precision": explainer.precision,
        "refinement": _refinement_summary(refinement, refined),
        "target_class": "the next class after the label" if from_label else target_class if target_class is not None
        else "the most probable other class",
        "seconds_per_scan": round((time.perf_counter() - started) / max(1, len(chosen)), 3),
        **_cohort_summary(records, chosen, attributes, acceptance, explainer, folder, outliers, seed)}
    write_json(folder.summary, summary)
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


def _chosen_inputs(records: list[PredictionRecord], limit: int | None, outliers: int, figures: str
                   ) -> tuple[list[int], set[int]]:
    """Which inputs to explain (at most ``limit``: the worst-predicted ones first, so the outlier
    gallery has maps, then the first others) and which of those to draw (``figures``)."""
    check_figures(figures)
    budget = len(records) if limit is None else min(limit, len(records))
    worst = [r.row for r in _outliers(records, outliers)]
    first = [i for i, r in enumerate(records) if r.row in worst][:budget]
    chosen = sorted(first + [i for i in range(len(records)) if i not in first][: budget - len(first)])
    drawn = set(chosen) if figures == "all" else {i for i in chosen if records[i].row in worst} \
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


def _write_reconstruction_map(explainer: Explainer, explanation: Explanation, item: Item, dataset: NiftiCohort,
                              i: int, folder: ExplanationFolder, options: dict) -> float:
    """The model's noise floor: the map of the scan translated to its own predicted class,
    written beside its other maps; returns its mean |FA| in the brain."""
    own = explainer.explain(item["image"], target=int(explanation.prediction.predicted_class[0]), **options)
    own_mean = own.mean[0, 0].cpu().numpy()
    description = f"icam mean FA map to its own class, {options['n_samples']} samples"
    write_scan_map(folder, dataset, i, "reconstruction_fa_mean", own_mean, description, explainer.fingerprint,
                   {"Description": f"{description}: the model's noise floor", "Samples": options["n_samples"]})
    return float(np.abs(own_mean)[brain_mask(item) > 0].mean())


def _figure_title(explainer: Explainer, explanation: Explanation, item: Item, record: PredictionRecord,
                  ident: str) -> str:
    """What the explanation figure says of its scan: the prediction, what is known, the translation."""
    names, p = explainer.class_names, explanation.prediction
    known = ([record.label] if record.label is not None else []) + \
        ([f"target {float(item['target']):.1f}"] if not math.isnan(float(item["target"])) else [])
    return (f"{ident}: predicted {names[int(p.predicted_class[0])]} (p {float(p.probabilities[0].max()):.2f})"
            + (f", target {float(p.target[0]):.1f}" if explainer.regressing else "")
            + (f"; true {', '.join(known)}" if known else "")
            + f"; translated to {_target_name(explainer, explanation)}, {explanation.n_samples} samples")


def _cohort_summary(records: list[PredictionRecord], chosen: list[int], attributes: list[np.ndarray],
                    acceptance: list[tuple[float, bool]], explainer: Explainer, folder: ExplanationFolder,
                    outliers: int, seed: int) -> dict:
    """The cohort's figures of the explained scans (``chosen``, with their attribute means and
    (acceptance rate, fallback)): acceptance, the analyses, the t-SNE of the attribute means
    (enough scans only) and the outlier table (regression)."""
    names, explained = explainer.class_names, [records[i] for i in chosen]
    summary = {"mean_acceptance_rate": round(float(np.mean([rate for rate, _ in acceptance])), 4)
               if acceptance else None,
               "scans_with_fallback": sum(fallback for _, fallback in acceptance),
               **_cohort_analyses(records, explained, explainer.regressing, names)}
    if len(chosen) >= TSNE_MINIMUM:
        labels = np.array([r.label if r.label in names else r.predicted_class for r in explained])
        targets = np.array([np.nan if r.target is None else r.target for r in explained], dtype=float)
        tsne_figure(folder.tsne, np.stack(attributes), labels, targets, seed)
        summary["tsne"] = str(folder.tsne.relative_to(folder.root))
    worst = _outliers(records, outliers)
    if worst:
        write_predictions(folder.outliers, worst, [{"error": r.error} for r in worst])
        summary["outliers"] = [{"id": r.id, "error": r.error, "figure": str(folder.figure(r.id).relative_to(
            folder.root))} for r in worst]
    return summary


FA_CORRELATION_GROUPS = {
    "pooled": "every explained scan, both directions",
    "upper_class_translated_down": "scans of the highest class translated to a lower one (the paper's analysis: "
                                   "old subjects made young)",
}


def _cohort_analyses(records: list[PredictionRecord], explained: list[PredictionRecord], regressing: bool,
                     names: list[str]) -> dict:
    """Prediction quality over every input with a known label/target; how the FA magnitude of
    the explained ones relates to the predicted and the true target, over all of them (pooled)
    and, as in the paper, over the scans of the highest class translated down."""
    from scipy import stats

    result: dict[str, Any] = {}
    labelled = [r for r in records if r.label in names and r.predicted_class is not None]
    if labelled:
        result["accuracy"] = round(float(np.mean([r.label == r.predicted_class for r in labelled])), 4)
    if not regressing:
        return result
    errors = np.array([r.error for r in records if r.error is not None])
    if len(errors):
        result["mae"] = round(float(np.abs(errors).mean()), 4)
    top = names[-1]  # the paper's analysis: the highest class (old) translated to a lower one
    groups = {"pooled": explained,
              "upper_class_translated_down": [
                  r for r in explained if (r.target_class or top) != top
                  and (r.label if r.label in names else r.predicted_class) == top]}
    correlations: dict[str, dict] = {}
    for group, members in groups.items():
        magnitude = np.array([r.mean_abs_fa for r in members], dtype=float)
        for name, values in (("predicted_target", [r.predicted_target for r in members]),
                             ("true_target", [r.target for r in members])):
            against = np.array([np.nan if v is None else v for v in values], dtype=float)
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


def _outliers(records: list[PredictionRecord], k: int) -> list[PredictionRecord]:
    """The k largest |predicted − true| targets (regression runs with known targets)."""
    known = [r for r in records if r.error is not None]
    return sorted(known, key=lambda r: -abs(r.error or 0.0))[:k]
