"""The validation pass of training: additive statistics of a model on a validation cohort,
their metrics, and which metric selects the best checkpoint.

Validation statistics are sums and counts (a confusion matrix, summed absolute errors,
summed per-subject NCC), so each process can score its share of the cohort and one
all-reduce gives the exact cohort figure.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Callable, ContextManager

import torch
from torch.utils.data import DataLoader, Subset

from .metrics import balanced_accuracy, confusion_matrix, ncc
from .model import ICAM, fa_map, next_class


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
        stats["confusion"] += confusion_matrix(labels, prediction.predicted_class, k)
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


def selection_metric(choice: str, regressing: bool, has_gt_maps: bool) -> str:
    if choice != "auto":
        return choice
    return "mae" if regressing else "ncc" if has_gt_maps else "balanced_accuracy"
