"""The validation pass of training: additive statistics of a model on a validation cohort,
their metrics, and which metric selects the best checkpoint.

Validation statistics are sums and counts (a confusion matrix, summed absolute errors,
summed per-subject NCC), so each process can score its share of the cohort and one
all-reduce gives the exact cohort figure.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

from .metrics import balanced_accuracy, confusion_matrix, ncc
from .model import ICAM, fa_map, next_class

# The maps validation scores against the ground truth, each per source class: the map of the
# configured reference (the selection metric, "ncc"), the translation's own change (against the
# translation to the scan's own attribute mean) and the decoder's error |G(z_c, mu) − x|, the
# floor an image translation's map stands on.
SCORED_MAPS = ("ncc", "translation_ncc", "floor_ncc")


@torch.no_grad()
def validation_statistics(model: ICAM, dataset, *, batch_size: int, fa_samples: int,
                          min_probability: float | None, seed: int, reference: str = "input", rank: int = 0,
                          world_size: int = 1, sampling: str = "prior", regressing: bool = False,
                          device: torch.device | str = "cpu",
                          autocast: Callable[[], AbstractContextManager] = nullcontext) -> dict[str, torch.Tensor]:
    """Additive statistics of this process's share of ``dataset`` (every world_size-th image).

    FA maps, for cohorts with ground truth: each image translated to the next class
    (``next_class``: the other class when K = 2), averaged over ``fa_samples``
    rejection-sampled attributes drawn from a generator seeded with ``seed``, so the figure
    is the same run to run (drawn as ``sampling`` says: ``ICAM.sampling_arguments``), and
    compared with ``reference`` (``ICAM.fa_reference``); also the
    translation's own change and the decoder's error (``SCORED_MAPS``), and the decoder's mean
    absolute error in the brain (``floor_l1``). Eval mode: no noise layer, attribute means for
    prediction.
    """
    was_training = model.training
    model.eval()
    k = model.num_classes
    stats = {name: torch.zeros((), dtype=torch.float64, device=device)
             for name in ("abs_error", "squared_error", "n_target", "n_ncc_undefined", "floor_l1", "n_floor")}
    for name in SCORED_MAPS:  # per source class
        stats[name] = torch.zeros(k, dtype=torch.float64, device=device)
        stats[f"n_{name}"] = torch.zeros(k, dtype=torch.float64, device=device)
    stats["confusion"] = torch.zeros(k, k, dtype=torch.float64, device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    shard = Subset(dataset, range(rank, len(dataset), world_size))
    for batch in DataLoader(shard, batch_size=batch_size):
        images, labels = batch["image"].to(device), batch["label"].to(device)
        with autocast():
            prediction = model.predict(images)
            maps = None
            if "gt_map" in batch:
                content = model.encode_content(images)
                targets = next_class(labels, k).repeat(fa_samples)
                mu = prediction.attribute_mean.to(content.dtype)
                attribute = model.sample_attribute(
                    targets, min_probability=min_probability, generator=generator,
                    **model.sampling_arguments(sampling, torch.cat([mu] * fa_samples), regressing)).attribute
                translated = model.translate_from(torch.cat([images] * fa_samples), torch.cat([content] * fa_samples),
                                                  attribute.to(content.dtype), torch.cat([mu] * fa_samples))
                translated = translated.float().view(fa_samples, *images.shape).mean(0)
                decoded = model.generate(content, mu)  # G(z_c, mu): one decoding serves both
                own = model.compose(images, decoded, decoded).float()  # x translated to its own mu
                reconstruction = decoded[:, :model.in_channels].float()
                # own is ICAM.fa_reference's "reconstruction" (validation takes input or reconstruction)
                maps = {"ncc": fa_map(translated, images if reference == "input" else own),
                        "translation_ncc": fa_map(translated, own),
                        "floor_ncc": fa_map(reconstruction, images)}
        stats["confusion"] += confusion_matrix(labels, prediction.predicted_class, k)
        target = batch["target"].to(device)
        known = ~torch.isnan(target)
        error = (prediction.target - target)[known].double()
        stats["abs_error"] += error.abs().sum()
        stats["squared_error"] += error.pow(2).sum()
        stats["n_target"] += known.sum()
        if maps is not None:
            mask = batch["mask"].to(device) if "mask" in batch else torch.ones_like(images)
            gt = batch["gt_map"].to(device)
            for name, fa in maps.items():
                values = ncc(fa, gt, mask)
                defined = ~torch.isnan(values)
                stats[name].index_add_(0, labels[defined], values[defined].double())
                stats[f"n_{name}"].index_add_(0, labels[defined], torch.ones_like(values[defined], dtype=torch.float64))
                if name == "ncc":
                    stats["n_ncc_undefined"] += (~defined).sum()
            inside = (mask > 0).flatten(1).double()
            error = (maps["floor_ncc"].abs().flatten(1).double() * inside).sum(1) / inside.sum(1).clamp(min=1)
            stats["floor_l1"] += error.sum()
            stats["n_floor"] += len(error)
    model.train(was_training)
    return stats


def summarise(stats: dict[str, torch.Tensor], regressing: bool = True) -> dict[str, float]:
    """Metrics from (all-reduced) validation statistics; MAE/RMSE only for a model that regresses
    (an untrained regression head's error means nothing). Map scores overall and per direction:
    ``<map>_minus`` / ``<map>_plus`` for two classes (class 1 → 0, 0 → 1), ``<map>_from_<k>``
    for more."""
    confusion = stats["confusion"].cpu()
    metrics = {
        "accuracy": float(confusion.diag().sum() / confusion.sum()),
        "balanced_accuracy": balanced_accuracy(confusion),
    }
    if regressing and stats["n_target"] > 0:
        metrics["mae"] = float(stats["abs_error"] / stats["n_target"])
        metrics["rmse"] = float((stats["squared_error"] / stats["n_target"]).sqrt())
    for name in SCORED_MAPS:
        total, count = stats[name].cpu(), stats[f"n_{name}"].cpu()
        if count.sum() == 0:
            continue
        metrics[name] = float(total.sum() / count.sum())
        for k in range(len(count)):
            key = ("plus", "minus")[k] if len(count) == 2 else f"from_{k}"
            if count[k] > 0:
                metrics[f"{name}_{key}"] = float(total[k] / count[k])
    if stats["n_ncc"].sum() > 0:
        metrics["ncc_subjects"] = int(stats["n_ncc"].sum())
    if stats["n_floor"] > 0:
        metrics["floor_l1"] = float(stats["floor_l1"] / stats["n_floor"])
    if stats["n_ncc_undefined"] > 0:  # constant maps (e.g. no change): left out of the mean, counted here
        metrics["ncc_undefined"] = int(stats["n_ncc_undefined"])
    return metrics


CONTENT_PROBE_FEATURES = 8192  # z_c is average-pooled to at most this many numbers per image for the probe


@torch.no_grad()
def content_class_accuracy(model: ICAM, train_set, test_set, *, device: torch.device | str = "cpu",
                           batch_size: int = 32, max_train: int = 2000, seed: int = 0) -> float:
    """Content leakage: the accuracy with which a logistic-regression probe, fitted on the
    content codes z_c of (at most ``max_train``) training images, reads the class of the images of
    ``test_set`` from theirs. Disentanglement's goal is chance (the commonest class's share): the
    more it reads, the more class the content carries past the attribute, and the less a swap of
    attributes can change. Volumes' codes are average-pooled to ``CONTENT_PROBE_FEATURES`` numbers."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    was_training = model.training
    model.eval()
    chosen = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(seed))[:max_train].tolist()

    def codes(dataset) -> tuple[np.ndarray, np.ndarray]:
        features, labels = [], []
        for batch in DataLoader(dataset, batch_size=batch_size):
            content = model.encode_content(batch["image"].to(device)).float()
            side = list(content.shape[2:])
            while content.shape[1] * math.prod(side) > CONTENT_PROBE_FEATURES and max(side) > 1:
                side = [max(1, (s + 1) // 2) for s in side]
            pooled = (F.adaptive_avg_pool2d(content, (side[0], side[1])) if content.dim() == 4 else
                      F.adaptive_avg_pool3d(content, (side[0], side[1], side[2])))
            features.append(pooled.flatten(1).cpu().numpy())
            labels.append(batch["label"].numpy())
        return np.concatenate(features), np.concatenate(labels)

    train_codes, train_labels = codes(Subset(train_set, chosen))
    test_codes, test_labels = codes(test_set)
    model.train(was_training)
    if len(np.unique(train_labels)) < 2:
        return float("nan")
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    probe.fit(train_codes, train_labels)
    return float((probe.predict(test_codes) == test_labels).mean())


def selection_metric(choice: str, regressing: bool, has_gt_maps: bool) -> str:
    if choice != "auto":
        return choice
    return "mae" if regressing else "ncc" if has_gt_maps else "balanced_accuracy"
