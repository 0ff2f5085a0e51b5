"""`icam predict` and `icam explain` on files: inputs preprocessed as in training, outputs
written in each input's own space.

Inputs are a cohort table (CSV, labels optional) or single NIfTI files; they go through the
trained run's own preprocessing (orientation, spacing, shape, intensities). Every map is
written back into the input's grid: resampled with the affines when the model ran at another
shape, with the input's header; a 2D map of a slice of a 3D volume is written as that slice.
"""

from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path

import numpy as np

from .config import CsvData
from .data.nifti import NiftiCohort, PreprocessingCache, Spatial, fill_cache, nifti_stem
from .data.resample import resample_to_grid
from .data.table import UNKNOWN_LABEL, DataError, read_table
from .explain import Explainer
from .model import next_class


def preprocessing_for(explainer: Explainer, csv_path: Path, cache_dir: Path | None = None) -> CsvData:
    """The data settings that turn files into what this model was trained on."""
    data = explainer.config.data if explainer.config is not None else None
    shape = list(explainer.image_shape)
    if data is not None and data.kind == "csv":
        return data.model_copy(update={"csv": str(csv_path), "cache_dir": str(cache_dir) if cache_dir else None,
                                       "skip_bad": False, "augment": data.augment.model_copy(update={"enabled": False})})
    # brain-synth files are already in [−1, 1] and span one field of view at any size (resize);
    # squares were min–max scaled per image
    synth = data is not None and data.kind == "brain-synth"
    return CsvData(csv=str(csv_path), shape=shape, intensity="none" if synth else "minmax",
                   fit="resize" if synth else "pad_crop", cache_dir=str(cache_dir) if cache_dir else None)


def image_table(images: list[Path], folder: Path, name: str = "input.csv") -> Path:
    """A cohort table listing ``images`` (for ``--image``, ``--pair``, ``--interpolate``)."""
    for image in images:
        if not Path(image).is_file():
            raise FileNotFoundError(f"no such image: {image}")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image"])
        writer.writerows([[str(Path(image).resolve())] for image in images])
    return path


def load_inputs(explainer: Explainer, csv_path: Path, split: str | None = None, cache_dir: Path | None = None,
                intensity_range=None) -> NiftiCohort:
    """Read, check and preprocess the listed files (labels and targets optional)."""
    data = preprocessing_for(explainer, csv_path, cache_dir)
    rows, problems = read_table(csv_path, data.columns, data.class_thresholds, require_label=False)
    if split is not None:
        rows = [r for r in rows if r.split == split]
        if not rows:
            raise DataError([], f"{csv_path}: no rows in split {split!r}; ")
    cache = PreprocessingCache(data.cache_dir or csv_path.parent / ".icam-cache", Spatial.of(data))
    entries, file_problems = fill_cache(cache, rows, data.preprocess_workers)
    problems += file_problems
    if problems:
        raise DataError(problems, f"{csv_path}: ")
    range_ = intensity_range or (data.intensity_range and tuple(data.intensity_range))
    if data.intensity == "cohort" and range_ is None:
        raise ValueError("this run scales intensities with a cohort-wide range; it is in the run folder's data.json "
                         "(intensity_range)")
    return NiftiCohort(rows, entries, data, intensity_range=range_)


def output_id(dataset: NiftiCohort, i: int) -> str:
    source = dataset.source(i)
    stem = nifti_stem(source["file"])
    if source["slice"] is not None and dataset.config.slices_per_subject > 1:
        stem += f"_slice{source['slice']}"
    return stem


def write_map(array: np.ndarray, dataset: NiftiCohort, i: int, path: Path) -> Path:
    """Write a map of item ``i`` in the input's own space, with the input's header."""
    import nibabel as nib

    source = dataset.source(i)
    model_affine = np.asarray(dataset[i]["affine"].numpy(), dtype=np.float64)
    volume = array if array.ndim == 3 else array[:, :, None]
    source_shape = tuple(source["source_shape"])
    source_affine = np.asarray(source["source_affine"])
    original = nib.load(source["file"])
    thin = len(source_shape) == 2 or 1 in source_shape[:3]
    if array.ndim == 3 or thin:  # back onto the input's grid
        target_shape = source_shape if len(source_shape) == 3 else source_shape + (1,)
        same = target_shape == volume.shape and np.allclose(model_affine, source_affine)
        data = volume if same else resample_to_grid(volume, model_affine, source_affine, target_shape)[0, 0].numpy()
        image = nib.Nifti1Image(data.reshape(original.shape[:3]).astype(np.float32), source_affine,
                                original.header.copy())
    else:  # a slice of a volume: written as that slice, placed in the world by its affine
        image = nib.Nifti1Image(volume.astype(np.float32), model_affine)
    image.set_data_dtype(np.float32)
    nib.save(image, str(path))
    return path


