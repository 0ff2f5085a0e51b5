"""Metrics: arrays and tensors in, numbers out; nothing here reads or writes a file or runs a
model. The FA map against the ground truth (NCC, AUROC, AP, Dice, pointing), classification
and regression figures, the confusion matrix."""

from __future__ import annotations

import math
from enum import Enum
from typing import Any

import numpy as np
import torch

from .intervals import bootstrap_interval, wilson_interval


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


class Direction(str, Enum):
    """The two directions two-class maps are scored in (the paper's NCC(+) and NCC(−)); the value
    is the key of evaluate_outputs' "maps" in evaluation.json."""

    PLUS = "plus (class 0 → 1)"  # class-0 scans translated up: effects added
    MINUS = "minus (class 1 → 0)"  # class-1 scans translated down: effects removed

    @property
    def source(self) -> int:
        """The class of the scans translated in this direction."""
        return 0 if self is Direction.PLUS else 1

    @property
    def target(self) -> int:
        return 1 - self.source

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


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
    undefined: dict[str, float | None] = {"ncc": None, "auroc": None, "ap": None, "dice_topk": None, "pointing": None}
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


def population_map(gt_maps) -> np.ndarray:
    """The reference a subject's map is read against: the mean |ground truth| of a class's
    training scans (``gt_maps``, arrays of one shape), the same map for every scan of that class.
    It never looks at the scan: it scores what knowing only where the cohort changes on average
    would score."""
    return np.mean([np.abs(g) for g in gt_maps], axis=0)


def summarise_maps(per_subject: list[dict]) -> dict:
    """Mean, sd and a 95% interval of each map metric over the subjects where it is defined, with
    the counts: a bootstrap interval over subjects; Wilson's for the pointing game (a proportion)."""
    out: dict[str, Any] = {}
    for name in ("ncc", "auroc", "ap", "dice_topk", "pointing"):
        values = np.array([m[name] for m in per_subject if m.get(name) is not None], dtype=float)
        ci = wilson_interval(int(values.sum()), len(values)) if name == "pointing" else bootstrap_interval(values)
        out[name] = ({"mean": float(values.mean()), "sd": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                      "ci": ci, "n": len(values)} if len(values) else {"mean": None, "sd": None, "ci": None,
                                                                            "n": 0})
    out["undefined"] = sum(1 for m in per_subject if m.get("ncc") is None)
    return out


def classification_metrics(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, Any]:
    """Accuracy, balanced accuracy, macro F1 and ROC AUC (one-vs-rest for K > 2)."""
    from sklearn.metrics import f1_score, roc_auc_score

    labels = np.asarray(labels, dtype=int)
    predicted = probabilities.argmax(1)
    k = probabilities.shape[1]
    confusion = confusion_matrix(labels, predicted, k)

    result = {"accuracy": float((predicted == labels).mean()), "balanced_accuracy": balanced_accuracy(confusion),
              "f1": float(f1_score(labels, predicted, average="macro", labels=list(range(k)))), "n": len(labels),
              "accuracy_ci": wilson_interval(int((predicted == labels).sum()), len(labels)),
              "chance": float(np.bincount(labels, minlength=k).max() / len(labels)),  # always the commonest class
              "predicted_classes": len(np.unique(predicted))}
    if len(np.unique(labels)) == k:
        result["roc_auc"] = float(roc_auc_score(labels, probabilities[:, 1]) if k == 2 else
                                  roc_auc_score(labels, probabilities, multi_class="ovr"))
    return result


def regression_metrics(true: np.ndarray, predicted: np.ndarray) -> dict[str, Any]:
    """MAE ± sd, RMSE, Pearson r, Spearman ρ and R², in the target's units."""
    from scipy import stats

    true, predicted = np.asarray(true, dtype=float), np.asarray(predicted, dtype=float)
    error = predicted - true

    result = {"mae": float(np.abs(error).mean()), "mae_sd": float(np.abs(error).std(ddof=1)) if len(error) > 1 else 0.0,
              "mae_ci": bootstrap_interval(np.abs(error)), "rmse": float(np.sqrt((error ** 2).mean())),
              "n": len(true),
              # predicting these scans' mean target for every scan: a model must beat it
              "mae_of_the_mean": float(np.abs(true - true.mean()).mean()),
              "predicted_sd": float(predicted.std()), "true_sd": float(true.std())}
    if len(true) > 2 and np.ptp(true) > 0 and np.ptp(predicted) > 0:
        result["pearson"] = float(stats.pearsonr(true, predicted)[0])
        result["spearman"] = float(stats.spearmanr(true, predicted)[0])
    result["r2"] = float(1 - (error ** 2).sum() / max(((true - true.mean()) ** 2).sum(), 1e-12))
    return result


def confusion_matrix(labels, predicted, num_classes: int) -> torch.Tensor:
    """Counts (float64) of each true class (rows) predicted as each class (columns)."""
    labels, predicted = torch.as_tensor(labels).long(), torch.as_tensor(predicted).long()
    return torch.bincount(labels * num_classes + predicted, minlength=num_classes ** 2).view(
        num_classes, num_classes).double()


def balanced_accuracy(confusion: torch.Tensor) -> float:
    """Mean recall over the classes that occur (rows: true class, columns: predicted)."""
    support = confusion.sum(1)
    recall = confusion.diag()[support > 0] / support[support > 0]
    return float(recall.mean()) if len(recall) else float("nan")
