"""An in-memory cohort: images with class labels, optional continuous targets and maps.

Every cohort the training loop reads exposes ``labels`` (class per image, for the
class-balanced sampler), ``targets`` (NaN where unknown) and ``image_shape``, and yields
:class:`Item` dicts.
"""

from __future__ import annotations

from typing import TypedDict

import torch
from torch.utils.data import Dataset

from ..errors import UserError


class Item(TypedDict, total=False):
    """One image of a cohort, as every cohort yields it (a dict, so a DataLoader batches it key by
    key). ``image``, ``label`` and ``target`` are always there; the rest when the cohort has them."""

    image: torch.Tensor  # (C, *shape), in the model's intensity range
    label: torch.Tensor  # class index; UNKNOWN_LABEL where the table gives a class the run does not model
    target: torch.Tensor  # the continuous target; NaN where unknown
    gt_map: torch.Tensor  # (C, *shape) ground-truth change map
    mask: torch.Tensor  # (C, *shape) brain mask
    affine: torch.Tensor  # NIfTI cohorts: the item's voxel → mm matrix
    row: torch.Tensor  # NIfTI cohorts: its entry in the table's rows


class InMemoryCohort(Dataset):
    def __init__(self, images: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None = None,
                 gt_maps: torch.Tensor | None = None, masks: torch.Tensor | None = None):
        n = len(images)
        if images.dim() not in (4, 5):
            raise UserError(f"images must be (N, C, H, W) or (N, C, D, H, W), got {tuple(images.shape)}")
        for name, t in (("labels", labels), ("targets", targets), ("gt_maps", gt_maps), ("masks", masks)):
            if t is not None and len(t) != n:
                raise UserError(f"{name} has {len(t)} entries for {n} images")
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

    def __getitem__(self, i: int) -> Item:
        item: Item = {"image": self.images[i], "label": self.labels[i], "target": self.targets[i]}
        if self.gt_maps is not None:
            item["gt_map"] = self.gt_maps[i]
        if self.masks is not None:
            item["mask"] = self.masks[i]
        return item