def _mask_of(item: dict) -> np.ndarray | None:
    return item["mask"][0].numpy() if "mask" in item else None


def _brain_mask(item: dict) -> np.ndarray:
    """The item's mask, else every voxel above the background (inputs are scaled to [−1, 1])."""
    mask = _mask_of(item)
    return mask if mask is not None else (item["image"][0].numpy() > -1 + 1e-3).astype(np.float32)


def predict_rows(model, dataset: NiftiCohort, batch_size: int = 16) -> list[dict]:
    """One record per item: the prediction (class probabilities and/or regressed target, as the
    model makes them), with the table's label and target when known."""
    from torch.utils.data import DataLoader

    records, index = [], 0
    for batch in DataLoader(dataset, batch_size=batch_size):
        prediction = model.predict(batch["image"])
        for j in range(len(batch["image"])):
            source = dataset.source(index)
            record = {"id": output_id(dataset, index), "row": source["row"], "file": source["file"],
                      "slice": "" if source["slice"] is None else source["slice"],
                      "label": "" if int(batch["label"][j]) == UNKNOWN_LABEL else int(batch["label"][j]),
                      "target": "" if math.isnan(float(batch["target"][j])) else float(batch["target"][j])}
            if prediction is not None and not math.isnan(float(prediction.probabilities[j, 0])):
                record["predicted_class"] = int(prediction.predicted_class[j])
                record.update({f"p_class{k}": round(float(p), 5) for k, p in enumerate(prediction.probabilities[j])})
            if prediction is not None and model.regressing:
                record["predicted_target"] = round(float(prediction.target[j]), 4)
            records.append(record)
            index += 1
    return records


def write_csv(path: Path, records: list[dict]) -> Path:
    """A table with every key any record has (in first-seen order; missing cells empty)."""
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, list(dict.fromkeys(k for r in records for k in r)))
        writer.writeheader()
        writer.writerows(records)
    return path


