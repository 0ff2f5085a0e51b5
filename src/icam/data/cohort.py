"""An in-memory cohort: images with class labels, optional continuous targets and maps.

Every cohort the training loop reads exposes ``labels`` (class per image, for the
class-balanced sampler), ``targets`` (NaN where unknown) and ``image_shape``, and yields
dicts with ``image``, ``label``, ``target`` and, when the cohort has them, ``gt_map``
(ground-truth change map) and ``mask`` (brain mask).
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset


class InMemoryCohort(Dataset):
    def __init__(self, images: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None = None,
                 gt_maps: torch.Tensor | None = None, masks: torch.Tensor | None = None):
        n = len(images)
        if images.dim() not in (4, 5):
            raise ValueError(f"images must be (N, C, H, W) or (N, C, D, H, W), got {tuple(images.shape)}")
        for name, t in (("labels", labels), ("targets", targets), ("gt_maps", gt_maps), ("masks", masks)):
            if t is not None and len(t) != n:
                raise ValueError(f"{name} has {len(t)} entries for {n} images")
        self.images = images
        self.labels = labels.long()
        self.targets = targets.float() if targets is not None else torch.full((n,), float("nan"))
        self.gt_maps, self.masks = gt_maps, masks

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.images.shape[2:])

    @property
    def in_channels(self) -> int:
        return self.images.shape[1]

    @property
    def has_gt_maps(self) -> bool:
        return self.gt_maps is not None

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = {"image": self.images[i], "label": self.labels[i], "target": self.targets[i]}
        if self.gt_maps is not None:
            item["gt_map"] = self.gt_maps[i]
        if self.masks is not None:
            item["mask"] = self.masks[i]
        return item
