"""Class-balanced batches: every batch holds ``images_per_class`` images of each class.

The paper's generator batches must hold every class (translations go from one class to
another). Each class has its own stream of indices: a fresh seeded permutation per pass.
Batch b of the whole run takes the next ``images_per_class`` indices of every class
stream, so the sampler's position is a function of the batch number alone (resuming needs
no sampler state). With several processes, rank r takes every world_size-th slice of each
stream: no index repeats across ranks within a pass.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

from ..errors import UserError


class ClassBalancedBatchSampler(Sampler[list[int]]):
    def __init__(self, labels: torch.Tensor, images_per_class: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1, start_batch: int = 0):
        labels = torch.as_tensor(labels).long()
        self.num_classes = int(labels.max()) + 1 if len(labels) else 0
        self.by_class = [torch.nonzero(labels == k).flatten() for k in range(self.num_classes)]
        missing = [k for k, idx in enumerate(self.by_class) if len(idx) == 0]
        if self.num_classes < 2 or missing:
            raise UserError(f"class-balanced sampling needs at least one image of each class 0..K-1 (K ≥ 2); "
                             f"classes without images: {missing or 'all but one'}")
        self.images_per_class, self.seed = images_per_class, seed
        self.rank, self.world_size, self.start_batch = rank, world_size, start_batch
        self._passes: dict[tuple[int, int], torch.Tensor] = {}

    def _pass(self, k: int, number: int) -> torch.Tensor:
        key = (k, number)
        if key not in self._passes:
            if len(self._passes) > 4 * self.num_classes:
                self._passes.clear()
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + k * 10_007 + number)
            self._passes[key] = self.by_class[k][torch.randperm(len(self.by_class[k]), generator=g)]
        return self._passes[key]

    def _take(self, k: int, start: int) -> list[int]:
        n = len(self.by_class[k])
        return [int(self._pass(k, p // n)[p % n]) for p in range(start, start + self.images_per_class)]

    def batch(self, b: int) -> list[int]:
        """Indices of this rank's batch number ``b``, class 0's images first."""
        start = (b * self.world_size + self.rank) * self.images_per_class
        return [i for k in range(self.num_classes) for i in self._take(k, start)]

    def __iter__(self) -> Iterator[list[int]]:
        b = self.start_batch
        while True:
            yield self.batch(b)
            b += 1