def attribute_cohort(model, dataset: NiftiCohort, out: Path, *, figures: str = "all", limit: int | None = None,
                     progress=None) -> dict:
    """A baseline's maps (``model.attribute``: a post-hoc method on a classifier, or VA-GAN) for
    each input, written like ICAM's (``maps/<id>_fa_mean.nii.gz``), so ``icam evaluate`` scores
    them the same way. Post-hoc maps explain each scan's table label (its prediction when
    unlabelled); VA-GAN's map is its one translation, class 1 → 0."""
    from .report.figures import explanation_figure

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
        write_map(fa, dataset, i, out / "maps" / f"{ident}_fa_mean.nii.gz")
        mask = _brain_mask(item)
        records[i]["mean_abs_fa"] = float(np.abs(fa)[mask > 0].mean())
        if figures == "all":
            gt = item["gt_map"][0].numpy() if "gt_map" in item else None
            explanation_figure(out / "figures" / f"{ident}_fa.png", item["image"][0].numpy(), fa, None, mask,
                               f"{ident}: {model.name} map", gt)
        if progress:
            progress(i + 1, count)
    write_csv(out / "predictions.csv", records)
    summary = {"method": model.name, "run": model.checkpoint_info, "inputs": len(dataset), "explained": count,
               "seconds_per_scan": round((time.perf_counter() - started) / max(1, count), 3),
               **_cohort_analyses(records, records[:count], False)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def explain_pair(explainer: Explainer, a: Path, b: Path, out: Path) -> list[Path]:
    """Scan a with b's attribute and b with a's: translations and FA maps in each input's space."""
    from .report.figures import explanation_figure

    dataset = load_inputs(explainer, image_table([a, b], out / ".inputs", "pair.csv"))
    first, second = dataset[0], dataset[1]
    result = explainer.pair(first["image"], second["image"])
    ids = [output_id(dataset, 0), output_id(dataset, 1)]
    written = []
    for i, (other, translated, fa) in enumerate(((ids[1], result.a_as_b, result.fa_a),
                                                 (ids[0], result.b_as_a, result.fa_b))):
        stem = f"{ids[i]}_with_{other}"
        fa_np = fa[0, 0].cpu().numpy()
        written.append(write_map(translated[0, 0].cpu().numpy(), dataset, i, out / f"{stem}_translated.nii.gz"))
        written.append(write_map(fa_np, dataset, i, out / f"{stem}_fa.nii.gz"))
        item = (first, second)[i]
        written.append(explanation_figure(out / f"{stem}_fa.png", item["image"][0].numpy(), fa_np, None,
                                          _brain_mask(item), f"{ids[i]} with the attribute of {other}"))
    return written


def explain_interpolation(explainer: Explainer, a: Path, b: Path, steps: int, out: Path) -> list[Path]:
    """The walk from a's attribute to b's on a's content: one translated image per step, a strip, a table."""
    from .report.figures import interpolation_strip

    dataset = load_inputs(explainer, image_table([a, b], out / ".inputs", "interpolation.csv"))
    first = dataset[0]
    walk = explainer.interpolate(first["image"], dataset[1]["image"], steps)
    stem = f"{output_id(dataset, 0)}_to_{output_id(dataset, 1)}"
    written = [write_map(walk.images[k, 0].cpu().numpy(), dataset, 0, out / f"{stem}_step{k:02d}.nii.gz")
               for k in range(steps)]
    records = [{"step": k, "weight": round(float(walk.weights[k]), 4),
                **{f"p_class{c}": round(float(p), 5) for c, p in enumerate(walk.probabilities[k])},
                **({"predicted_target": round(float(walk.targets[k]), 4)} if explainer.regressing else {})}
               for k in range(steps)]
    written.append(write_csv(out / f"{stem}_interpolation.csv", records))
    written.append(interpolation_strip(out / f"{stem}_interpolation.png", walk.images[:, 0].cpu().numpy(),
                                       walk.fa_maps[:, 0].cpu().numpy(), _brain_mask(first),
                                       walk.probabilities.cpu().numpy(),
                                       walk.targets.cpu().numpy() if explainer.regressing else None,
                                       f"{output_id(dataset, 0)}: attribute from its own to that of "
                                       f"{output_id(dataset, 1)}"))
    return written


def explain_cohort(explainer: Explainer, dataset: NiftiCohort, out: Path, *, target_class: int | None = None,
                   from_label: bool = False, n_samples: int = 100, min_probability: float | None = 0.9,
                   seed: int = 0, reconstruction: bool = False, figures: str = "all", limit: int | None = None,
                   outliers: int = 5, reference: str = "input", progress=None) -> dict:
    """Maps, figures (``figures``: all, outliers or none), predictions and the cohort analyses for
    every item of ``dataset``.
    ``from_label``: translate each scan from its table label to the next class (the other one
    for K = 2), as scoring against ground-truth maps needs, instead of from the prediction."""
    from .report.figures import explanation_figure, tsne_figure

    out.mkdir(parents=True, exist_ok=True)
    (out / "maps").mkdir(exist_ok=True)
    (out / "figures").mkdir(exist_ok=True)
    records = predict_rows(explainer, dataset)
    # the first `limit` inputs, and the worst-predicted ones so the outlier gallery has maps
    chosen = list(range(len(dataset) if limit is None else min(limit, len(dataset))))
    worst = [r["row"] for r in _outliers(records, outliers)]
    chosen += [i for i, r in enumerate(records) if r["row"] in worst and i not in chosen]
    drawn = set(chosen) if figures == "all" else {i for i in chosen if records[i]["row"] in worst} \
        if figures == "outliers" else set()
    count = len(chosen)
    attributes, started = [], time.perf_counter()
    acceptance, fallbacks = [], 0
    for done, i in enumerate(chosen, 1):
        item = dataset[i]
        ident = output_id(dataset, i)
        own_class = int(item["label"]) if from_label and int(item["label"]) != UNKNOWN_LABEL else None
        target = target_class if own_class is None else next_class(own_class, explainer.model.num_classes)
        explanation = explainer.explain(item["image"], target=target, n_samples=n_samples,
                                        min_probability=min_probability, seed=seed, reference=reference,
                                        own_class=own_class)
        mean, var = explanation.mean[0, 0].cpu().numpy(), explanation.var[0, 0].cpu().numpy()
        mask = _brain_mask(item)
        write_map(mean, dataset, i, out / "maps" / f"{ident}_fa_mean.nii.gz")
        write_map(var, dataset, i, out / "maps" / f"{ident}_fa_var.nii.gz")
        write_map(explanation.translated[0, 0].cpu().numpy(), dataset, i, out / "maps" / f"{ident}_translated.nii.gz")
        records[i].update({"target_class": int(explanation.target_class[0]),
                           "mean_abs_fa": float(np.abs(mean)[mask > 0].mean()),
                           "acceptance_rate": round(explanation.acceptance_rate, 4),
                           "fallback": explanation.fallback})
        if reconstruction:
            own = explainer.explain(item["image"], target=int(explanation.prediction.predicted_class[0]),
                                    n_samples=n_samples, min_probability=min_probability, seed=seed,
                                    reference=reference)
            own_mean = own.mean[0, 0].cpu().numpy()
            write_map(own_mean, dataset, i, out / "maps" / f"{ident}_reconstruction_fa_mean.nii.gz")
            records[i]["reconstruction_mean_abs_fa"] = float(np.abs(own_mean)[mask > 0].mean())
        if i in drawn:
            p = explanation.prediction
            known = ([f"class {int(item['label'])}"] if int(item["label"]) != UNKNOWN_LABEL else []) + \
                ([f"target {float(item['target']):.1f}"] if not math.isnan(float(item["target"])) else [])
            title = (f"{ident}: predicted class {int(p.predicted_class[0])} (p {float(p.probabilities[0].max()):.2f})"
                     + (f", target {float(p.target[0]):.1f}" if explainer.regressing else "")
                     + (f"; true {', '.join(known)}" if known else "")
                     + f"; translated to class {int(explanation.target_class[0])}, {n_samples} samples")
            gt = item["gt_map"][0].numpy() if "gt_map" in item else None
            explanation_figure(out / "figures" / f"{ident}_fa.png", item["image"][0].numpy(), mean, var, mask,
                               title, gt)
        attributes.append(explanation.prediction.attribute_mean[0].cpu().numpy())
        acceptance.append(explanation.acceptance_rate)
        fallbacks += explanation.fallback
        if progress:
            progress(done, count)
    seconds = time.perf_counter() - started
    explained = [records[i] for i in chosen]
    write_csv(out / "predictions.csv", records)
    summary = {
        "run": explainer.checkpoint_info, "inputs": len(dataset), "explained": count, "n_samples": n_samples,
        "min_probability": min_probability, "seed": seed, "reference": reference,
        "target_class": "the next class after the label" if from_label else target_class if target_class is not None
        else "the most probable other class", "seconds_per_scan": round(seconds / max(1, count), 3),
        "mean_acceptance_rate": round(float(np.mean(acceptance)), 4) if acceptance else None,
        "scans_with_fallback": fallbacks, **_cohort_analyses(records, explained, explainer.regressing)}
    if count >= 5:
        labels = np.array([r["label"] if r["label"] != "" else r["predicted_class"] for r in explained])
        targets = np.array([r["target"] if r["target"] != "" else np.nan for r in explained], dtype=float)
        tsne_figure(out / "figures" / "tsne.png", np.stack(attributes), labels, targets, seed)
        summary["tsne"] = "figures/tsne.png"
    outlier_rows = _outliers(records, outliers)
    if outlier_rows:
        write_csv(out / "outliers.csv", outlier_rows)
        summary["outliers"] = [{"id": r["id"], "error": r["error"], "figure": f"figures/{r['id']}_fa.png"}
                               for r in outlier_rows]
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


FA_CORRELATION_GROUPS = {
    "pooled": "every explained scan, both directions",
    "upper_class_translated_down": "scans of the highest class translated to a lower one (the paper's analysis: "
                                   "old subjects made young)",
}


def _cohort_analyses(records: list[dict], explained: list[dict], regressing: bool) -> dict:
    """Prediction quality over every input with a known label/target; how the FA magnitude of
    the explained ones relates to the predicted and the true target, over all of them (pooled)
    and, as in the paper, over the scans of the highest class translated down."""
    from scipy import stats

    result = {}
    labelled = [r for r in records if r["label"] != "" and "predicted_class" in r]
    if labelled:
        result["accuracy"] = round(float(np.mean([r["label"] == r["predicted_class"] for r in labelled])), 4)
    if not regressing:
        return result
    known = [r for r in records if r["target"] != ""]
    if known:
        errors = np.array([r["predicted_target"] - r["target"] for r in known])
        result["mae"] = round(float(np.abs(errors).mean()), 4)
    top = max((int(k[7:]) for k in records[0] if k.startswith("p_class")), default=0)
    groups = {"pooled": explained,
              "upper_class_translated_down": [
                  r for r in explained if "target_class" in r and r["target_class"] < top
                  and (r["label"] if r["label"] != "" else r["predicted_class"]) == top]}
    correlations = {}
    for group, members in groups.items():
        magnitude = np.array([r["mean_abs_fa"] for r in members])
        for name, values in (("predicted_target", [r["predicted_target"] for r in members]),
                             ("true_target", [r["target"] if r["target"] != "" else np.nan for r in members])):
            values = np.asarray(values, dtype=float)
            ok = np.isfinite(values)
            if ok.sum() >= 3 and np.ptp(values[ok]) > 0 and np.ptp(magnitude[ok]) > 0:
                pearson = stats.pearsonr(magnitude[ok], values[ok])
                spearman = stats.spearmanr(magnitude[ok], values[ok])
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
