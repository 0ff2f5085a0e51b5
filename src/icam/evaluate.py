"""Metrics, and the validation pass used for model selection.

Validation statistics are sums and counts (a confusion matrix, summed absolute errors,
summed per-subject NCC), so each process can score its share of the cohort and one
all-reduce gives the exact cohort figure.
"""

from __future__ import annotations

import csv
import json
import math
from contextlib import nullcontext
from pathlib import Path
from typing import Callable, ContextManager

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from .model import ICAM, fa_map, next_class


def ncc(fa_maps: torch.Tensor, gt_maps: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
    """Per-subject NCC as the paper and VA-GAN define it: Pearson r of |FA| and |ground truth|
    over the (masked) voxels. NaN where it is undefined (a constant map, e.g. an all-zero
    ground truth): callers must leave those subjects out, not average the NaN in."""
    a, b = fa_maps.abs().flatten(1).double(), gt_maps.abs().flatten(1).double()
    w = torch.ones_like(a) if masks is None else (masks.flatten(1) > 0).double().expand_as(a)
    count = w.sum(1, keepdim=True).clamp(min=1)
    a = a - (w * a).sum(1, keepdim=True) / count
    b = b - (w * b).sum(1, keepdim=True) / count
    covariance = (w * a * b).sum(1)
    scale = ((w * a * a).sum(1) * (w * b * b).sum(1)).sqrt()
    return torch.where(scale > 0, covariance / scale.clamp(min=1e-300), torch.nan).float()


# The two directions maps are scored in (the keys of evaluate_outputs' "maps").
NCC_PLUS = "plus (class 0 → 1)"  # class-0 scans translated up: effects added
NCC_MINUS = "minus (class 1 → 0)"  # class-1 scans translated down: effects removed

CHANGE_THRESHOLD = 0.05  # a voxel "changed" where |ground truth| ≥ 5% of the subject's largest change


def map_metrics(fa: np.ndarray, gt: np.ndarray, mask: np.ndarray | None = None,
                change_threshold: float = CHANGE_THRESHOLD) -> dict[str, float | None]:
    """How well one subject's |FA| finds its own ground-truth change, over the brain mask:
    - ncc: Pearson r of |FA| and |gt| (the paper's and VA-GAN's NCC);
    - auroc, ap: |FA| as a score for "changed" voxels (|gt| ≥ threshold × max |gt|);
    - dice_topk: Dice of the top-k |FA| voxels with the changed ones, k = their number;
    - pointing: 1 if the largest |FA| lies in a changed voxel.
    All None when the ground truth has no change (undefined, never NaN)."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    inside = (mask > 0) if mask is not None else np.ones(fa.shape, dtype=bool)
    a, b = np.abs(fa[inside]).astype(np.float64), np.abs(gt[inside]).astype(np.float64)
    undefined = {"ncc": None, "auroc": None, "ap": None, "dice_topk": None, "pointing": None}
    if b.max(initial=0) <= 0:
        return undefined
    changed = b >= change_threshold * b.max()
    r = float(ncc(torch.from_numpy(a[None]), torch.from_numpy(b[None]))[0])
    result = {"ncc": None if math.isnan(r) else r}
    if changed.all():  # nothing unchanged to tell apart
        return {**undefined, **result}
    result["auroc"] = float(roc_auc_score(changed, a))
    result["ap"] = float(average_precision_score(changed, a))
    k = int(changed.sum())
    top = np.zeros_like(changed)
    top[np.argsort(-a, kind="stable")[:k]] = True
    result["dice_topk"] = float(2 * (top & changed).sum() / (top.sum() + changed.sum()))
    result["pointing"] = float(changed[int(np.argmax(a))])
    return result


def summarise_maps(per_subject: list[dict]) -> dict:
    """Mean, sd and a 95% interval of each map metric over the subjects where it is defined, with
    the counts: a bootstrap interval over subjects; Wilson's for the pointing game (a proportion)."""
    from .intervals import bootstrap_interval, wilson_interval

    out = {}
    for name in ("ncc", "auroc", "ap", "dice_topk", "pointing"):
        values = np.array([m[name] for m in per_subject if m.get(name) is not None], dtype=float)
        ci = wilson_interval(int(values.sum()), len(values)) if name == "pointing" else bootstrap_interval(values)
        out[name] = ({"mean": float(values.mean()), "sd": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                      "ci": ci, "n": int(len(values))} if len(values) else {"mean": None, "sd": None, "ci": None,
                                                                            "n": 0})
    out["undefined"] = sum(1 for m in per_subject if m.get("ncc") is None)
    return out


def classification_metrics(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """Accuracy, balanced accuracy, macro F1 and ROC AUC (one-vs-rest for K > 2)."""
    from sklearn.metrics import f1_score, roc_auc_score

    labels = np.asarray(labels, dtype=int)
    predicted = probabilities.argmax(1)
    k = probabilities.shape[1]
    confusion = torch.from_numpy(np.bincount(labels * k + predicted, minlength=k * k).reshape(k, k)).double()
    from .intervals import wilson_interval

    result = {"accuracy": float((predicted == labels).mean()), "balanced_accuracy": balanced_accuracy(confusion),
              "f1": float(f1_score(labels, predicted, average="macro", labels=list(range(k)))), "n": int(len(labels)),
              "accuracy_ci": wilson_interval(int((predicted == labels).sum()), len(labels)),
              "chance": float(np.bincount(labels, minlength=k).max() / len(labels)),  # always the commonest class
              "predicted_classes": int(len(np.unique(predicted)))}
    if len(np.unique(labels)) == k:
        result["roc_auc"] = float(roc_auc_score(labels, probabilities[:, 1]) if k == 2 else
                                  roc_auc_score(labels, probabilities, multi_class="ovr"))
    return result


def regression_metrics(true: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """MAE ± sd, RMSE, Pearson r, Spearman ρ and R², in the target's units."""
    from scipy import stats

    true, predicted = np.asarray(true, dtype=float), np.asarray(predicted, dtype=float)
    error = predicted - true
    from .intervals import bootstrap_interval

    result = {"mae": float(np.abs(error).mean()), "mae_sd": float(np.abs(error).std(ddof=1)) if len(error) > 1 else 0.0,
              "mae_ci": bootstrap_interval(np.abs(error)), "rmse": float(np.sqrt((error ** 2).mean())),
              "n": int(len(true)),
              # predicting these scans' mean target for every scan: a model must beat it
              "mae_of_the_mean": float(np.abs(true - true.mean()).mean()),
              "predicted_sd": float(predicted.std()), "true_sd": float(true.std())}
    if len(true) > 2 and np.ptp(true) > 0 and np.ptp(predicted) > 0:
        result["pearson"] = float(stats.pearsonr(true, predicted)[0])
        result["spearman"] = float(stats.spearmanr(true, predicted)[0])
    result["r2"] = float(1 - (error ** 2).sum() / max(((true - true.mean()) ** 2).sum(), 1e-12))
    return result


def balanced_accuracy(confusion: torch.Tensor) -> float:
    """Mean recall over the classes that occur (rows: true class, columns: predicted)."""
    support = confusion.sum(1)
    recall = confusion.diag()[support > 0] / support[support > 0]
    return float(recall.mean()) if len(recall) else float("nan")


@torch.no_grad()
def validation_statistics(model: ICAM, dataset, *, batch_size: int, fa_samples: int,
                          min_probability: float | None, seed: int, reference: str = "input", rank: int = 0,
                          world_size: int = 1,
                          device: torch.device | str = "cpu",
                          autocast: Callable[[], ContextManager] = nullcontext) -> dict[str, torch.Tensor]:
    """Additive statistics of this process's share of ``dataset`` (every world_size-th image).

    FA maps, for cohorts with ground truth: each image translated to the next class
    (``next_class``: the other class when K = 2), averaged over ``fa_samples``
    rejection-sampled attributes drawn from a generator seeded with ``seed``, so the figure
    is the same run to run, and compared with ``reference`` (``ICAM.fa_reference``). Eval mode:
    no noise layer, attribute means for prediction.
    """
    was_training = model.training
    model.eval()
    k = model.num_classes
    stats = {name: torch.zeros((), dtype=torch.float64, device=device)
             for name in ("abs_error", "squared_error", "n_target", "ncc", "n_ncc", "n_ncc_undefined")}
    stats["confusion"] = torch.zeros(k, k, dtype=torch.float64, device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    shard = Subset(dataset, range(rank, len(dataset), world_size))
    for batch in DataLoader(shard, batch_size=batch_size):
        images, labels = batch["image"].to(device), batch["label"].to(device)
        with autocast():
            prediction = model.predict(images)
            fa = None
            if "gt_map" in batch:
                content = model.encode_content(images)
                targets = next_class(labels, k).repeat(fa_samples)
                attribute = model.sample_attribute(targets, min_probability=min_probability,
                                                   generator=generator).attribute
                translated = model.decode(torch.cat([content] * fa_samples), attribute.to(content.dtype))
                fa = fa_map(translated.float().view(fa_samples, *images.shape).mean(0),
                            model.fa_reference(images, reference, content).float())
        stats["confusion"] += torch.bincount(labels * k + prediction.predicted_class,
                                             minlength=k * k).view(k, k).double()
        target = batch["target"].to(device)
        known = ~torch.isnan(target)
        error = (prediction.target - target)[known].double()
        stats["abs_error"] += error.abs().sum()
        stats["squared_error"] += error.pow(2).sum()
        stats["n_target"] += known.sum()
        if fa is not None:
            mask = batch["mask"].to(device) if "mask" in batch else None
            values = ncc(fa, batch["gt_map"].to(device), mask)
            defined = ~torch.isnan(values)
            stats["ncc"] += values[defined].double().sum()
            stats["n_ncc"] += defined.sum()
            stats["n_ncc_undefined"] += (~defined).sum()
    model.train(was_training)
    return stats


def summarise(stats: dict[str, torch.Tensor], regressing: bool = True) -> dict[str, float]:
    """Metrics from (all-reduced) validation statistics; MAE/RMSE only for a model that regresses
    (an untrained regression head's error means nothing)."""
    confusion = stats["confusion"].cpu()
    metrics = {
        "accuracy": float(confusion.diag().sum() / confusion.sum()),
        "balanced_accuracy": balanced_accuracy(confusion),
    }
    if regressing and stats["n_target"] > 0:
        metrics["mae"] = float(stats["abs_error"] / stats["n_target"])
        metrics["rmse"] = float((stats["squared_error"] / stats["n_target"]).sqrt())
    if stats["n_ncc"] > 0:
        metrics["ncc"] = float(stats["ncc"] / stats["n_ncc"])
        metrics["ncc_subjects"] = int(stats["n_ncc"])
    if stats["n_ncc_undefined"] > 0:  # constant maps (e.g. no change): left out of the mean, counted here
        metrics["ncc_undefined"] = int(stats["n_ncc_undefined"])
    return metrics


# Model selection: which metric, and whether larger is better.
SELECTION_DIRECTION = {"balanced_accuracy": 1, "ncc": 1, "mae": -1}


def selection_metric(choice: str, regressing: bool, has_gt_maps: bool) -> str:
    if choice != "auto":
        return choice
    return "mae" if regressing else "ncc" if has_gt_maps else "balanced_accuracy"


def prediction_metrics(predictions: Path) -> dict:
    """Classification and regression metrics of a predictions.csv (``icam predict``/``explain``),
    over its rows with a known label / target; {} when there is no such file."""
    if not predictions.is_file():
        return {}
    result = {}
    from .data.table import names_from_columns

    with predictions.open(newline="") as f:
        reader = csv.DictReader(f)
        header, records = reader.fieldnames or [], list(reader)
    names = names_from_columns(header)
    columns = [c for c in header if c.startswith("p_")]
    labelled = [p for p in records if p.get("label", "") in names]  # not unlabelled rows, nor MCI for CN/AD
    if labelled and columns:
        result["classification"] = classification_metrics(
            np.array([names.index(p["label"]) for p in labelled]),
            np.array([[float(p[k]) for k in columns] for p in labelled]))
    regressed = [p for p in records if p.get("target", "") != "" and p.get("predicted_target", "") != ""]
    if regressed:
        result["regression"] = regression_metrics(np.array([float(p["target"]) for p in regressed]),
                                                  np.array([float(p["predicted_target"]) for p in regressed]))
    return result


def evaluate_outputs(outputs: str | Path, csv_path: str | Path, split: str | None = None,
                     map_suffix: str = "fa_mean", run_dir: str | Path | None = None) -> dict:
    """Score the maps and predictions an explanation run wrote (``outputs/maps/<id>_<suffix>.nii.gz``,
    ``outputs/predictions.csv``) against the cohort table's ground truth, read through the
    explained run's column names, classes and splits (``run_dir``, else the folder named in
    ``outputs/summary.json``).
    Maps are compared in each input's own space, where both were written, within the brain mask
    written with them. Directions: NCC(+) over subjects of class 0 (translated 0 → 1, effects
    added), NCC(−) over class 1 (1 → 0, effects removed). Without ground-truth maps, only the
    predictions are scored."""
    from .data.nifti import load_array
    from .data.table import require_split
    from .inference import MANIFEST, map_stamp, write_csv
    from .run import explained_run, read_run_table

    outputs, csv_path = Path(outputs), Path(csv_path)
    table = read_run_table(run_dir or explained_run(outputs), csv_path)
    rows = table.rows if split is None else require_split(table, split, csv_path)
    per_subject, missing, stamps = [], [], {}
    for r in rows:
        path = outputs / "maps" / f"{r.id}_{map_suffix}.nii.gz"
        if r.gt_map is None:
            continue
        if not path.is_file():
            missing.append(path.name)
            continue
        fa, gt = load_array(path)[0], load_array(r.gt_map)[0]
        stamps.setdefault(map_stamp(path), []).append(r.id)
        written_mask = outputs / "maps" / f"{r.id}_mask.nii.gz"
        mask = load_array(r.mask)[0] if r.mask is not None else \
            load_array(written_mask)[0] if written_mask.is_file() else None
        if fa.shape != gt.shape:
            raise ValueError(f"{path.name} has shape {fa.shape} but its ground truth {r.gt_map} has {gt.shape}")
        per_subject.append({"id": r.id, "label": r.label, **map_metrics(fa, gt, mask)})
    if len(stamps) > 1:  # each map carries its checkpoint's hash: a folder mixing models is no result
        raise ValueError(f"the maps in {outputs / 'maps'} come from {len(stamps)} different models (checkpoint "
                         + "; ".join(f"{k or 'unstamped'}: {', '.join(v[:3])}" for k, v in stamps.items())
                         + "); explain again into a new folder")
    has_gt = any(r.gt_map is not None for r in rows)
    if has_gt and not per_subject:
        raise ValueError(f"no maps to score in {outputs / 'maps'} (suffix '_{map_suffix}') for rows with a gt_map "
                         f"in {csv_path}" + (f" and split {split}" if split else ""))
    maps = {"all": summarise_maps(per_subject),
            NCC_PLUS: summarise_maps([m for m in per_subject if m["label"] == 0]),
            NCC_MINUS: summarise_maps([m for m in per_subject if m["label"] == 1]),
            "scored": len(per_subject), "missing": len(missing)} if has_gt else None
    manifest = outputs / MANIFEST  # which model made the maps (icam explain writes it)
    producer = json.loads(manifest.read_text()).get("producer") if manifest.is_file() else None
    result = {"maps": maps, "producer": producer, **prediction_metrics(outputs / "predictions.csv")}
    if has_gt:
        write_csv(outputs / "per_subject_maps.csv", per_subject)
    (outputs / "evaluation.json").write_text(json.dumps(result, indent=2))
    return result
